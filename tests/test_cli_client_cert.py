"""Client commands and workers on a host that joined a cluster with certificate bundles.

Two homes on this machine stand for two hosts: A holds the authority, B joined it by installing
bundles that A issued (docs/hosts.md). A joined home can make no certificate, so a client
command there runs as an installed ``cli-`` certificate, held by one command at a time, and
each worker of ``run --workers N`` needs a certificate of its own. Real processes; mDNS on
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import trio

START = 90.0
STOP = 45.0

MODULE = """
from trimicro.actors import Actor


class Whoami(Actor):
    service_name = {name!r}

    async def whoami(self, body: dict) -> dict:
        return {{"caller": self.context.account.id, "node": self.context.node.id}}
"""


def argv(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home), *args]


async def cli(home: Path, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    with trio.fail_after(START):
        done = await trio.run_process(
            argv(home, *args), capture_stdout=True, capture_stderr=True, check=False, cwd=cwd
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def joined_homes(tmp_path: Path, *nodes: str) -> tuple[Path, Path]:
    """Home A with the authority; home B joined with bundles for ``nodes`` issued by A."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert (await cli(a, "authority", "init"))[0] == 0
    if nodes:
        code, out, err = await cli(a, "cert", "issue", *nodes, cwd=tmp_path)
        assert code == 0, err
        assert f"trimicro cert install {' '.join(f'{n}.bundle.json' for n in nodes)}" in out
        files = [str(tmp_path / f"{node}.bundle.json") for node in nodes]
        code, out, err = await cli(b, "cert", "install", *files)
        assert code == 0, err
    return a, b


@contextlib.asynccontextmanager
async def serving(home: Path, module: Path, *args: str) -> AsyncIterator[tuple[trio.Process, list[str]]]:
    """``trimicro run MODULE ARGS`` from ``home`` until its first ready line(s) are read;
    SIGINT at the end (it deregisters: nothing stale is left for other tests)."""
    proc = await trio.lowlevel.open_process(
        argv(home, "run", str(module), *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    data = b""
    try:
        want = 2 if "--workers" in args else 1
        with trio.fail_after(START):
            while data.count(b"\nnode ") + data.startswith(b"node ") < want:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, f"run ended: {data.decode()}"
                data += chunk
        yield proc, data.decode().splitlines()
    finally:
        with trio.CancelScope(shield=True):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with trio.move_on_after(STOP):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def service(tmp_path: Path) -> tuple[str, Path]:
    name = f"whoami-{uuid.uuid4().hex[:10]}"
    module = tmp_path / f"svc_{name.replace('-', '_')}.py"
    module.write_text(MODULE.format(name=name))
    return name, module


async def test_a_joined_home_without_a_client_certificate_says_how_to_get_one(tmp_path: Path) -> None:
    _, b = await joined_homes(tmp_path, "b1")
    code, _, err = await cli(b, "call", "any", "any.thing")
    assert code == 2, err
    assert "holds no client certificate" in err and "trimicro cert issue cli-HOST" in err, err
    assert "Traceback" not in err


async def test_client_commands_on_a_joined_host_run_as_its_client_certificate(tmp_path: Path) -> None:
    name, module = service(tmp_path)
    a, b = await joined_homes(tmp_path, "b1", "cli-b")
    async with serving(b, module, "--name", "b1"):
        code, out, err = await cli(b, "call", name, f"{name}.whoami", "--wait", "30")
        assert code == 0, err
        assert json.loads(out) == {"caller": "cli-b", "node": "b1"}
        # From the authority's host, client commands keep their fresh ids.
        code, out, err = await cli(a, "call", name, f"{name}.whoami", "--wait", "30")
        assert code == 0, err
        assert json.loads(out)["caller"].startswith("cli-") and json.loads(out)["caller"] != "cli-b"

        # Several commands at once share the certificate in turn (two processes under one
        # node id would make the node drop the first one's link), none fails.
        results: list[tuple[int, str, str]] = []

        async def one() -> None:
            results.append(await cli(b, "call", name, f"{name}.whoami", "--wait", "60"))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert [(code, json.loads(out)) for code, out, _ in results] == [
            (0, {"caller": "cli-b", "node": "b1"})
        ] * 4, results

        # A certificate in use is waited for until --wait; a second one is used meanwhile.
        fd = os.open(b / "nodes" / "cli-b" / "client.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            code, _, err = await cli(b, "call", name, f"{name}.whoami", "--wait", "1")
            assert code == 2 and "other commands use every client certificate" in err, err
            code, out, err = await cli(a, "cert", "issue", "cli-b-2", cwd=tmp_path)
            assert code == 0, err
            assert (await cli(b, "cert", "install", str(tmp_path / "cli-b-2.bundle.json")))[0] == 0
            code, out, err = await cli(b, "call", name, f"{name}.whoami", "--wait", "30")
            assert code == 0, err
            assert json.loads(out)["caller"] == "cli-b-2"
            code, out, err = await cli(b, "--as", "cli-b", "call", name, f"{name}.whoami", "--wait", "1")
            assert code == 2, (out, err)  # --as belongs after the subcommand
            code, out, err = await cli(b, "call", name, f"{name}.whoami", "--as", "cli-b", "--wait", "1")
            assert code == 2 and "other commands use every client certificate" in err, err
        finally:
            os.close(fd)


async def test_workers_on_a_joined_host_need_a_certificate_each(tmp_path: Path) -> None:
    name, module = service(tmp_path)
    a, b = await joined_homes(tmp_path, "w-1", "cli-b")
    code, out, err = await cli(b, "run", str(module), "--workers", "3", "--name", "w")
    assert code == 2, (out, err)
    assert "no certificate for w-2 w-3" in err and "trimicro cert issue w-2 w-3" in err, err
    assert "supervising" not in out  # refused before any worker started

    code, _, err = await cli(a, "cert", "issue", "w-2", cwd=tmp_path)
    assert code == 0, err
    assert (await cli(b, "cert", "install", str(tmp_path / "w-2.bundle.json")))[0] == 0
    async with serving(b, module, "--workers", "2", "--name", "w") as (_, lines):
        assert {line.split()[1] for line in lines if line.startswith("node ")} == {"w-1", "w-2"}
        code, out, err = await cli(a, "call", name, f"{name}.whoami", "--wait", "30")
        assert code == 0, err
        assert json.loads(out)["node"] in ("w-1", "w-2")
