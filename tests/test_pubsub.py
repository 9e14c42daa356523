"""Pub/sub between cluster nodes in one process: fan-out, interest, queue groups, wildcards,
subscriptions dying with actors, acknowledged mode with redelivery and dead letters, and the
slow-subscriber policies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from trimicro.actors import Actor, TooManyRequests, ask, bounded, lifecycle
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.testing.conformance.broker import Inbox


class Box(Inbox):
    """The broker conformance suite's Inbox, with the count of nacks :class:`Collector` owes."""

    def __init__(self) -> None:
        super().__init__(deadline=10)
        self.fail_left = 0


class Collector(Actor):
    """Collects messages into a Box; while ``box.fail_left`` is positive, a delivery raises (a
    nack). The count lives in the Box, because a failing actor restarts with a fresh instance."""

    def __init__(self, box: Box, gate: trio.Event | None = None, total: Box | None = None) -> None:
        self.box = box
        self.gate = gate
        self.total = total

    async def on_message(self, msg: Message) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.box.fail_left > 0:
            self.box.fail_left -= 1
            raise RuntimeError("nack")
        self.box.add(msg)
        if self.total is not None:
            self.total.add(msg)


@asynccontextmanager
async def nodes(n: int, home: Path) -> AsyncIterator[list[Cluster]]:
    registry = MemoryRegistry()
    async with AsyncExitStack() as stack:
        clusters = [
            await stack.enter_async_context(start_cluster(f"n{i}", registry=registry, home=home))
            for i in range(n)
        ]
        yield clusters


async def knows(publisher: Cluster, node_id: str, pattern: str, queue: str = "") -> None:
    """Wait until ``publisher`` knows that ``node_id`` subscribes to ``pattern``."""
    with trio.fail_after(10):
        while not any(
            p == pattern and q == queue for p, q, _ in publisher.pubsub.remote_interest.get(node_id, [])
        ):
            await publisher.pubsub.wait_interest()


async def subscriber(
    cluster: Cluster, pattern: str, box: Box, total: Box | None = None, **options: object
) -> None:
    ref = await cluster.node.spawn(Collector, box, None, total)
    await cluster.subscribe(pattern, ref, **options)


async def test_local_fan_out_in_order(tmp_path: Path) -> None:
    async with nodes(1, tmp_path) as [a]:
        boxes = [Box(), Box(), Box()]
        for box in boxes:
            await subscriber(a, "orders.created", box)
        for i in range(50):
            assert await a.publish("orders.created", i) == 3
        for box in boxes:
            await box.wait_for(50)
            assert box.bodies() == list(range(50))
        assert boxes[0].got[0].topic == "orders.created" and boxes[0].got[0].publisher == "n0"


async def test_across_nodes_only_where_interested_and_in_order(tmp_path: Path) -> None:
    async with nodes(3, tmp_path) as [a, b, c]:
        box = Box()
        await subscriber(b, "orders.>", box)
        await knows(a, "n1", "orders.>")
        received_at_c = 0

        def count(link: object, env: object) -> None:
            nonlocal received_at_c
            received_at_c += 1

        c.node.remote.system_handlers["pubsub.msg"] = count
        c.node.remote.system_handlers["pubsub.batch"] = count  # how a burst of publishes travels
        for i in range(100):
            await a.publish("orders.eu.created", i)
        await box.wait_for(100)
        assert box.bodies() == list(range(100))
        assert received_at_c == 0  # c has no subscribers: it gets nothing


async def test_wildcards(tmp_path: Path) -> None:
    async with nodes(1, tmp_path) as [a]:
        one, tail, exact = Box(), Box(), Box()
        await subscriber(a, "orders.*", one)
        await subscriber(a, "orders.>", tail)
        await subscriber(a, "orders.eu", exact)
        for topic in ["orders.eu", "orders.eu.created", "orders", "payments.eu"]:
            await a.publish(topic, topic)
        await tail.wait_for(2)
        await one.wait_for(1)
        assert one.bodies() == ["orders.eu"]
        assert tail.bodies() == ["orders.eu", "orders.eu.created"]
        assert exact.bodies() == ["orders.eu"]


async def test_queue_group_delivers_each_message_once_across_nodes(tmp_path: Path) -> None:
    async with nodes(3, tmp_path) as [a, b, c]:
        boxes, total = [Box(), Box(), Box()], Box()
        await subscriber(b, "jobs", boxes[0], total, queue="workers")
        await subscriber(b, "jobs", boxes[1], total, queue="workers")
        await subscriber(c, "jobs", boxes[2], total, queue="workers")
        await knows(a, "n1", "jobs", "workers")
        await knows(a, "n2", "jobs", "workers")
        for i in range(300):
            await a.publish("jobs", i)
        with trio.fail_after(10):
            while sum(len(b.got) for b in boxes) < 300:
                await trio.testing.wait_all_tasks_blocked()
                await boxes[0].wait_for(len(boxes[0].got) + 1) if sum(
                    len(x.got) for x in boxes
                ) < 300 else None
        everything = sorted(i for box in boxes for i in box.bodies())  # type: ignore[type-var]
        assert everything == list(range(300))  # each exactly once
        assert all(box.got for box in boxes)  # and spread over the members


async def test_subscription_dies_with_its_actor(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as [a, b]:
        box = Box()
        ref = await b.node.spawn(Collector, box)
        await b.subscribe("t", ref)
        await knows(a, "n1", "t")
        await b.node.stop(ref)
        with trio.fail_after(10):
            while a.pubsub.remote_interest.get("n1"):
                await a.pubsub.wait_interest()
        assert len(b.pubsub.index) == 0
        assert await a.publish("t", 1) == 0


async def test_a_subscription_the_actor_cannot_be_watched_for_is_not_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pub/sub watches a subscriber to drop its subscriptions when it stops: if the actor's
    watchers are full (429), the subscribe fails and leaves no subscription behind (one nobody
    would ever remove)."""
    monkeypatch.setattr(lifecycle, "MAX_WATCHERS", 1)
    async with nodes(1, tmp_path) as [a]:
        box = Box()
        ref = await a.node.spawn(Collector, box)
        other = await a.node.spawn(Collector, Box())
        ref.binding.add_watcher(other)  # its one watcher
        with pytest.raises(TooManyRequests):
            await a.subscribe("t", ref)
        assert len(a.pubsub.index) == 0
        assert await a.publish("t", 1) == 0
        ref.binding.remove_watcher(other)
        await a.subscribe("t", ref)  # room again: the watcher is added with the subscription
        assert await a.publish("t", 2) == 1
        await box.wait_for(1)
        assert box.bodies() == [2]


async def test_acknowledged_mode_redelivers_then_dead_letters(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as [a, b]:
        flaky, dead = Box(), Box()
        flaky.fail_left = 2  # nacks twice, then acks
        ref = await b.node.spawn(Collector, flaky)
        await b.subscribe("pay", ref)
        await subscriber(a, "$dead.>", dead)
        await knows(a, "n1", "pay")
        assert await a.publish("pay", "x", ack=True, ack_timeout=2) == 1
        assert [m.delivery for m in flaky.got] == [3]
        never = Box()
        never.fail_left = 100
        hopeless = await b.node.spawn(Collector, never)
        await b.subscribe("never", hopeless)
        await knows(a, "n1", "never")
        assert await a.publish("never", "y", ack=True, ack_timeout=2, max_deliveries=3) == 0
        await dead.wait_for(1)
        assert dead.got[0].topic == "$dead.never" and dead.got[0].body == "y"


async def test_slow_subscriber_policies(tmp_path: Path) -> None:
    async with nodes(1, tmp_path) as [a]:
        gate = trio.Event()
        oldest, dropped = Box(), Box()
        slow = await a.node.spawn(Collector, oldest, gate, mailbox=bounded(3))
        await a.subscribe("s", slow, policy="drop_oldest")
        quitter = await a.node.spawn(Collector, dropped, gate, mailbox=bounded(3))
        quitter_sub = await a.subscribe("s", quitter, policy="drop_subscriber")
        for i in range(10):
            await a.publish("s", i)  # never blocks: both policies drop instead
        assert a.pubsub.dropped >= 7
        assert quitter_sub not in a.pubsub.index.match("s").plain  # dropped once full
        gate.set()
        await oldest.wait_for(3)
        await a.publish("s", "end")  # room again: arrives after whatever survived
        await oldest.wait_for(len(oldest.got) + 1)
        while oldest.bodies()[-1] != "end":
            await oldest.wait_for(len(oldest.got) + 1)
        assert oldest.bodies()[-4:-1] == [7, 8, 9]  # the newest survived; the oldest went
        assert len(oldest.got) <= 5

        blocker_gate = trio.Event()
        blocked = Box()
        ref = await a.node.spawn(Collector, blocked, blocker_gate, mailbox=bounded(2))
        await a.subscribe("b", ref, policy="block")
        sent = 0
        async with trio.open_nursery() as nursery:

            async def publisher() -> None:
                nonlocal sent
                for i in range(10):
                    await a.publish("b", i)
                    sent += 1

            nursery.start_soon(publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert sent < 10  # the publisher waits for the full subscriber
            blocker_gate.set()
        await blocked.wait_for(10)
        assert blocked.bodies() == list(range(10))


class Tally(Actor):
    """Counts messages; ``count`` answers how many arrived so far."""

    service_name = "Tally"

    def __init__(self) -> None:
        self.bodies: list[object] = []

    async def on_message(self, msg: Message) -> None:
        self.bodies.append(msg.body)

    async def count(self, body: object) -> list[object]:
        return self.bodies


async def test_a_publish_is_not_overtaken_by_what_the_publisher_sends_next(tmp_path: Path) -> None:
    """Publishes to a node travel in batches, yet in their place among the link's traffic: an ask
    sent after them, and an acknowledged publish after plain ones, arrive after them."""
    async with nodes(2, tmp_path) as [a, b]:
        tally = await b.node.spawn(Tally, name="tally")
        await b.subscribe("t", tally)
        await knows(a, "n1", "t")
        for i in range(500):
            await a.publish("t", i)
        assert await a.publish("t", 500, ack=True) == 1
        seen = await ask(a.node.remote_ref("n1", "tally"), {}, endpoint="Tally.count")
        assert seen == list(range(501))
