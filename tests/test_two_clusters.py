"""Two clusters on one machine, across real processes: neither ever talks to the other.

Two copies of ``trimicro run examples/services.py``, each with its own home (so its own
authority), the same node name and the same services, announce on the default mDNS service
type on 127.0.0.1, as two users' example clusters (or two copies of this test suite) do. From
each side, every call succeeds and reaches its own cluster only; ``nodes``, ``describe`` and
``services`` show only its own node; neither node logs a warning.

The 200 calls per side go through the public Python API, made by ten fresh client nodes of 20
calls each (a client node like the one every ``trimicro`` client command starts, so discovery
starts from nothing ten times per side): a CLI call is a new process of about a second. Real
``trimicro`` commands (``call``, ``describe``, ``services``, ``nodes``) are run a few times per
side on top.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from procs import Proc, python_process

from trimicro.cluster.cli import WAIT, wait_for
from trimicro.cluster.cluster import start_cluster

ROOT = Path(__file__).resolve().parent.parent
SERVICES = str(ROOT / "examples" / "services.py")
CALLS = 200
CLIENTS = 10
CLI_CALLS = 3
#: Each side adds its own step to its counter, so a total tells whose calls reached it.
STEP = {"a": 1, "b": 1000}


@asynccontextmanager
async def run_services(home: Path, stderr: Any) -> AsyncIterator[Proc]:
    """``trimicro --home HOME run examples/services.py --name svc --store ...``, stopped with
    SIGINT at the end (it deregisters: no stale records left for other tests)."""
    argv = ["-m", "trimicro.cluster.cli", "--home", str(home), "run", SERVICES, "--name", "svc"]
    argv += ["--log-level", "WARNING"]  # INFO (the default) tells of registrations: no news here
    async with python_process(*argv, "--store", str(home / "store"), stderr=stderr) as proc:
        with trio.fail_after(30):
            line = await proc.line()
        assert line.startswith("node svc at "), line
        proc.address = line.split()[3]
        yield proc
        proc.signal(signal.SIGINT)
        with trio.move_on_after(15):
            await proc.proc.wait()


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def api_calls(home: Path, step: int, address: str) -> list[int]:
    """CALLS calls of Counter.add through CLIENTS fresh client nodes, one after another, each
    first waiting for discovery as the CLI does."""
    totals: list[int] = []
    for _ in range(CLIENTS):
        async with start_cluster(
            home=home, listen=None, membership=False, announce=False, auth_refresh=None
        ) as client:
            await wait_for(client, "counter", WAIT)
            for _ in range(CALLS // CLIENTS):
                totals.append(await client.call("counter", "Counter.add", {"k": step}, timeout=10))
            [counter] = await client.describe("counter")
            assert [n.address for n in counter.nodes] == [address]
    return totals


async def cli_commands(home: Path, side: str, address: str) -> None:
    """Real `trimicro` commands against one side, each checked to show only that side."""
    code, out, err = await cli(home, "call", "counter", "Counter.add", '{"k": 0}', "--json")
    assert (code, json.loads(out)) == (0, STEP[side] * CALLS), err
    for _ in range(CLI_CALLS):
        code, out, err = await cli(home, "call", "greeter", "Greeter.hello", json.dumps({"name": side}))
        assert (code, json.loads(out)) == (0, f"Hello, {side}! (from node svc)"), err
    code, out, err = await cli(home, "describe", "greeter", "--json")
    assert code == 0, err
    assert [[n["address"] for n in s["nodes"]] for s in json.loads(out)] == [[address]]
    code, out, err = await cli(home, "services", "--json")
    assert code == 0, err
    listed = {s["name"]: [n["address"] for n in s["nodes"]] for s in json.loads(out)}
    assert listed == {name: [address] for name in ("auth", "counter", "greeter", "store")}
    code, out, err = await cli(home, "nodes", "--json")
    assert code == 0, err
    assert [(m["id"], m["address"], m["state"]) for m in json.loads(out)] == [("svc", address, "alive")]
    code, _, err = await cli(home, "call", "nosuch", "X.y")
    assert code == 1 and err.startswith("error 404 Not Found: service nosuch not found"), err


async def test_two_clusters_on_one_machine_never_talk_across(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trimicro")
    homes = {side: tmp_path / side for side in STEP}
    errors = {side: tmp_path / f"{side}.stderr" for side in STEP}
    with errors["a"].open("wb") as a_err, errors["b"].open("wb") as b_err:
        async with run_services(homes["a"], a_err) as a, run_services(homes["b"], b_err) as b:
            addresses = {"a": a.address, "b": b.address}
            assert addresses["a"] != addresses["b"]
            totals: dict[str, list[int]] = {}

            async def side(name: str) -> None:
                totals[name] = await api_calls(homes[name], STEP[name], addresses[name])
                await cli_commands(homes[name], name, addresses[name])

            async with trio.open_nursery() as nursery:
                for name in STEP:
                    nursery.start_soon(side, name)
    for name, step in STEP.items():
        # Every call of a side reached its own counter, and no call of the other side did.
        assert totals[name] == [step * i for i in range(1, CALLS + 1)]
        logged = errors[name].read_text()
        assert logged == "", f"side {name} logged:\n{logged}"
    # Only what concerns these two clusters: another program on this machine's loopback (a
    # second test run, say) may announce records of its own, which a node rightly ignores.
    ours = [m for m in (r.getMessage() for r in caplog.records) if any(a in m for a in addresses.values())]
    assert ours == []
