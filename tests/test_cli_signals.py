"""`trimicro run` and `trimicro stream` stop cleanly on SIGINT: real processes, real signals.

The node announces itself over mDNS on 127.0.0.1; the test watches the same group (its own
unique service name, so other nodes on the machine are ignored) to see the node register and,
after the signal, deregister.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from trimicro.cluster.registry import Event, EventType, MdnsRegistry

#: Generous bounds for a loaded 2-core machine: a clean run takes a fraction of each.
START = 60.0
STOP = 30.0

MODULE = """
from trimicro.actors import Actor, Stream


class Shouter(Actor):
    service_name = {name!r}

    async def shout(self, stream: Stream) -> None:
        async for line in stream:
            await stream.send(str(line).upper())
"""


def cli(home: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home), *argv]


def run_argv(tmp_path: Path) -> tuple[str, str, list[str]]:
    """A module serving a uniquely named service, and ``trimicro run`` of it on a node of a
    unique name: (service, node, argv)."""
    name = f"shout-{uuid.uuid4().hex[:10]}"
    module = tmp_path / f"svc_{name.replace('-', '_')}.py"
    module.write_text(MODULE.format(name=name))
    node = f"node-{uuid.uuid4().hex[:8]}"
    return name, node, cli(tmp_path, "run", str(module), "--name", node)


async def event_for(events: AsyncIterator[Event], name: str, node: str, kind: EventType) -> None:
    """Wait for a ``kind`` event of service ``name`` on node ``node`` (others are ignored)."""
    async for event in events:
        if (
            event.type is kind
            and event.service.name == name
            and any(n.id == node for n in event.service.nodes)
        ):
            return
    raise AssertionError("the watch ended")


async def read_line(stream: trio.abc.ReceiveStream, what: str) -> bytes:
    """Bytes up to the first newline (and whatever came with it), within :data:`START`."""
    data = b""
    with trio.fail_after(START):
        while b"\n" not in data:
            chunk = await stream.receive_some(4096)
            assert chunk, f"{what} exited early"
            data += chunk
    return data


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@contextlib.asynccontextmanager
async def process(argv: list[str], **options: object) -> AsyncIterator[trio.Process]:
    """A child that is killed if the block ends while it still runs."""
    proc = await trio.lowlevel.open_process(argv, **options)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with trio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def full_pipe() -> tuple[int, int, bytes]:
    """A pipe whose buffer is already full: whoever writes to it next blocks until it is read."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    filler = b""
    with contextlib.suppress(BlockingIOError):
        while True:
            filler += b"x" * os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    return read_end, write_end, filler


async def test_run_stops_cleanly_on_sigint_the_instant_its_ready_line_is_read(tmp_path: Path) -> None:
    name, node, argv = run_argv(tmp_path)
    async with (
        MdnsRegistry() as registry,
        registry.watch(name) as events,
        process(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc,
    ):
        assert proc.stdout is not None and proc.stderr is not None
        ready = await read_line(proc.stdout, "the node")
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(STOP):
            # Registered before the ready line, deregistered after the signal (the watch
            # buffers events, so they are read in order here).
            await event_for(events, name, node, EventType.CREATE)
            await event_for(events, name, node, EventType.DELETE)
            out = ready + await read_all(proc.stdout)
            err = await read_all(proc.stderr)
            code = await proc.wait()
    assert out.decode().startswith(f"node {node} at 127.0.0.1:")
    assert "SIGINT: deregistering and stopping" in out.decode()
    assert (code, "Traceback" in err.decode()) == (0, False), err.decode()


async def test_run_stops_cleanly_on_sigint_while_its_ready_line_waits_on_a_full_pipe(
    tmp_path: Path,
) -> None:
    """SIGINT arrives while ``print`` of the ready line is blocked: stdout is a pipe nobody has
    read yet (its buffer filled before the node started). Once the pipe is read, the node stops
    as after any SIGINT: exit 0, deregistered, no KeyboardInterrupt."""
    name, node, argv = run_argv(tmp_path)
    read_end, write_end, filler = full_pipe()
    try:
        async with (
            MdnsRegistry() as registry,
            registry.watch(name) as events,
            process(argv, stdout=write_end, stderr=subprocess.PIPE) as proc,
        ):
            os.close(write_end)
            write_end = -1
            assert proc.stderr is not None
            with trio.fail_after(START):  # served and registered: the ready line comes next
                await event_for(events, name, node, EventType.CREATE)
            proc.send_signal(signal.SIGINT)
            stdout = trio.lowlevel.FdStream(read_end)
            read_end = -1
            with trio.fail_after(STOP):
                async with stdout:
                    out = await read_all(stdout)  # unblocks the ready line, then to the end
                err = await read_all(proc.stderr)
                code = await proc.wait()
                await event_for(events, name, node, EventType.DELETE)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert out.startswith(filler)
    text = out[len(filler) :].decode()
    assert text.startswith(f"node {node} at 127.0.0.1:"), text
    assert "SIGINT: deregistering and stopping" in text
    assert (code, "Traceback" in err.decode()) == (0, False), err.decode()


async def test_stream_stops_promptly_on_sigint_while_it_waits_on_stdin(tmp_path: Path) -> None:
    """`trimicro stream` with a terminal-like stdin that stays open: SIGINT ends it at once
    (exit 130, the stream closed), not when the user finally types Ctrl-D."""
    name, node, server_argv = run_argv(tmp_path)
    async with (
        MdnsRegistry() as registry,
        registry.watch(name) as events,
        process(server_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ):
        with trio.fail_after(START):
            await event_for(events, name, node, EventType.CREATE)
        argv = cli(tmp_path, "stream", name, f"{name}.shout", "--wait", str(START))
        async with process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as client:
            assert client.stdin is not None and client.stdout is not None and client.stderr is not None
            await client.stdin.send_all(b'"one"\n')  # and stdin stays open, like a terminal's
            shouted = await read_line(client.stdout, "the stream command")
            assert shouted == b'"ONE"\n'  # the stream is open and the command waits on stdin
            client.send_signal(signal.SIGINT)
            with trio.fail_after(STOP):
                err = await read_all(client.stderr)
                code = await client.wait()
            await client.stdin.aclose()
    assert (code, "Traceback" in err.decode()) == (128 + signal.SIGINT, False), err.decode()
