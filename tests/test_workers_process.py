"""`trimicro run --workers N`: real supervisor and worker processes, real signals, real mDNS.

Each test serves a uniquely named service whose handler answers with its node id and pid, so a
call tells which worker served it; the test watches the service in the registry (mDNS on
127.0.0.1, as every node here) to see workers register and deregister, and reads the
supervisor's stdout, where each worker's ready line is forwarded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trimicro.cluster.cli.workers import usable_cores
from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.registry import Event, EventType, MdnsRegistry
from trimicro.mailbox.errors import MicroError

#: Generous bounds for a loaded 2-core machine: a clean run takes a fraction of each.
START = 90.0
STOP = 45.0
#: Calls made at most while waiting for one to land on a given worker (random selection over
#: two nodes misses one 200 times in a row with probability 2^-199).
CALLS = 200

MODULE = """
import os

from trimicro.actors import Actor


class Who(Actor):
    service_name = {name!r}

    async def who(self, body: dict) -> dict:
        return {{"node": self.context.node.id, "pid": os.getpid()}}
"""


def cli(home: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home), *argv]


def service_module(tmp_path: Path, body: str = MODULE) -> tuple[str, Path]:
    name = f"who-{uuid.uuid4().hex[:10]}"
    module = tmp_path / f"svc_{name.replace('-', '_')}.py"
    module.write_text(body.format(name=name))
    return name, module


class Lines:
    """A process's stdout, read line by line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise EOFError(f"the process ended; it printed {self.seen}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.seen.append(line.decode())
        return self.seen[-1]

    async def until(self, test: Callable[[str], bool]) -> str:
        while not test(line := await self.next()):
            pass
        return line

    async def rest(self) -> list[str]:
        with contextlib.suppress(EOFError):
            while True:
                await self.next()
        return self.seen


@contextlib.asynccontextmanager
async def supervisor(argv: list[str], **options: Any) -> AsyncIterator[tuple[trio.Process, Lines]]:
    """The supervisor process; killed (its workers then stop on their lifeline) if still running."""
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, **options)
    try:
        yield proc, Lines(proc.stdout)
    finally:
        if proc.returncode is None:
            with trio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def ready_node(line: str) -> tuple[str, str] | None:
    """(node, address) of a forwarded ready line ``node N at ADDR serving ...``."""
    words = line.split()
    return (words[1], words[3]) if len(words) > 4 and words[0] == "node" and words[2] == "at" else None


async def ready_lines(lines: Lines, count: int) -> dict[str, str]:
    """The first ``count`` ready lines: node id -> address."""
    ready: dict[str, str] = {}
    while len(ready) < count:
        found = ready_node(await lines.next())
        if found:
            ready[found[0]] = found[1]
    return ready


async def registered(events: AsyncIterator[Event], name: str, nodes: dict[str, str]) -> None:
    """Wait until the registry has shown each node of ``nodes`` at its address."""
    missing = dict(nodes)
    async for event in events:
        if event.type is not EventType.DELETE and event.service.name == name:
            for node in event.service.nodes:
                if missing.get(node.id) == node.address:
                    del missing[node.id]
        if not missing:
            return
    raise AssertionError("the watch ended")


async def deregistered(events: AsyncIterator[Event], name: str, nodes: set[str]) -> None:
    missing = set(nodes)
    async for event in events:
        if event.type is EventType.DELETE and event.service.name == name:
            missing -= {node.id for node in event.service.nodes}
        if not missing:
            return
    raise AssertionError("the watch ended")


@contextlib.asynccontextmanager
async def client(home: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(
        home=home, listen=None, membership=False, announce=False, auth_refresh=None
    ) as cluster:
        yield cluster


async def call_until(cluster: Cluster, name: str, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Call ``name`` until a reply is ``wanted`` (at most CALLS calls); failed calls count (a
    worker that just died fails some until the registry drops it)."""
    for _ in range(CALLS):
        with contextlib.suppress(MicroError):
            reply: dict[str, Any] = await cluster.call(name, f"{name}.who", {}, timeout=10)
            if wanted(reply):
                return reply
    raise AssertionError(f"no wanted reply in {CALLS} calls")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def exited(pid: int) -> None:
    """Wait until process ``pid`` (another's child) has exited: its pidfd turns readable."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_two_workers_serve_restart_after_a_kill_and_stop_on_sigint(tmp_path: Path) -> None:
    name, module = service_module(tmp_path)
    argv = cli(tmp_path, "run", str(module), "--workers", "2", "--name", "w", "--store", "memory://")
    async with (
        MdnsRegistry() as registry,
        registry.watch(name) as events,
        supervisor(argv, stderr=subprocess.PIPE) as (proc, lines),
        client(tmp_path) as caller,
    ):
        log = Lines(proc.stderr)  # the supervisor's log (a few lines: the pipe holds them)
        with trio.fail_after(START):
            first = await lines.next()
            assert first.startswith(f"supervising 2 workers: w-1, w-2 (pid {proc.pid})"), first
            ready = await ready_lines(lines, 2)
            assert set(ready) == {"w-1", "w-2"}
            await registered(events, name, ready)
            # Calls through the selector land on both workers, each its own process.
            one = await call_until(caller, name, lambda r: r["node"] == "w-1")
            two = await call_until(caller, name, lambda r: r["node"] == "w-2")
        assert len({one["pid"], two["pid"], proc.pid}) == 3
        # Only worker 1 serves the store (and auth): its ready line lists them.
        w1 = next(line for line in lines.seen if line.startswith("node w-1 "))
        w2 = next(line for line in lines.seen if line.startswith("node w-2 "))
        assert "store@" in w1 and "store@" not in w2, lines.seen

        # kill -9 worker 2: the supervisor logs it and starts it again, under the same node id.
        os.kill(two["pid"], signal.SIGKILL)
        with trio.fail_after(START):
            crash = await log.until(lambda line: "worker w-2 " in line)
            assert "worker w-2 was killed by SIGKILL after " in crash, crash
            assert "restarting in 0.5s (1 of 5 restarts allowed in 60s)" in crash, crash
            again = ready_node(await lines.until(lambda line: line.startswith("node w-2 ")))
            assert again is not None
            await registered(events, name, {"w-2": again[1]})
            back = await call_until(caller, name, lambda r: r["node"] == "w-2")
        assert back["pid"] not in (two["pid"], one["pid"])

        # SIGTERM to worker 1 alone: it stops in order (exit 0), on purpose, and stays stopped.
        os.kill(one["pid"], signal.SIGTERM)
        with trio.fail_after(STOP):
            await deregistered(events, name, {"w-1"})
            stopped = await log.until(lambda line: "worker w-1 " in line)
            assert stopped.endswith("worker w-1 exited 0 (stopped on purpose): not restarted"), stopped

        proc.send_signal(signal.SIGINT)
        with trio.fail_after(STOP):
            await deregistered(events, name, {"w-2"})
            out = await lines.rest()
            code = await proc.wait()
            errors = await log.rest()
    assert code == 0, (out, errors)
    assert "SIGTERM: deregistering and stopping" in out
    assert len([line for line in out if line.startswith("node w-1 ")]) == 1, out
    assert "SIGINT: stopping 2 workers" in out
    assert out.count("the supervisor: deregistering and stopping") == 1, out
    assert not [line for line in errors if "Traceback" in line], errors
    assert gone(back["pid"])


async def test_workers_stop_and_deregister_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the supervisor no chance to say anything: the kernel closes the workers'
    lifelines, and they stop as after a SIGINT (deregistered, exit; the line they print then
    has no reader left, which costs the line, not the orderly stop)."""
    name, module = service_module(tmp_path)
    argv = cli(tmp_path, "run", str(module), "--workers", "2")
    async with (
        MdnsRegistry() as registry,
        registry.watch(name) as events,
        supervisor(argv, stderr=subprocess.DEVNULL) as (proc, lines),
        client(tmp_path) as caller,
    ):
        with trio.fail_after(START):
            ready = await ready_lines(lines, 2)
            await registered(events, name, ready)
            pids = {(await call_until(caller, name, lambda r, n=n: r["node"] == n))["pid"] for n in ready}
        proc.kill()
        with trio.fail_after(STOP):
            await deregistered(events, name, set(ready))
            for pid in pids:
                await exited(pid)


async def test_auto_is_the_number_of_usable_cores(tmp_path: Path) -> None:
    name, module = service_module(tmp_path)
    cores = usable_cores()
    argv = cli(tmp_path, "run", str(module), "--workers", "auto", "--name", "a")
    async with (
        MdnsRegistry() as registry,
        registry.watch(name) as events,
        supervisor(argv, stderr=subprocess.DEVNULL) as (proc, lines),
    ):
        with trio.fail_after(START):
            if cores > 1:
                first = await lines.next()
                assert first.startswith(f"supervising {cores} workers (auto: {cores} usable cores)"), first
            ready = await ready_lines(lines, cores)
            await registered(events, name, ready)
        expected = {f"a-{k}" for k in range(1, cores + 1)} if cores > 1 else {"a"}
        assert set(ready) == expected
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(STOP):
            await deregistered(events, name, expected)
            assert await proc.wait() == 0


async def test_auto_follows_the_cpu_affinity(tmp_path: Path) -> None:
    """Pinned to one CPU (as ``taskset -c N`` does), ``auto`` is one worker: the node runs in
    the process itself, as without ``--workers``."""
    _, module = service_module(tmp_path)
    one_cpu = {min(os.sched_getaffinity(0))}
    argv = cli(tmp_path, "run", str(module), "--workers", "auto", "--name", "pinned")
    async with supervisor(
        argv, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, one_cpu)
    ) as (proc, lines):
        with trio.fail_after(START):
            line = await lines.next()
        assert line.startswith("node pinned at "), line
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(STOP):
            assert await proc.wait() == 0


async def test_a_worker_that_cannot_load_its_module_stops_the_supervisor(tmp_path: Path) -> None:
    """A usage error (here: the module fails to import) is the same in every worker and on every
    restart: the supervisor stops at once with the usage status instead of restarting."""
    _, module = service_module(tmp_path, "import no_such_module_anywhere\n")
    argv = cli(tmp_path, "run", str(module), "--workers", "2")
    errors = tmp_path / "stderr"
    with errors.open("wb") as err:
        async with supervisor(argv, stderr=err) as (proc, lines):
            with trio.fail_after(START):
                out = await lines.rest()
                code = await proc.wait()
    log = errors.read_text()
    assert code == 2, (out, log)
    assert "failed to start (usage error): stopping" in log
    assert "No module named 'no_such_module_anywhere'" in log
    assert "restarting" not in log


# ---- what a worker leaves behind ---------------------------------------------------------------

#: A worker that starts a child holding its stdout (a subprocess of the application), notes the
#: child's pid, says it is up, then crashes on its first run and waits for its lifeline after.
LEAVES_A_CHILD = """
import subprocess, sys

children = sys.argv[1]
child = subprocess.Popen(["sleep", "600"])  # inherits stdout: the pipe stays open
with open(children, "a") as f:
    f.write(f"{child.pid}\\n")
with open(children) as f:
    run = len(f.read().split())
print(f"node w-1 at 127.0.0.1:0 serving run {run}", flush=True)
if run == 1:
    sys.exit(1)
sys.stdin.read()  # the lifeline
"""


class Said:
    """The supervisor's output, with an event per line awaited."""

    def __init__(self) -> None:
        self.text = ""
        self.waiting: dict[str, trio.Event] = {}

    def write(self, text: str) -> int:
        self.text += text
        for line, event in self.waiting.items():
            if line in self.text:
                event.set()
        return len(text)

    def flush(self) -> None:
        pass

    async def wait_for(self, line: str) -> None:
        event = self.waiting.setdefault(line, trio.Event())
        if line in self.text:
            event.set()
        await event.wait()


async def test_a_worker_whose_child_holds_stdout_is_restarted_and_its_group_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crashed worker is seen to exit (and restarted) although a child of it holds its stdout;
    that child dies with the worker's process group, and so does the next one when stopping.
    The group is killed before the worker is reaped: a reaped worker's pid, the group's id,
    may already name another process group."""
    from trimicro.cluster.cli.workers import RestartPolicy, Supervisor

    real_killpg = os.killpg
    after_reaping: list[int] = []

    def killpg(pgid: int, sig: int) -> None:
        try:  # the worker (our child) not reaped yet: this peeks, and leaves it a zombie
            os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            after_reaping.append(pgid)
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", killpg)

    script = tmp_path / "worker.py"
    script.write_text(LEAVES_A_CHILD)
    children = tmp_path / "children"
    said = Said()
    send, receive = trio.open_memory_channel[int](1)
    policy = RestartPolicy(first_delay=0.0)
    sup = Supervisor(["w-1"], lambda k: [sys.executable, str(script), str(children)], said, policy)  # type: ignore[arg-type]
    status: list[int] = []
    try:
        with trio.fail_after(START):
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    status.append(await sup.run(receive))

                nursery.start_soon(run)
                await said.wait_for("serving run 2")
                first, second = (int(p) for p in children.read_text().split())
                await exited(first)
                await send.send(signal.SIGTERM)
            await exited(second)
        assert status == [0]
        assert after_reaping == []
    finally:
        with contextlib.suppress(FileNotFoundError):
            for pid in children.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
