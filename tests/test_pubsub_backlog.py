"""Messages from another node for a full "block" subscriber (cluster/broker/backlog.py): they
wait beside the link, in order, while the link carries everything else; the publisher is held
back on that pattern only; what the subscriber can no longer take goes to dead letters."""

from __future__ import annotations

from pathlib import Path

import trio
from test_pubsub import Box, Collector, knows, nodes

from trimicro.actors import Actor, ask, bounded
from trimicro.cluster.broker.backlog import HOLD_AT


class Echo(Actor):
    service_name = "Echo"

    async def ping(self, body: object) -> object:
        return body


def waiting(pubsub: object) -> int:
    """Messages waiting in the backlog queues of ``pubsub`` (a PubSub)."""
    by_link = pubsub.held.by_link  # type: ignore[attr-defined]
    return sum(len(q.entries) for queues in by_link.values() for q in queues.values())


async def test_a_full_block_subscriber_holds_its_publisher_not_the_link(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as [a, b]:
        gate = trio.Event()
        box, other = Box(), Box()
        slow = await b.node.spawn(Collector, box, gate, mailbox=bounded(2))
        await b.subscribe("slow", slow, policy="block")
        await b.subscribe("fast", await b.node.spawn(Collector, other), policy="block")
        await b.node.spawn(Echo, name="echo")
        await knows(a, "n1", "slow")
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
        slow = await b.node.spawn(Collector, box, gate, mailbox=bounded(2))
        sub = await b.subscribe("slow", slow, policy="block")
        await knows(a, "n1", "slow")
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
