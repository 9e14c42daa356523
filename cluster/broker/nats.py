"""The broker on NATS: ``nats://HOST:PORT?prefix=trimicro&stream=TRIMICRO&ack_wait=30``.

For nodes that share a NATS server rather than the cluster's own links. What maps to what:

* a topic ``orders.eu`` is the core NATS subject ``<prefix>.m.orders.eu``; trimicro's subject
  syntax is NATS's (``*`` one token, ``>`` the rest, see :mod:`.topics`), so a pattern maps
  token for token; ``publish`` is a core publish: at most once, nothing stored;
* each node holds one NATS subscription per (pattern, queue group) its actors subscribed, and
  hands each message to its local subscribers (to one of its members of each group); a queue
  group is a NATS queue group, so NATS picks one node of the group per message;
* ``publish(..., ack=True)`` goes through JetStream (:mod:`.nats_acked`): the stream
  ``<stream>`` holds ``<prefix>.a.>``, each subscription reads it through a durable consumer
  (one per group, shared by its members; one per plain subscriber), so a subscriber that
  restarts (same node id, same actor name) gets what it missed; a nack or a missed ack
  deadline redelivers, ``ack_wait`` redelivers what a crashed subscriber held, and after
  ``max_deliveries`` the message goes to ``$dead.<topic>`` (a core publish);
* which node subscribes to what (to count deliveries, and for ``remote_interest``) is kept in
  a NATS registry bucket ``<prefix>_interest``: one record per node, refreshed every
  :data:`INTEREST_TTL` / 3 and lapsing after :data:`INTEREST_TTL` (a crashed node's
  subscriptions stop counting then).

``publish`` returns the number of deliveries it made as far as the interest known to this node
says (at most once: how many subscribers and groups match; acknowledged: how many acked).

Traces and metrics are the cluster's own broker's: ``publish`` runs the node's client middleware
(a traced node's ``publish`` span, whose context travels in the message's NATS headers, so each
delivery's ``process`` span is its child and links to it, a redelivery too); the node counts
the deliveries it makes (``delivered``) and JetStream's redeliveries (``redelivered``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from trimicro.actors import Actor, ActorRef, Middleware, Terminated, tell
from trimicro.actors.lowlevel import AUTHORIZATION, forward_auth
from trimicro.mailbox.errors import BadRequest
from trimicro.mailbox.logs import get_logger

from ..natsio import Inbox, NatsConnection, NatsOptions, Outbox
from ..registry import Event, EventType, NodeInfo, Service
from ..registry.nats import NatsRegistry
from .forward import forwarded
from .message import Message, Policy, Subscription
from .nats_acked import JetStreamAcks
from .through import APPLIED, publish_through, runs_chain
from .topics import SubscriptionIndex, validate_pattern, validate_subject

__all__ = ["NatsBroker"]

log = get_logger(__package__)

PUBLISHER = "Trimicro-Publisher"
_INTEREST_SERVICE = "trimicro.pubsub"
#: What a NATS subscription hands over: (its (pattern, queue)), subject, data, headers.
_Arrival = tuple[tuple[str, str], str, bytes, Any]
#: A node's interest record lapses this long after its last refresh (a node that crashed stops
#: counting then); it is refreshed every third of it.
INTEREST_TTL = 30.0
#: Batches of deliveries waiting for the delivery task; past it, at-most-once drops (counted).
DELIVERY_BATCHES = 1024


class _Watcher(Actor):
    """Ends the subscriptions of an actor that stops (it watches each subscriber)."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker

    async def on_ref(self, ref: ActorRef) -> None:
        self.context.watch(ref)

    async def on_terminated(self, msg: Terminated) -> None:
        self.broker._actor_gone(msg.ref)


class NatsBroker:
    """A :class:`~trimicro.cluster.broker.Broker` on NATS (see the module docstring)."""

    def __init__(
        self,
        cluster: Any,
        options: NatsOptions | None = None,
        *,
        prefix: str = "trimicro",
        stream: str = "TRIMICRO",
        ack_wait: float = 30.0,
        connection: NatsConnection | None = None,
    ) -> None:
        self.cluster = cluster
        self.node = cluster.node
        self.codec = self.node.remote.codec
        self.conn = connection or NatsConnection(options or NatsOptions(), purpose="broker")
        self._owns = connection is None
        self.prefix = prefix
        self.index: SubscriptionIndex[Subscription] = SubscriptionIndex()
        self._by_actor: dict[ActorRef, list[Subscription]] = {}
        #: (pattern, queue or "") -> the NATS subscription of this node, and its subscribers
        self._nats_subs: dict[tuple[str, str], Any] = {}
        self._by_key: dict[tuple[str, str], list[Subscription]] = {}
        #: node id -> [(pattern, queue or "", count)]: the other nodes' interest
        self.remote_interest: dict[str, list[tuple[str, str, int]]] = {}
        self._interest = SubscriptionIndex[tuple[str, str, str, int]]()
        self._interest_event = trio.Event()
        self._interest_registry = NatsRegistry(connection=self.conn, bucket=f"{prefix}_interest")
        self._valid: set[str] = set()
        self._rr = itertools.count()
        self._outbox: Outbox[tuple[str, bytes, dict[str, str] | None]] = Outbox(self.conn.bridge, self._send)
        self._deliveries_send, self._deliveries = trio.open_memory_channel[list[_Arrival]](DELIVERY_BATCHES)
        self._inbox: Inbox[_Arrival] = Inbox(self.conn.bridge, self._received)
        self.acked = JetStreamAcks(self, stream=stream, ack_wait=ack_wait)
        self._watcher: ActorRef | None = None
        self._scope = trio.CancelScope()
        self._closed = False
        #: At-most-once messages dropped because the subscribers fell behind.
        self.dropped = 0
        #: Messages handed to this node's subscribers (acknowledged ones at each delivery), and
        #: acknowledged deliveries JetStream made again (a nack, a missed ack deadline).
        self.delivered = 0
        self.redelivered = 0

    # ---- lifetime --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, read the interest bucket, prepare the stream; serve deliveries until close."""
        await self.conn.connect()
        await self._interest_registry.list_services()  # the copy is ready
        self._interest_cm = self._interest_registry.watch(_INTEREST_SERVICE)
        events = await self._interest_cm.__aenter__()
        for svc in await self._interest_registry.list_services():
            for node in svc.nodes if svc.name == _INTEREST_SERVICE else ():
                self._node_interest(node, present=True)
        await self.acked.start()
        self._watcher = await self.node.spawn(_Watcher, self, name="trimicro-nats-watch")
        self.node.spawn_system(self._serve, events)

    async def _serve(self, events: AsyncIterator[Event]) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._deliver_loop)
                    nursery.start_soon(self.acked.serve)
                    nursery.start_soon(self._heartbeat)
                    async for event in events:
                        self._node_interest(event.service.nodes[0], present=event.type != EventType.DELETE)
        finally:
            with trio.CancelScope(shield=True):
                await self._interest_cm.__aexit__(None, None, None)

    async def close(self) -> None:
        """Withdraw this node's interest, stop serving, close the connection. Durable consumers
        stay: a subscriber that comes back (same node, same actor name) resumes."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(self.conn.options.timeout) as scope:
            scope.shield = True
            try:
                await self.acked.stop()
                await self._interest_registry.deregister(self._interest_record())
            except Exception as exc:  # the server is gone: its TTL-less record stays until restart
                log.debug("broker: withdrawing interest: %s", exc)
        self._scope.cancel()
        await self._interest_registry.aclose()
        if self._owns:
            with trio.CancelScope(shield=True):
                await self.conn.aclose()

    # ---- interest ------------------------------------------------------------------------------------

    def local_interest(self) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        for subs in self._by_actor.values():
            for sub in subs:
                key = (sub.pattern, sub.queue or "")
                counts[key] = counts.get(key, 0) + 1
        return [(p, q, n) for (p, q), n in sorted(counts.items())]

    def _interest_record(self) -> Service:
        subs = json.dumps(self.local_interest())
        return Service(_INTEREST_SERVICE, "1", {}, (), (NodeInfo(self.node.id, "", {"subs": subs}),))

    def _node_interest(self, node: NodeInfo, present: bool) -> None:
        if node.id == self.node.id:
            return  # our own interest is read from the local index, always current
        if present:
            try:
                self.remote_interest[node.id] = [tuple(e) for e in json.loads(node.metadata["subs"])]
            except (KeyError, ValueError, TypeError):
                log.warning("broker: ignoring the interest record of %s", node.id)
                return
        else:
            self.remote_interest.pop(node.id, None)
        self._rebuild_interest()
        self._interest_event.set()
        self._interest_event = trio.Event()

    def _rebuild_interest(self) -> None:
        index = SubscriptionIndex[tuple[str, str, str, int]]()
        nodes = {**self.remote_interest, self.node.id: self.local_interest()}
        for node_id, entries in nodes.items():
            for pattern, queue, count in entries:
                for i in range(count):
                    index.add(pattern, (node_id, pattern, queue, i), queue or None)
        self._interest = index

    async def _announce(self) -> None:
        self._rebuild_interest()
        await self._interest_registry.register(self._interest_record(), ttl=INTEREST_TTL)

    async def _announce_quietly(self) -> None:
        """:meth:`_announce` where nobody waits for it: a failure (the server is away) waits
        for the next heartbeat, which announces the interest again."""
        try:
            await self._announce()
        except Exception as exc:
            log.debug("broker: announcing interest: %s", exc)

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(INTEREST_TTL / 3)
            await self._announce_quietly()

    async def wait_interest(self) -> None:
        """Return at the next change of another node's interest (for tools and tests)."""
        await self._interest_event.wait()

    def expected(self, topic: str) -> int:
        """How many deliveries a publish on ``topic`` makes: each plain subscriber, each group."""
        match = self._interest.match_view(topic)
        return len(match.plain) + len(match.groups)

    # ---- subscribing ---------------------------------------------------------------------------------

    def subject(self, topic: str, mode: str = "m") -> str:
        return f"{self.prefix}.{mode}.{topic}"

    async def subscribe(
        self, pattern: str, ref: ActorRef, *, queue: str | None = None, policy: Policy = "block"
    ) -> Subscription:
        """Deliver what is published on ``pattern`` to the local actor ``ref`` (see the module
        docstring for queue groups and acknowledged delivery)."""
        validate_pattern(pattern)
        if policy not in ("block", "drop_oldest", "drop_subscriber"):
            raise BadRequest(f"unknown slow-subscriber policy {policy!r}")
        sub = Subscription(pattern, ref, queue, policy)
        if not self.index.add(pattern, sub, queue):
            return sub
        first_of_actor = ref not in self._by_actor
        self._by_actor.setdefault(ref, []).append(sub)
        key = (pattern, queue or "")
        self._by_key.setdefault(key, []).append(sub)
        try:
            if key not in self._nats_subs:
                self._nats_subs[key] = await self._nats_subscribe(key)
            await self.acked.subscribe(sub)
            if first_of_actor and self._watcher is not None:
                await tell(self._watcher, ref)
            await self._announce()
        except BaseException:
            self._forget(sub)
            raise
        return sub

    async def _nats_subscribe(self, key: tuple[str, str]) -> Any:
        nc, subject, push = self.conn.nc, self.subject(key[0]), self._inbox.push

        async def sub() -> Any:
            async def received(msg: Any) -> None:
                push((key, msg.subject, msg.data, msg.headers))

            handle = await nc.subscribe(subject, queue=key[1], cb=received)
            await nc.flush()  # the server has it: a publish that follows reaches it
            return handle

        return await self.conn.run(sub, "subscribe")

    def _forget(self, sub: Subscription) -> bool:
        if not self.index.remove(sub.pattern, sub, sub.queue):
            return False
        subs = self._by_actor.get(sub.ref, [])
        if sub in subs:
            subs.remove(sub)
        if not subs:
            self._by_actor.pop(sub.ref, None)
        key = (sub.pattern, sub.queue or "")
        same = self._by_key.get(key, [])
        if sub in same:
            same.remove(sub)
        if not same:
            self._by_key.pop(key, None)
            handle = self._nats_subs.pop(key, None)
            if handle is not None and not self.conn.closed:
                self.conn.bridge.soon(lambda: self.conn.bridge.loop.create_task(handle.unsubscribe()))
        return True

    def unsubscribe(self, sub: Subscription) -> None:
        if self._forget(sub):
            self.acked.unsubscribe(sub, delete=True)
            self.node.spawn_system(self._announce_quietly)

    def _actor_gone(self, ref: ActorRef) -> None:
        for sub in list(self._by_actor.get(ref, [])):
            if self._forget(sub):
                self.acked.unsubscribe(sub, delete=False)
        if not self._closed:
            self.node.spawn_system(self._announce_quietly)

    def messages(
        self, pattern: str, *, queue: str | None = None, buffer: int = 1000
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Message]]:
        """Subscribe for the duration of the block; yields a channel of :class:`Message`."""
        return forwarded(self, pattern, queue=queue, buffer=buffer)

    # ---- publishing ------------------------------------------------------------------------------------

    def validate(self, topic: str) -> None:
        if topic not in self._valid:
            validate_subject(topic)
            if len(self._valid) < 4096:
                self._valid.add(topic)

    def wire_headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        return {**headers, PUBLISHER: self.node.id} if headers else {PUBLISHER: self.node.id}

    async def publish(
        self,
        topic: str,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        ack: bool = False,
        ack_timeout: float = 5.0,
        max_deliveries: int = 5,
        middleware: Sequence[Middleware] | None = None,
    ) -> int:
        """Publish ``body`` on ``topic``; the number of deliveries made (acked with ``ack=True``).

        As the cluster's own broker: through ``middleware`` and the node's client chain (a
        traced node's ``publish`` span, whose context the message's headers carry to each
        delivery's ``process`` span), with what the request being handled propagates (its
        trace context), but never a token: subscribers do not see the publisher's."""
        if runs_chain(self.node, middleware):
            options = {"ack": ack, "ack_timeout": ack_timeout, "max_deliveries": max_deliveries}
            return await publish_through(self, middleware, topic, body, headers, options)
        if middleware is not APPLIED:
            headers = forward_auth(headers)
        if headers and AUTHORIZATION in headers:
            headers = {k: v for k, v in headers.items() if k != AUTHORIZATION}
        self.validate(topic)
        if ack:
            return await self.acked.publish(topic, body, headers, ack_timeout, max_deliveries)
        payload = self.codec.encode(body)
        await self._outbox.put(
            (self.subject(topic), payload, self.wire_headers(headers)), timeout=self.conn.options.timeout
        )
        return self.expected(topic)

    async def _send(self, batch: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
        """On the loop: publish a batch (nats-py buffers; its flusher writes)."""
        publish = self.conn.nc.publish
        for subject, payload, headers in batch:
            await publish(subject, payload, headers=headers)

    # ---- delivering ------------------------------------------------------------------------------------

    def _received(self, batch: list[_Arrival]) -> None:
        try:
            self._deliveries_send.send_nowait(batch)
        except trio.WouldBlock:
            self.dropped += len(batch)

    async def _deliver_loop(self) -> None:
        start = len(self.prefix) + 3  # "<prefix>.m."
        async for batch in self._deliveries:
            for key, subject, data, headers in batch:
                subs = self._by_key.get(key)
                if not subs:
                    continue  # unsubscribed since
                try:
                    headers = dict(headers or {})
                    publisher = headers.pop(PUBLISHER, "")
                    message = Message(subject[start:], self.codec.decode(data), headers, publisher)
                    if key[1]:  # NATS chose this node for the group: one member here
                        await tell(subs[next(self._rr) % len(subs)].ref, message)
                        self.delivered += 1
                    else:
                        for sub in list(subs):
                            await tell(sub.ref, message)
                            self.delivered += 1
                except Exception as exc:  # one bad message must not stop the others
                    log.warning("broker: dropping a message on %s: %s", subject, exc)
