"""An HTTP client's subscription (``GET /api/subscribe/{pattern}``): a bounded buffer between the
broker and the client's socket, under the broker's slow-subscriber policy.

The SSE bridge sends one event at a time and waits for the socket to take it, so a client that
stops reading stops the bridge, and messages keep arriving. What happens to them is the
subscription's policy, with the names and meaning of the broker's own
(:data:`trimicro.cluster.broker.Policy`, docs/architecture.md), applied to this buffer of
``GatewayOptions.queue`` messages:

- ``"block"``: the gateway's subscriber actor
  waits for room, its mailbox of :data:`FEED_MAILBOX` messages fills, and then the broker's
  ``"block"`` holds the publishers back, a publish on this node waiting for room, one from
  another node held at the link (``pubsub.hold``): a slow browser slows the publishers, as a
  slow actor does, and loses nothing.
- ``"drop_oldest"`` (the gateway's default): the oldest waiting message makes room; no
  publisher ever waits for this client. The client learns how many it lost from an
  ``event: dropped`` (``{"dropped": n}``) before the next message, and each lost message is a
  dead letter on the node (``"dropped-oldest"``), as the broker's drops are.
- ``"drop_subscriber"``: a full buffer ends the subscription: it leaves the broker at once, the
  client gets what was buffered, then an ``error`` event (429) and the end of the stream.

A client asks with ``?policy=``; ``GatewayOptions.subscriber_policy`` (``trimicro api
--subscriber-policy``) is the default, and a gateway whose default is not ``"block"`` refuses
``"block"`` (400): its operator has decided that HTTP clients do not hold publishers back.

Why ``"drop_oldest"`` by default, where the broker's own subscribers block: an actor that
subscribes is the cluster's own code, written to keep up; an HTTP subscriber is a browser tab
that the user may send to the background (browsers throttle and freeze those), a phone on a
bad network, or anyone the topic rules let subscribe. Under ``"block"`` any one of them holds
every publisher of its topics, on every node (``pubsub.hold`` at the links), for as long as it
reads slowly: one forgotten tab would stall the topic for the whole cluster. Live views want
the newest messages anyway, and what a client missed is not silent (``event: dropped``, dead
letters). An operator whose HTTP subscribers are trusted consumers that must lose nothing
starts the gateway with ``--subscriber-policy block``. Memory per subscriber: at most ``queue`` messages here,
:data:`FEED_MAILBOX` in the actor's mailbox (``"block"`` only), and the kernel's socket buffers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, get_args

import attrs
import trio

from trimicro.actors import Actor, BadRequest, TooManyRequests, bounded

from ..broker import Message, Policy, Subscription

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["FEED_MAILBOX", "Dropped", "SubscriberBuffer", "choose_policy", "subscribed"]

#: Mailbox of the actor that feeds one HTTP subscriber's buffer: past it the broker's policy
#: applies to the actor itself (only reached under ``"block"``, the other policies never wait).
FEED_MAILBOX = 4
_POLICIES: tuple[str, ...] = get_args(Policy)


@attrs.frozen
class Dropped:
    """``count`` messages were dropped here since the client's last event (``"drop_oldest"``)."""

    count: int


def choose_policy(asked: str | None, default: str) -> Policy:
    """The policy for a subscription that asked for ``asked`` (``?policy=``), on a gateway whose
    default is ``default``; 400 for an unknown one, or for ``"block"`` where it is not the default."""
    policy = asked or default
    if policy not in _POLICIES:
        raise BadRequest(f"unknown policy {policy!r}; use one of {', '.join(_POLICIES)}", id="gateway")
    if policy == "block" and default != "block":
        raise BadRequest("this gateway does not let HTTP subscribers hold publishers back", id="gateway")
    return policy  # type: ignore[return-value]  # checked against Policy's values above


class SubscriberBuffer:
    """At most ``size`` messages waiting for one client, under ``policy`` (see the module).

    ``dead_letter(message, reason)`` receives each message dropped here; ``overflowed()`` is
    called once when ``"drop_subscriber"`` ends the subscription (the caller unsubscribes).
    """

    def __init__(
        self,
        size: int,
        policy: Policy,
        dead_letter: Callable[[Message, str], None],
        overflowed: Callable[[], None],
    ) -> None:
        self.size = max(1, size)
        self.policy = policy
        self._items: deque[Message] = deque()
        self._dropped = 0
        self._ended = False  # "drop_subscriber" hit: what is buffered is the last
        self._closed = False  # the client has gone
        self._dead_letter = dead_letter
        self._overflowed = overflowed
        self._room = trio.lowlevel.ParkingLot()
        self._ready = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, message: Message) -> None:
        """Add ``message``; under ``"block"`` wait for room (the only policy that waits)."""
        while self.policy == "block" and len(self._items) >= self.size and not self._closed:
            await self._room.park()
        if self._closed:
            return  # the client has gone (what it left unread goes with it, as a channel's would)
        if self._ended or (len(self._items) >= self.size and self.policy == "drop_subscriber"):
            # Ending: this one and any still in the actor's mailbox are dead letters.
            self._dead_letter(message, "dropped-subscriber")
            if not self._ended:
                self._ended = True
                self._overflowed()
                self._ready.unpark_all()
            return
        if len(self._items) >= self.size:
            self._dead_letter(self._items.popleft(), "dropped-oldest")
            self._dropped += 1
        self._items.append(message)
        self._ready.unpark_all()

    async def events(self) -> AsyncIterator[Message | Dropped]:
        """What the client is sent, in order; raises 429 after the last buffered message once
        ``"drop_subscriber"`` has ended the subscription."""
        while True:
            if self._dropped:
                count, self._dropped = self._dropped, 0
                yield Dropped(count)
            elif self._items:
                message = self._items.popleft()
                self._room.unpark()
                yield message
            elif self._ended:
                raise TooManyRequests(
                    f"the subscriber fell more than {self.size} messages behind", id="gateway"
                )
            else:
                await self._ready.park()

    def close(self) -> None:
        """The client has gone: wake a waiting ``put`` and take nothing more."""
        self._closed = True
        self._items.clear()
        self._room.unpark_all()


class _Feed(Actor):
    """Subscribed on the gateway's node for one HTTP client; puts what it receives in the buffer."""

    mailbox = bounded(FEED_MAILBOX)

    def __init__(self, buffer: SubscriberBuffer) -> None:
        self.buffer = buffer

    async def on_message(self, msg: Message) -> None:
        await self.buffer.put(msg)


@asynccontextmanager
async def subscribed(
    cluster: Cluster, pattern: str, *, queue: str | None, size: int, policy: Policy
) -> AsyncIterator[SubscriberBuffer]:
    """Subscribe ``pattern`` (in queue group ``queue``) for the duration of the block; yields
    the buffer the client's messages wait in."""
    node, pubsub = cluster.node, cluster.pubsub
    subscription: list[Subscription] = []

    def overflowed() -> None:
        for sub in subscription:
            pubsub.unsubscribe(sub)

    buffer = SubscriberBuffer(
        size, policy, lambda msg, reason: node.dead_letter(ref, msg, reason, None), overflowed
    )
    ref = await node.spawn(_Feed, buffer)
    try:
        subscription.append(await cluster.subscribe(pattern, ref, queue=queue))
        yield buffer
    finally:
        overflowed()  # the broker's unsubscribe is idempotent
        buffer.close()
        with trio.CancelScope(shield=True):
            await node.stop(ref)
