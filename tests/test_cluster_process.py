"""Cluster behaviour across real processes on 127.0.0.1 (mDNS on loopback, SWIM, retries).

The issue's targets, measured here with real processes and real signals: a new service is
callable from a running peer within 1.5 s; a SIGKILLed node is evicted within 3 s; a SIGSTOPped
node is suspected within 3 s and comes back when resumed; with three service nodes under steady
calls, killing one fails fewer than 0.1% of calls (idempotent endpoint) and the survivors take
the load within 2 s. Each test uses its own mDNS service type, so concurrent runs never meet.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio
from procs import Proc, python_process

from trimicro.actors import MicroError
from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.membership.swim import MemberState
from trimicro.cluster.registry import MdnsRegistry

PEER = str(Path(__file__).resolve().parent / "cluster_peer.py")


def service_type() -> str:
    return f"_t{uuid.uuid4().hex[:10]}._tcp.local."


@asynccontextmanager
async def peer(home: Path, name: str, stype: str, service: str = "") -> AsyncIterator[Proc]:
    args = [PEER, str(home), name, stype] + ([service] if service else [])
    async with python_process(*args) as proc:
        with trio.fail_after(30):
            line = await proc.line()
        assert line.startswith(f"ready {name} "), line
        proc.address = line.split()[2]
        yield proc


@asynccontextmanager
async def client(home: Path, stype: str) -> AsyncIterator[Cluster]:
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("client", registry=registry, home=home) as cluster,
    ):
        yield cluster


async def wait_state(cluster: Cluster, node_id: str, states: set[MemberState], limit: float) -> float:
    """Seconds until membership holds ``node_id`` in one of ``states`` (fails after ``limit``)."""
    start = trio.current_time()
    with trio.fail_after(limit):
        while True:
            member = cluster.membership.member(node_id)
            if member is not None and member.state in states:
                return trio.current_time() - start
            await cluster.membership.wait_changed()


async def test_join_kill_and_stop_timings(tmp_path: Path) -> None:
    stype = service_type()
    async with (
        client(tmp_path, stype) as me,
        peer(tmp_path, "p1", stype, "echo") as p1,
        peer(tmp_path, "p2", stype) as p2,
    ):
        await wait_state(me, "p1", {MemberState.ALIVE}, 10)
        await wait_state(me, "p2", {MemberState.ALIVE}, 10)
        assert await me.call("echo", "Echo.who", {}) == "p1"

        # A new node with a new service: callable from here within 1.5 s of being ready.
        async with peer(tmp_path, "p3", stype, "fresh"):
            ready = trio.current_time()
            with trio.fail_after(5):
                while True:
                    try:
                        assert await me.call("fresh", "Echo.who", {}, timeout=1) == "p3"
                        break
                    except MicroError:
                        await me.membership.wait_changed()
            callable_after = trio.current_time() - ready
            print(f"new service callable after {callable_after:.3f}s")
            assert callable_after < 1.5, callable_after

        # SIGSTOP: suspected within 3 s; SIGCONT: alive again.
        p2.signal(signal.SIGSTOP)
        suspected_after = await wait_state(me, "p2", {MemberState.SUSPECT, MemberState.DEAD}, 10)
        print(f"SIGSTOP suspected after {suspected_after:.3f}s")
        assert suspected_after < 3.0, suspected_after
        p2.signal(signal.SIGCONT)
        await wait_state(me, "p2", {MemberState.ALIVE}, 10)

        # SIGKILL: evicted (dead) within 3 s.
        p1.signal(signal.SIGKILL)
        evicted_after = await wait_state(me, "p1", {MemberState.DEAD}, 10)
        print(f"SIGKILL evicted after {evicted_after:.3f}s")
        assert evicted_after < 3.0, evicted_after


async def test_kill_one_of_three_under_steady_calls(tmp_path: Path) -> None:
    stype = service_type()
    async with AsyncExitStack() as stack, client(tmp_path, stype) as me:
        procs = [await stack.enter_async_context(peer(tmp_path, f"s{i}", stype, "echo")) for i in range(3)]
        for i in range(3):
            await wait_state(me, f"s{i}", {MemberState.ALIVE}, 10)
        with trio.fail_after(10):
            while len({await me.call("echo", "Echo.who", {}) for _ in range(30)}) < 3:
                await me.membership.wait_changed()

        errors: list[str] = []
        gone: list[tuple[str, str]] = []  # membership events suspect/dead seen during the load
        me.membership.listeners.append(
            lambda e: gone.append((e.kind, e.member.id)) if e.kind in ("suspect", "dead") else None
        )
        calls: list[tuple[float, str | None]] = []  # (time, answering node or None for a failure)
        killed_at = 0.0
        async with trio.open_nursery() as nursery:

            async def caller() -> None:
                end = trio.current_time() + 6.0
                while trio.current_time() < end and len(calls) < 500_000:  # (bounds: time first)
                    try:
                        who = await me.call("echo", "Echo.who", {}, timeout=5)
                    except MicroError as exc:
                        who = None
                        errors.append(repr(exc))
                    calls.append((trio.current_time(), who))

            for _ in range(4):
                nursery.start_soon(caller)
            await trio.sleep(2.0)  # load runs on its own; this only picks the moment of the kill
            killed_at = trio.current_time()
            procs[0].signal(signal.SIGKILL)

        failures = [c for c in calls if c[1] is None]
        print(f"{len(failures)} failed of {len(calls)} calls with one of three nodes SIGKILLed: {errors}")
        assert len(calls) > 500
        assert len(failures) / len(calls) < 0.001, (len(failures), len(calls))
        late = [who for t, who in calls if t > killed_at + 2.0]
        assert late and set(late) <= {"s1", "s2"}  # the survivors carry all the load
        assert {"s1", "s2"} <= set(late)
        # No false evictions under load: only the killed node was suspected or declared dead.
        assert {node for _, node in gone} == {"s0"}, gone
        assert ("dead", "s0") in gone
