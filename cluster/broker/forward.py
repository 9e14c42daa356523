"""A subscription read as a channel (``messages()`` of both brokers): an actor of the broker's
node subscribes and forwards what it receives into a bounded memory channel, for code that
handles messages in a task of its own rather than in an actor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from trimicro.actors import Actor, ActorRef

from .message import Message, Subscription


class _Forwarder(Actor):
    """Feeds a subscription into a memory channel."""

    def __init__(self, send: trio.MemorySendChannel[Message]) -> None:
        self.send = send

    async def on_message(self, msg: Message) -> None:
        await self.send.send(msg)


class Subscribing(Protocol):
    """What :func:`forwarded` needs of a broker."""

    @property
    def node(self) -> Any: ...

    async def subscribe(self, pattern: str, ref: ActorRef, *, queue: str | None = None) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...


@asynccontextmanager
async def forwarded(
    broker: Subscribing, pattern: str, *, queue: str | None, buffer: int
) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
    """Subscribe for the duration of the block; yields a channel of :class:`Message` holding at
    most ``buffer`` (a full channel holds the forwarder, and so the delivery, back)."""
    send, receive = trio.open_memory_channel[Message](buffer)
    ref = await broker.node.spawn(_Forwarder, send)
    sub = await broker.subscribe(pattern, ref, queue=queue)
    try:
        async with receive:
            yield receive
    finally:
        broker.unsubscribe(sub)
        with trio.CancelScope(shield=True):
            await broker.node.stop(ref)
