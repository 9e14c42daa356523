"""The broker conformance suite: :class:`BrokerConformance`.

Written against the cluster's pub/sub as it is today (:class:`~trimicro.cluster.broker.PubSub`:
``publish``, ``subscribe`` of a local actor, ``unsubscribe``, ``messages``); subscribers are
actors spawned on the broker's node.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from trimicro.actors import Actor, ActorRef
from trimicro.cluster.broker import DEAD_LETTER_PREFIX, Message, PubSub
from trimicro.mailbox.errors import MicroError

__all__ = ["BrokerConformance", "Inbox"]


class Inbox:
    """What one subscriber received (``got``), every delivery attempt it saw (``attempts``: the
    ``Message.delivery`` numbers), and waits for "at least n received" with a deadline.

    While ``nacks`` is positive a delivery raises (a nack), and while ``gate`` is set and not
    yet open a delivery waits for it (a subscriber too slow to ack)."""

    def __init__(self, deadline: float, *, nacks: int = 0, gate: trio.Event | None = None) -> None:
        self.deadline = deadline
        self.got: list[Message] = []
        self.attempts: list[int] = []
        self.nacks = nacks
        self.gate = gate
        self._waiters: list[tuple[int, trio.Event]] = []

    def add(self, msg: Message) -> None:
        self.got.append(msg)
        for n, event in self._waiters:
            if len(self.got) >= n:
                event.set()

    async def wait_for(self, n: int) -> None:
        if len(self.got) < n:
            event = trio.Event()
            self._waiters.append((n, event))
            with trio.fail_after(self.deadline):
                await event.wait()

    def bodies(self) -> list[object]:
        return [m.body for m in self.got]


class _Subscriber(Actor):
    """Hands every message to its Inbox (kept outside: a failing actor restarts afresh)."""

    def __init__(self, inbox: Inbox, total: Inbox | None = None) -> None:
        self.inbox = inbox
        self.total = total

    async def on_message(self, msg: Message) -> None:
        self.inbox.attempts.append(msg.delivery)
        if self.inbox.gate is not None:
            await self.inbox.gate.wait()
        if self.inbox.nacks > 0:
            self.inbox.nacks -= 1
            raise RuntimeError("nack (a conformance check asked for it)")
        self.inbox.add(msg)
        if self.total is not None:
            self.total.add(msg)


class BrokerConformance:
    """What the cluster's broker must do (Go Micro's broker, with NATS-style subjects).

    **Fixture to override.** ``brokers`` (required): yields at least two brokers
    (:class:`~trimicro.cluster.broker.PubSub`, e.g. ``cluster.pubsub`` of nodes started with
    ``start_cluster``) of different nodes of one cluster, joined (each may publish to the
    others), without subscriptions; it stops them afterwards. The first is the publisher of
    most checks, the second holds the "remote" subscribers.

    **Knobs.** ``deadline``: seconds any one wait may take. ``ack_timeout``: the ack deadline
    the acknowledged-mode checks publish with (one check waits it out twice). Override
    :meth:`until_known` / :meth:`until_forgotten` for a broker that shows the spread of
    subscriptions another way than ``remote_interest`` and ``wait_interest``.

    **Promises checked.** A message reaches every matching subscriber, on the publishing node
    and on others, exactly once and in publish order (per publisher), with its topic, headers
    and publisher; non-matching subscribers get nothing; ``*`` matches one token and ``>`` one
    or more at the end; a queue group gets each message once, shared over its members across
    nodes, and several groups and plain subscribers each get their own copy; a subscription
    ends with ``unsubscribe``, with its ``messages`` block and with its actor; invalid subjects
    are refused; with ``ack=True`` a nacked or unacked delivery is redelivered (``delivery``
    counts up), to another member of a queue group when there is one, and after
    ``max_deliveries`` the message goes to ``$dead.<topic>``.
    """

    pytestmark = pytest.mark.trio

    deadline: float = 10.0
    ack_timeout: float = 0.5

    @pytest.fixture
    def brokers(self) -> Sequence[PubSub]:
        raise NotImplementedError(
            f"{type(self).__name__}: override the `brokers` fixture (see BrokerConformance's docstring)"
        )

    # ---- helpers ------------------------------------------------------------------------------

    def inbox(self, **options: object) -> Inbox:
        return Inbox(self.deadline, **options)  # type: ignore[arg-type]

    async def subscriber(
        self,
        broker: PubSub,
        pattern: str,
        inbox: Inbox,
        *,
        queue: str | None = None,
        total: Inbox | None = None,
    ) -> ActorRef:
        """Spawn a subscriber actor on ``broker``'s node and subscribe it."""
        ref = await broker.node.spawn(_Subscriber, inbox, total)
        await broker.subscribe(pattern, ref, queue=queue)
        return ref

    async def until_known(self, publisher: PubSub, subscriber: PubSub, pattern: str, queue: str = "") -> None:
        """Wait until ``publisher`` knows of ``subscriber``'s subscription (nothing if one node)."""
        if publisher is subscriber:
            return
        node_id = subscriber.node.id
        with trio.fail_after(self.deadline):
            while not any(
                p == pattern and q == queue for p, q, _ in publisher.remote_interest.get(node_id, [])
            ):
                await publisher.wait_interest()

    async def until_forgotten(self, publisher: PubSub, subscriber: PubSub, pattern: str) -> None:
        if publisher is subscriber:
            return
        node_id = subscriber.node.id
        with trio.fail_after(self.deadline):
            while any(p == pattern for p, _, _ in publisher.remote_interest.get(node_id, [])):
                await publisher.wait_interest()

    # ---- fan-out -----------------------------------------------------------------------------------

    async def test_every_subscriber_gets_every_message_once_in_order(self, brokers: Sequence[PubSub]) -> None:
        a, b = brokers[0], brokers[1]
        local, remote = [self.inbox(), self.inbox()], [self.inbox(), self.inbox()]
        for inbox in local:
            await self.subscriber(a, "orders.created", inbox)
        for inbox in remote:
            await self.subscriber(b, "orders.created", inbox)
        await self.until_known(a, b, "orders.created")
        for i in range(100):
            await a.publish("orders.created", i, headers={"x-seq": str(i)})
        await a.publish("orders.created", "end")
        for inbox in local + remote:
            await inbox.wait_for(101)
            assert inbox.bodies() == [*range(100), "end"]
            first = inbox.got[0]
            assert (first.topic, first.headers.get("x-seq"), first.publisher) == (
                "orders.created",
                "0",
                a.node.id,
            )
            assert all(m.delivery == 1 for m in inbox.got)

    async def test_only_matching_subscribers_get_a_message(self, brokers: Sequence[PubSub]) -> None:
        a, b = brokers[0], brokers[1]
        here, there = self.inbox(), self.inbox()
        await self.subscriber(a, "orders.eu", here)
        await self.subscriber(b, "orders.eu", there)
        await self.until_known(a, b, "orders.eu")
        assert await a.publish("nobody.listens", 0) == 0
        for topic in ("orders.us", "orders", "orders.eu.x", "orders.eux"):
            await a.publish(topic, topic)
        await a.publish("orders.eu", "end")
        for inbox in (here, there):
            await inbox.wait_for(1)
            assert inbox.bodies() == ["end"]

    async def test_wildcards(self, brokers: Sequence[PubSub]) -> None:
        """``*`` stands for one token, ``>`` for one or more at the end (NATS subjects)."""
        a, b = brokers[0], brokers[1]
        expected = {
            "orders.*": ["orders.eu", "orders.us", "end"],
            "orders.>": ["orders.eu", "orders.eu.created", "orders.us", "end"],
            "orders.eu": ["orders.eu", "end"],
            "*.eu": ["orders.eu", "payments.eu", "end"],
            ">": ["orders.eu", "orders.eu.created", "orders", "payments.eu", "orders.us", "end"],
        }
        inboxes: dict[tuple[int, str], Inbox] = {}
        for where, broker in enumerate((a, b)):
            for pattern in expected:
                inboxes[where, pattern] = inbox = self.inbox()
                await self.subscriber(broker, pattern, inbox)
                await self.until_known(a, broker, pattern)
        for topic in ("orders.eu", "orders.eu.created", "orders", "payments.eu", "orders.us"):
            await a.publish(topic, topic)
        await a.publish("orders.eu", "end")
        for (where, pattern), inbox in inboxes.items():
            await inbox.wait_for(len(expected[pattern]))
            assert inbox.bodies() == expected[pattern], (where, pattern)

    async def test_bad_subjects_are_refused(self, brokers: Sequence[PubSub]) -> None:
        a = brokers[0]
        for topic in ("", "orders..eu", "orders.*", "orders.>", " orders"):
            with pytest.raises((ValueError, MicroError)):
                await a.publish(topic, 1)
        ref = await a.node.spawn(_Subscriber, self.inbox())
        for pattern in ("", "orders..eu", "orders.>.eu", "or*ders"):
            with pytest.raises((ValueError, MicroError)):
                await a.subscribe(pattern, ref)

    # ---- queue groups --------------------------------------------------------------------------------

    async def test_a_queue_group_gets_each_message_once_across_nodes(self, brokers: Sequence[PubSub]) -> None:
        a, b = brokers[0], brokers[1]
        members, group_total, plain = [self.inbox() for _ in range(4)], self.inbox(), self.inbox()
        for i, inbox in enumerate(members):
            await self.subscriber(a if i < 2 else b, "jobs", inbox, queue="workers", total=group_total)
        await self.subscriber(b, "jobs", plain)
        await self.until_known(a, b, "jobs", "workers")
        await self.until_known(a, b, "jobs")
        n = 200
        for i in range(n):
            await a.publish("jobs", i)
        await plain.wait_for(n)
        await group_total.wait_for(n)
        # A duplicate would leave a message out of the first n arrivals: sorted, they are 0..n-1.
        assert sorted(group_total.bodies()) == list(range(n))  # type: ignore[type-var]
        assert plain.bodies() == list(range(n))
        assert all(inbox.got for inbox in members), "a member got nothing out of 200"

    async def test_queue_groups_are_independent(self, brokers: Sequence[PubSub]) -> None:
        a, b = brokers[0], brokers[1]
        one, two = self.inbox(), self.inbox()
        await self.subscriber(a, "jobs.*", self.inbox(), queue="g1", total=one)
        await self.subscriber(b, "jobs.*", self.inbox(), queue="g1", total=one)
        await self.subscriber(b, "jobs.*", self.inbox(), queue="g2", total=two)
        await self.until_known(a, b, "jobs.*", "g1")
        await self.until_known(a, b, "jobs.*", "g2")
        for i in range(50):
            await a.publish("jobs.x", i)
        for total in (one, two):
            await total.wait_for(50)
            assert sorted(total.bodies()) == list(range(50))  # type: ignore[type-var]

    # ---- ending a subscription -------------------------------------------------------------------------

    async def test_a_subscription_ends_with_unsubscribe_its_block_and_its_actor(
        self, brokers: Sequence[PubSub]
    ) -> None:
        a, b = brokers[0], brokers[1]
        async with b.messages("news") as channel:
            await self.until_known(a, b, "news")
            await a.publish("news", "hello")
            with trio.fail_after(self.deadline):
                assert (await channel.receive()).body == "hello"
        await self.until_forgotten(a, b, "news")
        assert await a.publish("news", "nobody") == 0

        ref = await b.node.spawn(_Subscriber, self.inbox())
        subscription = await b.subscribe("news", ref)
        await self.until_known(a, b, "news")
        b.unsubscribe(subscription)
        await self.until_forgotten(a, b, "news")
        assert await a.publish("news", "nobody") == 0

        await b.subscribe("news", ref)
        await self.until_known(a, b, "news")
        await b.node.stop(ref)
        await self.until_forgotten(a, b, "news")
        assert await a.publish("news", "nobody") == 0

    # ---- acknowledged mode -------------------------------------------------------------------------------

    @pytest.mark.parametrize("where", ["local", "remote"])
    async def test_acked_publish_redelivers_until_acked(self, brokers: Sequence[PubSub], where: str) -> None:
        a = brokers[0]
        b = a if where == "local" else brokers[1]
        flaky = self.inbox(nacks=2)
        await self.subscriber(b, "pay", flaky)
        await self.until_known(a, b, "pay")
        assert await a.publish("pay", "x", ack=True, ack_timeout=self.deadline) == 1
        assert flaky.attempts == [1, 2, 3]
        assert [(m.body, m.delivery) for m in flaky.got] == [("x", 3)]

    async def test_acked_redelivery_goes_to_another_member_of_the_group(
        self, brokers: Sequence[PubSub]
    ) -> None:
        a, b = brokers[0], brokers[1]
        broken, good = self.inbox(nacks=1_000), self.inbox()
        await self.subscriber(b, "jobs", broken, queue="workers")
        await self.subscriber(a, "jobs", good, queue="workers")
        await self.until_known(a, b, "jobs", "workers")
        for i in range(5):
            assert await a.publish("jobs", i, ack=True, ack_timeout=self.deadline, max_deliveries=2) == 1
        assert good.bodies() == list(range(5))

    async def test_an_unacked_message_goes_to_the_dead_letters(self, brokers: Sequence[PubSub]) -> None:
        a, b = brokers[0], brokers[1]
        hopeless, dead = self.inbox(nacks=1_000), self.inbox()
        await self.subscriber(b, "never", hopeless)
        await self.subscriber(a, DEAD_LETTER_PREFIX + ">", dead)
        await self.until_known(a, b, "never")
        sent = await a.publish(
            "never", "y", headers={"x-id": "7"}, ack=True, ack_timeout=self.deadline, max_deliveries=3
        )
        assert sent == 0
        assert hopeless.attempts == [1, 2, 3]
        await dead.wait_for(1)
        assert (dead.got[0].topic, dead.got[0].body, dead.got[0].headers.get("x-id")) == (
            DEAD_LETTER_PREFIX + "never",
            "y",
            "7",
        )

    async def test_a_delivery_not_acked_in_time_counts_as_a_nack(self, brokers: Sequence[PubSub]) -> None:
        a, b = brokers[0], brokers[1]
        gate = trio.Event()
        stuck, dead = self.inbox(gate=gate), self.inbox()
        await self.subscriber(b, "slow", stuck)
        await self.subscriber(a, DEAD_LETTER_PREFIX + "slow", dead)
        await self.until_known(a, b, "slow")
        try:
            sent = await a.publish("slow", "z", ack=True, ack_timeout=self.ack_timeout, max_deliveries=2)
            assert sent == 0
            await dead.wait_for(1)
            assert dead.bodies() == ["z"]
        finally:
            gate.set()
        # It saw the first delivery, and never more than max_deliveries (whether a delivery past
        # its ack deadline is still handled, or cancelled with its deadline, is not promised).
        assert stuck.attempts[:1] == [1] and len(stuck.attempts) <= 2
