"""Pub/sub across real processes: a queue group keeps every message when a member is SIGKILLed
mid-stream (acknowledged mode), and delivers each message to one member only (default mode)."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import trio
from procs import Proc, python_process

from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.mdns import MdnsRegistry

PEER = str(Path(__file__).resolve().parent / "pubsub_peer.py")


async def got_lines(proc: Proc) -> list[int]:
    """Every ``got N`` the process printed, up to its exit."""
    seen: list[int] = []
    with trio.move_on_after(10):
        while True:
            try:
                line = await proc.line()
            except EOFError:
                break
            if line.startswith("got "):
                seen.append(int(line.split()[1]))
    return seen


async def interest_from(cluster: Cluster, *node_ids: str) -> None:
    with trio.fail_after(15):
        while not all(cluster.pubsub.remote_interest.get(n) for n in node_ids):
            await cluster.pubsub.wait_interest()


async def test_queue_group_member_killed_mid_stream(tmp_path: Path) -> None:
    stype = f"_t{uuid.uuid4().hex[:10]}._tcp.local."
    args = [str(tmp_path), stype, "jobs", "workers"]
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("pub", registry=registry, home=tmp_path) as me,
        python_process(PEER, str(tmp_path), "w1", *args[1:]) as w1,
        python_process(PEER, str(tmp_path), "w2", *args[1:]) as w2,
    ):
        for proc in (w1, w2):
            with trio.fail_after(30):
                assert await proc.line() == "ready"
        await interest_from(me, "w1", "w2")

        # Default mode (at most once): each message to exactly one member.
        for i in range(200):
            await me.publish("jobs", i)
        # Acknowledged mode: kill a member mid-stream; nothing may be lost.
        for i in range(1000, 1300):
            if i == 1100:
                w1.signal(signal.SIGKILL)
            assert await me.publish("jobs", i, ack=True, ack_timeout=2) == 1
        w2.signal(signal.SIGKILL)
        seen1, seen2 = await got_lines(w1), await got_lines(w2)

    default = [i for i in seen1 + seen2 if i < 1000]
    assert sorted(default) == list(range(200))  # none lost on a healthy cluster, none duplicated
    assert {i for i in seen1 if i < 1000} and {i for i in seen2 if i < 1000}  # both took a share
    acked = {i for i in seen1 + seen2 if i >= 1000}
    assert acked == set(range(1000, 1300))  # every acknowledged message arrived somewhere
