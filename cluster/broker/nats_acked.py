"""Acknowledged publishes of the NATS broker, on JetStream (``publish(..., ack=True)``).

* The stream (``stream=``, default ``TRIMICRO``) stores ``<prefix>.a.>`` on disk with interest
  retention: a message is kept until every consumer that wanted it acked it (bounded by
  :data:`MAX_AGE` and :data:`MAX_BYTES`). ``publish`` returns only after the server stored it
  (its PubAck): an acknowledged publish survives a server restart.
* Each subscription reads through a durable pull consumer filtered on its pattern: one per
  queue group (its members on every node share it, so the group gets each message once) and
  one per plain subscriber, named after (node id, pattern, actor path): a node that restarts
  with the same actor resumes where it stopped. A consumer nobody reads for
  :data:`INACTIVE` is removed by the server.
* A delivery is an ``ask`` of the subscriber with the publisher's ``ack_timeout``: a reply
  acks, an error or the deadline naks (the server redelivers at once, to whichever member of a
  group asks first). The server's ``ack_wait`` redelivers what a crashed subscriber held. The
  delivery count is JetStream's; at ``max_deliveries`` (a header of the message) the message
  is published on ``$dead.<topic>`` and terminated.
* The publisher learns the outcome through a reply subject (a header): each delivery answers
  "ack" or "dead", and ``publish`` returns the number of acks once every expected delivery
  answered (as many as the interest it knows: plain subscribers and groups), or its deadline
  (``ack_timeout * max_deliveries``) passed.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from trimicro.actors import ask
from trimicro.mailbox.errors import BadRequest, MicroError
from trimicro.mailbox.logs import get_logger

from ..natsio import Inbox, NatsConnection, Outbox
from .message import DEAD_LETTER_PREFIX, Message, Subscription

__all__ = ["JetStreamAcks"]

log = get_logger(__package__)

REPLY = "Trimicro-Reply"
ACK_TIMEOUT = "Trimicro-Ack-Timeout"
MAX_DELIVERIES = "Trimicro-Max-Deliveries"
_OWN_HEADERS = (REPLY, ACK_TIMEOUT, MAX_DELIVERIES)

MAX_AGE = 7 * 24 * 3600.0  # a message nobody acked is dropped after a week
MAX_BYTES = 1 << 30
INACTIVE = 24 * 3600.0  # a durable consumer nobody reads for a day is removed
#: Messages fetched ahead per subscription (handed to trio, not yet acked).
IN_FLIGHT = 64
FETCH_WAIT = 5.0


class Broker(Protocol):
    """What the acknowledged mode needs of its broker (:class:`~.nats.NatsBroker`)."""

    prefix: str
    conn: NatsConnection
    node: Any
    codec: Any
    #: Deliveries made, and those JetStream made again (the node's metrics read them).
    delivered: int
    redelivered: int

    def subject(self, topic: str, mode: str = "m") -> str: ...

    def wire_headers(self, headers: dict[str, str] | None) -> dict[str, str]: ...

    def expected(self, topic: str) -> int: ...

    async def publish(self, topic: str, body: Any, *, headers: dict[str, str] | None = None) -> int: ...


@attrs.define
class _Pending:
    expected: int
    acks: int = 0
    answers: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class _Consumer:
    """One subscription's durable consumer: its pump on the loop, its handler in trio."""

    durable: str
    group: bool
    credits: _Credits
    receive: trio.MemoryReceiveChannel[Any] | None = None
    pump: Any = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class JetStreamAcks:
    """The acknowledged mode of :class:`~trimicro.cluster.broker.nats.NatsBroker` (module docstring)."""

    def __init__(self, broker: Broker, *, stream: str, ack_wait: float) -> None:
        self.broker = broker
        self.conn = broker.conn
        self.stream = stream
        self.ack_wait = ack_wait
        self._inbox_subject = ""
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._answers: Inbox[tuple[str, bytes]] = Inbox(self.conn.bridge, self._answered)
        self._acts: Outbox[Callable[[], Awaitable[Any]]] = Outbox(self.conn.bridge, self._act)
        self._consumers: dict[Subscription, _Consumer] = {}
        self._nursery: trio.Nursery | None = None
        self._waiting: list[tuple[Subscription, _Consumer, trio.MemoryReceiveChannel[Any]]] = []

    async def start(self) -> None:
        from nats.js.api import RetentionPolicy, StorageType, StreamConfig

        conn, prefix = self.conn, self.broker.prefix
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{prefix}.a.>"],
            retention=RetentionPolicy.INTEREST,
            storage=StorageType.FILE,
            max_age=MAX_AGE,
            max_bytes=MAX_BYTES,
            duplicate_window=120.0,
        )
        push = self._answers.push

        async def prepare() -> str:
            import nats.js.errors

            try:
                await conn.js.add_stream(config)
            except nats.js.errors.BadRequestError:  # it exists with other limits: keep them
                await conn.js.stream_info(self.stream)
            inbox = conn.nc.new_inbox()

            async def answered(msg: Any) -> None:
                push((msg.subject, msg.data))

            await conn.nc.subscribe(f"{inbox}.*", cb=answered)
            return str(inbox)

        self._inbox_subject = await conn.run(prepare, "prepare stream")

    async def serve(self) -> None:
        """The handlers of the subscriptions' deliveries, until the broker closes."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for entry in self._waiting:
                nursery.start_soon(self._handle_all, *entry)
            self._waiting.clear()
            await trio.sleep_forever()

    async def stop(self) -> None:
        """Stop fetching before the node withdraws its interest: a pull request left open would
        take messages published meanwhile, which the server would redeliver only after
        ``ack_wait``. What was fetched and not handled is nacked (redelivered at once)."""
        consumers = list(self._consumers.values())
        self._consumers.clear()
        pumps = [c.pump for c in consumers if c.pump is not None]
        unhandled = []
        for consumer in consumers:
            consumer.scope.cancel()
            if consumer.receive is not None:
                while True:
                    try:
                        unhandled.append(consumer.receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                        break
        if not self.conn.bridge.opened or self.conn.closed:
            return
        nc = self.conn.nc

        async def stop_all() -> None:
            import asyncio

            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for msg in unhandled:
                await msg.nak()
            await nc.flush()

        await self.conn.run(stop_all, "stop consumers")

    # ---- subscribing ---------------------------------------------------------------------------------

    async def subscribe(self, sub: Subscription) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        broker, conn = self.broker, self.conn
        if sub.queue:
            durable = _name(broker.prefix, "q", sub.pattern, sub.queue)
        else:
            durable = _name(broker.prefix, "s", broker.node.id, sub.pattern, sub.ref.path)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=broker.subject(sub.pattern, "a"),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            deliver_policy=DeliverPolicy.NEW,
            inactive_threshold=INACTIVE,
        )
        send, receive = trio.open_memory_channel[Any](IN_FLIGHT)
        consumer = _Consumer(durable, bool(sub.queue), _Credits(IN_FLIGHT), receive)
        inbox: Inbox[Any] = Inbox(conn.bridge, lambda batch: _feed(send, batch), limit=IN_FLIGHT)
        self._consumers[sub] = consumer
        consumer.pump = await conn.run(
            lambda: self._start_pump(config, inbox.push, consumer.credits), "subscribe"
        )
        if self._nursery is not None:
            self._nursery.start_soon(self._handle_all, sub, consumer, receive)
        else:
            self._waiting.append((sub, consumer, receive))

    async def _start_pump(self, config: Any, push: Callable[[Any], None], credits: _Credits) -> Any:
        import asyncio

        import nats.errors

        js = self.conn.js
        try:
            await js.add_consumer(self.stream, config)
        except Exception as exc:  # it exists with another config (an older run): bind to it
            log.debug("broker: consumer %s: %s", config.durable_name, exc)
        psub = await js.pull_subscribe_bind(durable=config.durable_name, stream=self.stream)

        async def pump() -> None:
            try:
                while True:
                    room = await credits.take()
                    try:
                        msgs = await psub.fetch(batch=room, timeout=FETCH_WAIT)
                    except (TimeoutError, nats.errors.TimeoutError):
                        msgs = []
                    except nats.errors.Error as exc:  # disconnected: try again after a pause
                        log.debug("broker: fetch %s: %s", config.durable_name, exc)
                        msgs = []
                        await asyncio.sleep(self.conn.options.reconnect_wait)
                    credits.give(room - len(msgs))
                    for msg in msgs:
                        push(msg)
            finally:
                try:
                    await psub.unsubscribe()
                except Exception as exc:  # the connection is gone
                    log.debug("broker: unsubscribe %s: %s", config.durable_name, exc)

        return asyncio.ensure_future(pump())

    def unsubscribe(self, sub: Subscription, *, delete: bool) -> None:
        """Stop reading for ``sub``; ``delete`` (an explicit unsubscribe of a plain subscriber)
        also removes its durable consumer: nothing more is kept for it."""
        consumer = self._consumers.pop(sub, None)
        if consumer is None:
            return
        consumer.scope.cancel()
        if self.conn.closed or not self.conn.bridge.opened:
            return
        pump, js, stream = consumer.pump, self.conn.js, self.stream
        remove = delete and not consumer.group

        async def stop() -> None:
            if pump is not None:
                pump.cancel()
            if remove:
                await js.delete_consumer(stream, consumer.durable)

        self.conn.bridge.soon(lambda: self.conn.bridge.loop.create_task(_quietly(stop())))

    # ---- delivering -------------------------------------------------------------------------------------

    async def _handle_all(
        self, sub: Subscription, consumer: _Consumer, receive: trio.MemoryReceiveChannel[Any]
    ) -> None:
        with consumer.scope:
            async for msg in receive:
                try:
                    await self._handle(sub, msg)
                finally:
                    self.conn.bridge.soon(consumer.credits.give, 1)

    async def _handle(self, sub: Subscription, msg: Any) -> None:
        broker = self.broker
        headers = dict(msg.headers or {})
        reply = headers.get(REPLY, "")
        limit = int(headers.get(MAX_DELIVERIES, "5"))
        timeout = float(headers.get(ACK_TIMEOUT, "5"))
        delivery = int(msg.metadata.num_delivered)
        topic = msg.subject[len(broker.prefix) + 3 :]
        publisher = headers.pop("Trimicro-Publisher", "")
        for name in _OWN_HEADERS:
            headers.pop(name, None)
        body = broker.codec.decode(msg.data)
        if delivery <= limit:
            broker.delivered += 1
            broker.redelivered += delivery > 1
            try:
                await ask(sub.ref, Message(topic, body, headers, publisher, delivery), timeout=timeout)
            except (MicroError, Exception) as exc:
                log.debug("broker: delivery %d of %s to %s failed: %s", delivery, topic, sub.ref, exc)
            else:
                await self._acts.put(msg.ack, timeout=self.conn.options.timeout)
                await self._answer(reply, b"ack")
                return
            if delivery < limit:
                await self._acts.put(msg.nak, timeout=self.conn.options.timeout)
                return
        await broker.publish(DEAD_LETTER_PREFIX + topic, body, headers=headers)
        await self._acts.put(msg.term, timeout=self.conn.options.timeout)
        await self._answer(reply, b"dead")

    async def _answer(self, reply: str, outcome: bytes) -> None:
        if reply:
            nc = self.conn.nc
            await self._acts.put(lambda: nc.publish(reply, outcome), timeout=self.conn.options.timeout)

    @staticmethod
    async def _act(batch: list[Callable[[], Awaitable[Any]]]) -> None:
        for act in batch:
            try:
                await act()
            except Exception as exc:  # an ack lost with the connection: the server redelivers
                log.debug("broker: ack: %s", exc)

    # ---- publishing -----------------------------------------------------------------------------------

    def _answered(self, batch: list[tuple[str, bytes]]) -> None:
        for subject, outcome in batch:
            pending = self._pending.get(subject.rpartition(".")[2])
            if pending is None:
                continue
            pending.answers += 1
            pending.acks += outcome == b"ack"
            if pending.answers >= pending.expected:
                pending.done.set()

    async def publish(
        self, topic: str, body: Any, headers: dict[str, str] | None, ack_timeout: float, max_deliveries: int
    ) -> int:
        if not ack_timeout > 0 or max_deliveries < 1:
            raise BadRequest("ack_timeout must be > 0 and max_deliveries >= 1")
        broker, conn = self.broker, self.conn
        await conn.connect()
        # The answers' inbox is this connection's own: a counter names each publish in it.
        msg_id = str(next(self._ids))
        wire = broker.wire_headers(headers)
        wire.update(
            {
                REPLY: f"{self._inbox_subject}.{msg_id}",
                ACK_TIMEOUT: repr(ack_timeout),
                MAX_DELIVERIES: str(max_deliveries),
            }
        )
        subject, payload = broker.subject(topic, "a"), broker.codec.encode(body)
        pending = self._pending[msg_id] = _Pending(broker.expected(topic))
        try:
            await conn.requests.js_publish(subject, payload, wire)
            if pending.expected:
                with trio.move_on_after(ack_timeout * max_deliveries + conn.options.timeout):
                    await pending.done.wait()
            return pending.acks
        finally:
            del self._pending[msg_id]


class _Credits:
    """How many more messages a pump may fetch (on the loop; trio gives back through the bridge)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._event: Any = None

    async def take(self) -> int:
        import asyncio

        while self.n <= 0:
            self._event = asyncio.Event()
            await self._event.wait()
        n, self.n = self.n, 0
        return n

    def give(self, n: int) -> None:
        self.n += n
        if n > 0 and self._event is not None:
            self._event.set()


def _feed(send: trio.MemorySendChannel[Any], batch: list[Any]) -> None:
    for msg in batch:
        try:
            send.send_nowait(msg)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            log.warning("broker: a fetched message found no room; the server will redeliver it")


def _name(*parts: str) -> str:
    """A consumer name for ``parts`` (names allow no dots or wildcards): a hash."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception as exc:  # cleaning up after a subscription: nothing more to do
        log.debug("broker: %s", exc)
