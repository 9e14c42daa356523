"""Messages from another node for a full "block" subscriber (cluster/broker/backlog.py): they
wait beside the link, in order, while the link carries everything else; the publisher is held
back on that pattern only; what the subscriber can no longer take goes to dead letters."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pubsub import Box, Collector, knows, nodes

from trimicro.actors import Actor, ActorRef, ask, bounded
from trimicro.actors.remote.tellflow import BACKLOG_BYTES
from trimicro.cluster.broker.backlog import HOLD_AT, MAX_HOLDS, Holds
from trimicro.cluster.broker.pubsub import Subscription
from trimicro.cluster.broker.topics import validate_pattern
from trimicro.cluster.cluster import Cluster
from trimicro.mailbox.codec import MsgpackCodec
from trimicro.mailbox.envelope import Envelope, Kind


class Echo(Actor):
    service_name = "Echo"

    async def ping(self, body: object) -> object:
        return body


async def gated(a: Cluster, b: Cluster, box: Box, gate: trio.Event) -> tuple[Subscription, ActorRef]:
    """On ``b``, a "block" subscriber to ``slow`` with 2 mailbox slots that handles nothing
    before ``gate`` opens; ``a`` knows of it."""
    slow = await b.node.spawn(Collector, box, gate, mailbox=bounded(2))
    sub = await b.subscribe("slow", slow, policy="block")
    await knows(a, "n1", "slow")
    return sub, slow


def waiting(pubsub: object) -> int:
    """Messages waiting in the backlog queues of ``pubsub`` (a PubSub)."""
    by_link = pubsub.held.by_link  # type: ignore[attr-defined]
    return sum(len(q.entries) for queues in by_link.values() for q in queues.values())


async def test_a_full_block_subscriber_holds_its_publisher_not_the_link(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as [a, b]:
        gate = trio.Event()
        box, other = Box(), Box()
        await gated(a, b, box, gate)
        await b.subscribe("fast", await b.node.spawn(Collector, other), policy="block")
        await b.node.spawn(Echo, name="echo")
        await knows(a, "n1", "fast")
        total = 20 * HOLD_AT
        sent = 0
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                nonlocal sent
                for i in range(total):
                    sent += await a.publish("slow", i)

            nursery.start_soon(publish)
            with trio.fail_after(10):
                while not a.pubsub.holds.by_link:  # b asked a to hold "slow" back
                    await trio.lowlevel.checkpoint()
                # Meanwhile the link carries the rest: an ask, and another topic.
                assert await ask(a.node.remote_ref("n1", "echo"), 7, endpoint="Echo.ping") == 7
                assert await a.publish("fast", "x") == 1
                await other.wait_for(1)
            assert sent < total  # the publisher waits for the slow subscriber
            assert waiting(b.pubsub) < total // 2  # the hold bounds what waits (and what was on its way)
            gate.set()
        await box.wait_for(total)
        assert box.bodies() == list(range(total))  # all of them, in publish order
        with trio.fail_after(10):
            while a.pubsub.holds.by_link or b.pubsub.held.by_link:  # released, queue gone
                await trio.lowlevel.checkpoint()
        assert b.node.remote.peer("n0").link.backlog_bytes == 0  # type: ignore[union-attr]


async def test_waiting_messages_of_a_subscription_that_ends_become_dead_letters(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as [a, b]:
        gate = trio.Event()
        box = Box()
        sub, _ = await gated(a, b, box, gate)
        total = 50
        async with b.node.dead_letters.subscribe() as letters:
            for i in range(total):
                assert await a.publish("slow", i) == 1
            with trio.fail_after(10):
                while waiting(b.pubsub) < total - 4:
                    await trio.lowlevel.checkpoint()
            b.pubsub.unsubscribe(sub)
            gate.set()
            dead: list[object] = []
            with trio.fail_after(10):
                while len(box.got) + len(dead) < total:
                    letter = await letters.receive()
                    assert letter.reason == "unsubscribed"
                    dead.append(letter.message.body)  # type: ignore[attr-defined]
        assert sorted(box.bodies() + dead) == list(range(total))  # each delivered or accounted for
        assert len(dead) >= total - 5
        assert b.node.remote.peer("n0").link.backlog_bytes == 0  # type: ignore[union-attr]


async def test_waiting_messages_of_a_subscriber_that_stops_become_dead_letters(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as [a, b]:
        box = Box()
        _, slow = await gated(a, b, box, trio.Event())  # never opens
        total = 50
        async with b.node.dead_letters.subscribe() as letters:
            for i in range(total):
                assert await a.publish("slow", i) == 1
            with trio.fail_after(10):
                while waiting(b.pubsub) < total - 4:
                    await trio.lowlevel.checkpoint()
            await b.node.stop(slow)
            reasons: dict[str, int] = {}
            bodies: list[object] = []
            # Message 0 may already be in the handler (waiting on the gate) when the actor
            # stops: that one is the actor's own, as in Akka, not a dead letter. Every other
            # one, in the mailbox or beside the link, becomes a dead letter.
            with trio.fail_after(10):
                while not set(range(1, total)) <= {b for b in bodies if isinstance(b, int)}:
                    letter = await letters.receive()
                    message = letter.message
                    bodies.append(getattr(message, "body", message))
                    reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
        got = sorted(body for body in bodies if isinstance(body, int))
        assert got in (list(range(total)), list(range(1, total)))
        assert reasons.get("stopped", 0) >= total - 5  # those that waited beside the link
        assert not b.pubsub.held.by_link
        assert b.node.remote.peer("n0").link.backlog_bytes == 0  # type: ignore[union-attr]


async def test_a_publisher_that_ignores_holds_is_stopped_by_the_link_budget(tmp_path: Path) -> None:
    """An older node does not know ``pubsub.hold``: what waits beside the link stays within its
    budget (the reader stops reading that link past it), and nothing is lost."""
    async with nodes(2, tmp_path) as [a, b]:
        a.node.remote.system_handlers.pop("pubsub.hold")  # (an unknown operation is ignored)
        gate = trio.Event()
        box = Box()
        await gated(a, b, box, gate)
        link = b.node.remote.peer("n0").link
        assert link is not None
        link.backlog_limit = BACKLOG_BYTES  # the budget of a link (8 MiB here, to keep it short)
        body = b"x" * 65536
        total = 6 * BACKLOG_BYTES // len(body)  # well past the budget, the send queue and socket buffers
        sent = 0
        peak = 0
        async with trio.open_nursery() as nursery:

            async def publish() -> None:
                nonlocal sent
                for _ in range(total):
                    sent += await a.publish("slow", body)

            nursery.start_soon(publish)
            with trio.fail_after(20):
                while link.backlog_bytes <= BACKLOG_BYTES:
                    await trio.lowlevel.checkpoint()
            await trio.testing.wait_all_tasks_blocked()
            peak = link.backlog_bytes
            assert sent < total  # held back by TCP: the reader stopped reading past the budget
            gate.set()
        await box.wait_for(total)
        assert len(box.got) == total
        assert peak < BACKLOG_BYTES + 2 * 1024 * 1024
        assert not a.pubsub.holds.by_link


class _Peer:
    node_id = "peer"


class _Link:
    """What :class:`Holds` uses of a link."""

    def __init__(self) -> None:
        self.closed = False
        self.peer = _Peer()


_values = st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.binary(max_size=20))
_bodies = st.one_of(
    st.binary(max_size=64),
    st.lists(_values, max_size=4).map(lambda v: MsgpackCodec().encode(v)),
    st.tuples(st.integers(0, 2**64 - 1), st.text(max_size=30)).map(lambda v: MsgpackCodec().encode(list(v))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), _bodies), max_size=40))
def test_hold_and_release_decoding_never_raises_and_stays_bounded(ops: list[tuple[bool, bytes]]) -> None:
    """``pubsub.hold``/``pubsub.release`` from a peer: any body is taken or ignored, never an
    error, and what a peer may hold is bounded."""
    holds = Holds(MsgpackCodec())
    link = _Link()
    for release, body in ops:
        env = Envelope(Kind.SYSTEM, 0, None, None, "pubsub.release" if release else "pubsub.hold", body=body)
        (holds.on_release if release else holds.on_hold)(link, env)  # type: ignore[arg-type]
    for patterns in holds.by_link.values():
        assert 0 < len(patterns) <= MAX_HOLDS
        for pattern in patterns.values():
            validate_pattern(pattern)  # only valid patterns are kept
