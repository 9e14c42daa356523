"""Membership under attack, across real processes: a hostile member cannot evict another.

The issue's reports: one gossip update from any authenticated member, "node B is DEAD at
incarnation 2**63-1", evicted B for good (its refutation, 2**63, was out of range, so every
message carrying it was rejected) and calls to B's services got 404; and, once that was fixed,
"B is dead at the incarnation B holds", repeated after each refutation, kept B out of honest
views 97% of the time, while rumours of made-up members made honest nodes dial the addresses
the liar chose and keep a ``Peer`` for each. Here the hostile member is its own process
(``swim_hostile_peer.py``), with a certificate from the same authority as everyone else, and it
keeps lying to every honest node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from procs import Proc, python_process
from test_cluster_process import client, peer, service_type, wait_state

from trimicro.cluster.cluster import Cluster
from trimicro.cluster.membership.swim import MemberState
from trimicro.cluster.registry import NodeInfo

HOSTILE = str(Path(__file__).resolve().parent / "swim_hostile_peer.py")
ROUNDS = 20


@asynccontextmanager
async def hostile(home: Path, stype: str, victim: str, honest: list[str]) -> AsyncIterator[Proc]:
    args = [HOSTILE, str(home), "mallory", stype, victim, ",".join(honest), str(ROUNDS)]
    async with python_process(*args) as proc:
        with trio.fail_after(30):
            line = await proc.line()
        assert line == "ready", line
        yield proc


async def views_of_b(me: Cluster, nodes: dict[str, str]) -> dict[str, Any]:
    """What each honest node (this one, and the others asked over the wire) holds for b:
    ``(state, incarnation)``, or ``None`` if it does not know b."""
    seen: dict[str, Any] = {}
    member = me.membership.member("b")
    seen[me.id] = None if member is None else (member.state.name.lower(), member.incarnation)
    for node_id, address in nodes.items():
        view = await me.call_node(NodeInfo(node_id, address, {}), "Membership.members", timeout=5)
        rows = [(row["state"], row["incarnation"]) for row in view if row["id"] == "b"]
        seen[node_id] = rows[0] if rows else None
    return seen


async def peer_counts(me: Cluster, nodes: dict[str, str]) -> dict[str, int]:
    """How many peers each honest node holds (``Membership.stats``)."""
    counts = {me.id: len(me.node.remote.peers)}
    for node_id, address in nodes.items():
        stats = await me.call_node(NodeInfo(node_id, address, {}), "Membership.stats", timeout=5)
        counts[node_id] = stats["peers"]
    return counts


async def everyone_knows_b(me: Cluster, nodes: dict[str, str]) -> dict[str, Any]:
    """The views, once every node has b in it (asked again at each change here, at least every
    0.1 s: the other nodes' changes are not announced to this one)."""
    with trio.fail_after(10):
        while None in (views := await views_of_b(me, nodes)).values():
            with trio.move_on_after(0.1):
                await me.membership.wait_changed()
    return views


def alive_and_sane(views: dict[str, Any]) -> bool:
    """b is ALIVE in every view, at an incarnation it reached itself (serving its service raised
    it once; nothing a liar says can bring it near 2**63-1)."""
    return all(v is not None and v[0] == "alive" and v[1] < 100 for v in views.values())


async def test_a_hostile_member_cannot_evict_another(tmp_path: Path) -> None:
    stype = service_type()
    async with (
        client(tmp_path, stype) as me,
        peer(tmp_path, "b", stype, "echo") as b,
        peer(tmp_path, "c", stype) as c,
    ):
        for node_id in ("b", "c"):
            await wait_state(me, node_id, {MemberState.ALIVE}, 10)
        assert await me.call("echo", "Echo.who", {}) == "b"
        honest = {"b": b.address, "c": c.address}
        assert alive_and_sane(await everyone_knows_b(me, honest))

        events: list[tuple[str, str]] = []
        me.membership.listeners.append(lambda e: events.append((e.kind, e.member.id)))
        async with hostile(tmp_path, stype, "b", [me.id, "b", "c"]) as mallory:
            peers_before = await peer_counts(me, honest)  # mallory included, as everyone else
            acked: dict[str, int] = {}
            with trio.fail_after(60):
                while len(acked) < 3 or min(acked.values()) < ROUNDS - 1:
                    line = await mallory.line()
                    _, round_, node_id = line.split()
                    acked[node_id] = int(round_)
                    if node_id != "b" or int(round_) % 5:
                        continue
                    # b has just applied poison round n: it is alive everywhere and answers.
                    assert await me.call("echo", "Echo.who", {}, timeout=5) == "b"
                    views = await views_of_b(me, honest)
                    assert alive_and_sane(views), views
            print(f"honest nodes acked every poison round: {acked}")
            peers_after = await peer_counts(me, honest)
            # 13 made-up members a round, to each node: none of them became a Peer (dialed).
            assert peers_after == peers_before, (peers_before, peers_after)

        # Every honest node applied every round by now (an ack follows the update it answers).
        views = await views_of_b(me, honest)
        assert alive_and_sane(views), views
        assert await me.call("echo", "Echo.who", {}, timeout=5) == "b"
        assert not [e for e in events if e[1] == "b"], events  # b never even flickered here
        assert me.membership.ignored_claims >= ROUNDS * 8
        me_member = me.membership.member(me.id)
        assert me_member is not None and me_member.incarnation < 100  # no jump towards 2**63-1
        print(f"claims ignored here: {me.membership.ignored_claims}")
