"""The dead-letter stream: where undeliverable messages go, observable by tests and users."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trimicro.actors.messages import DeadLetter
from trimicro.mailbox.logs import get_logger

from .metrics import bump

__all__ = ["DeadLetters"]

log = get_logger(__package__)


class DeadLetters:
    """Counts dead letters and fans them out to subscribers with bounded buffers.

    A subscriber that does not keep up loses the newest letters (counted in ``dropped``) rather
    than slowing the runtime or growing memory: dead letters are diagnostics, not data.
    """

    def __init__(self) -> None:
        self.count = 0
        #: The count by reason (its detail cut off: ``"unreachable: ..."`` is ``"unreachable"``).
        self.reasons: dict[str, int] = {}
        self.dropped = 0
        self._subscribers: list[trio.MemorySendChannel[DeadLetter]] = []

    def publish(self, letter: DeadLetter) -> None:
        self.count += 1
        bump(self.reasons, letter.reason)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dead letter to %s (%s): %r", letter.recipient, letter.reason, letter.message)
        for ch in self._subscribers:
            try:
                ch.send_nowait(letter)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # a subscriber leaving (its block is closing)

    def add(self, n: int, reason: str) -> None:
        """Count ``n`` letters nobody sees (see :meth:`observed`) without building them."""
        self.count += n
        bump(self.reasons, reason, n)

    def observed(self) -> bool:
        """Whether anyone sees the letters themselves (a subscriber, or debug logging): if not,
        a caller with many at once may just add them to ``count``."""
        return bool(self._subscribers) or log.isEnabledFor(logging.DEBUG)

    @asynccontextmanager
    async def subscribe(self, buffer: int = 1000) -> AsyncIterator[trio.MemoryReceiveChannel[DeadLetter]]:
        """Receive dead letters published while the block is open (at most ``buffer`` queued)."""
        send, receive = trio.open_memory_channel[DeadLetter](buffer)
        self._subscribers.append(send)
        try:
            yield receive
        finally:
            self._subscribers.remove(send)  # before any checkpoint: no publish meets it closed
            send.close()
            receive.close()
