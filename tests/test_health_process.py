"""``trimicro health`` against real ``trimicro run`` processes: ready, then not ready naming the
failing check (the store closed; the registry gone), over a NATS registry of the test's own."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from procs import Proc, python_process

from trimicro.testing.nats import NatsServer

ROOT = Path(__file__).resolve().parent.parent
#: Generous bounds for a loaded 2-core machine: a clean run takes a fraction of each.
START = 60.0
COMMAND = 60.0


def cli(home: Path, *argv: str) -> list[str]:
    return ["-m", "trimicro.cluster.cli", "--home", str(home), *argv]


async def trimicro(home: Path, *argv: str) -> tuple[int, str]:
    """Run one ``trimicro`` command; (exit status, standard output)."""
    with trio.fail_after(COMMAND):
        done = await trio.run_process(
            [sys.executable, *cli(home, *argv)], capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode()


@asynccontextmanager
async def served(tmp_path: Path, registry: str) -> AsyncIterator[tuple[Proc, str]]:
    """``trimicro run tests/health_services.py`` with an LMDB store: (process, its address)."""
    argv = cli(tmp_path, "--registry", registry, "run", str(ROOT / "tests" / "health_services.py"))
    argv += ["--name", "hnode", "--store", f"lmdb://{tmp_path / 'store'}"]
    with (tmp_path / "stderr").open("wb") as sink:
        async with python_process(*argv, stderr=sink) as proc:
            with trio.fail_after(START):
                ready = await proc.line()
            assert ready.startswith("node hnode at "), ready
            yield proc, ready.split(" at ")[1].split(" ")[0]


def nats(tmp_path: Path) -> NatsServer:
    server = NatsServer(tmp_path / "nats")
    (tmp_path / "nats").mkdir()
    server.start()
    return server


async def test_health_of_a_running_node_then_of_its_closed_store(tmp_path: Path) -> None:
    server = nats(tmp_path)
    try:
        async with served(tmp_path, server.url) as (_, address):
            code, out = await trimicro(tmp_path, "health", address)
            assert code == 0, out
            assert out.splitlines()[0] == "node hnode: live, ready"
            assert "store       ok      open (LmdbStore)" in out
            # By node id, through the registry; and every announced node without a NODE.
            code, out = await trimicro(tmp_path, "--registry", server.url, "health", "hnode", "--json")
            report = json.loads(out)
            assert (code, report["node"], report["ready"]) == (0, "hnode", True)
            assert [c["name"] for c in report["checks"]] == ["node", "registry", "store", "membership"]
            code, out = await trimicro(tmp_path, "--registry", server.url, "health", "--json")
            assert code == 0 and [r["node"] for r in json.loads(out)] == ["hnode"]

            code, out = await trimicro(
                tmp_path, "--registry", server.url, "call", "breaker", "Breaker.close_store"
            )
            assert (code, out.strip()) == (0, '"closed"')
            code, out = await trimicro(tmp_path, "health", address)
            assert code == 1
            assert out.splitlines()[0] == "node hnode: live, NOT READY (store)"
            assert "store       FAIL    store is closed" in out
            code, out = await trimicro(tmp_path, "health", address, "--live")
            assert (code, out.strip()) == (0, "node hnode: live")
    finally:
        server.kill()


async def test_health_of_a_node_whose_registry_is_gone(tmp_path: Path) -> None:
    """The NATS server goes away: the node is still live (asked by address: no registry needed),
    not ready, and the registry check says why."""
    server = nats(tmp_path)
    try:
        async with served(tmp_path, server.url) as (_, address):
            assert (await trimicro(tmp_path, "health", address))[0] == 0
            server.kill()
            # A node answers from a report up to MAX_AGE (1 s) old: ask until one made after
            # the kill comes back, within a deadline.
            with trio.fail_after(30):
                while True:
                    code, out = await trimicro(tmp_path, "health", address, "--json")
                    report = json.loads(out)
                    if not report["ready"]:
                        break
            assert (code, report["live"], report["ready"]) == (1, True, False)
            failing = [c for c in report["checks"] if not c["ok"]]
            assert [c["name"] for c in failing] == ["registry"], report
            assert failing[0]["detail"]
    finally:
        server.kill()


async def test_health_of_a_node_that_is_not_there(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        code, out = await trimicro(tmp_path, "health", f"127.0.0.1:{port}")
    assert code == 1 and out.splitlines()[0] == f"node 127.0.0.1:{port}: NOT LIVE"
    code, _ = await trimicro(tmp_path, "--registry", "memory://", "health", "nosuch", "--wait", "0")
    assert code == 1


async def test_what_a_node_reports_is_printed_escaped(tmp_path: Path) -> None:
    """A report's names and details are the node's to choose: `trimicro health` shows control
    characters escaped, so a report cannot clear the screen or fake a line of the output."""
    from trimicro.actors import start_node
    from trimicro.actors.lowlevel import NotReady

    evil = "\x1b[2J\x1b]0;pwned\x07\nnode other: live, ready\u202e"

    async def probe() -> str:
        raise NotReady(evil)

    async with start_node("hostile", home=tmp_path, listen="127.0.0.1:0") as node:
        assert node.address is not None
        node.health.add("disk\x1b[31m", probe)
        code, out = await trimicro(tmp_path, "health", node.address)
    assert code == 1
    assert not any(c in out for c in "\x1b\x07\u202e")
    assert out.splitlines()[0] == "node hostile: live, NOT READY (disk\\x1b[31m)"
    assert "\\x1b[2J\\x1b]0;pwned\\x07\\nnode other: live, ready\\u202e" in out
    assert not any(line.startswith("node other") for line in out.splitlines())
