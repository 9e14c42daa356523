"""Messages from other nodes waiting for a full ``"block"`` subscriber (docs/architecture.md, pub/sub).

Why: one link carries everything between two nodes, and its reader delivers the pub/sub messages
it reads. It used to wait for room whenever a message met a ``"block"`` subscriber whose mailbox
was full, which is backpressure on the whole link: one slow subscriber stalled every frame behind
it, asks to other actors of the node included (the defect that :mod:`trimicro.actors.remote.tellflow`
fixed for tells).

Now such a message waits here instead, in a FIFO per (link, subscription) that its own task moves
into the mailbox as room appears, and the reader goes on at once. Later messages from that link
for that subscription queue behind it even if the mailbox has room meanwhile, so each subscriber
still sees one publisher's messages in order.

The publisher still slows to the subscriber's pace, as it did, but without the link: once a
queue holds ``HOLD_AT`` messages, the publishing node is asked to hold back its publishes on
topics matching that subscription's pattern (SYSTEM ``pubsub.hold``, body ``[id, pattern]``):
its ``publish`` calls on such topics to this node wait, as they would for a full local "block"
subscriber, until ``pubsub.release`` (body ``[id]``), sent once the queue is down to a quarter
of that. Everything else on the link (asks, tells, other topics) goes on meanwhile.

A peer that ignores the hold (an older node: an unknown SYSTEM operation only proves the peer
alive) is stopped by the link's backlog budget, shared with held tells (``Link.backlog_added``,
``BACKLOG_BYTES``): past it the reader waits for the backlogs to drain, which is TCP
backpressure again, for that link only. Memory stays bounded either way.

Nothing is dropped silently: what the subscriber cannot take any more (its actor stopped, it
unsubscribed, the node is stopping) goes to dead letters with the reason. A message that already
arrived is still delivered if its link closes meanwhile (it is on this node; only the budget it
counted against is gone).

The common case (room in every mailbox, nothing waiting) never reaches this module: the pub/sub
fast path costs one truthiness test of :attr:`Held.by_link` per frame.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trimicro.actors.lowlevel import DEAD, STOPPING, Cell, Link, Mail
from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.logs import get_logger

from .topics import matches, validate_pattern

__all__ = ["HOLD_AT", "MAX_HOLDS", "OVERHEAD", "Held", "Holds"]

log = get_logger(__package__)

#: Estimated bytes of one waiting message beyond its encoded body (the Message, its Mail,
#: the deque slot).
OVERHEAD = 256
#: Messages waiting for one subscription from one link at which its publisher is asked to hold
#: back (released at a quarter of that).
HOLD_AT = 256
#: Holds one peer may have on this node's publishes at once; more are ignored (that peer's link
#: budget still bounds its memory).
MAX_HOLDS = 1024
#: Longest a held publish waits before it checks again that its link is still open.
RECHECK = 0.5


def _system(link: Link, op: str, body: bytes) -> None:
    link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, None, None, op, body=body)))


class _Queue:
    """The messages from one link for one subscription, oldest first, with their sizes."""

    __slots__ = ("cell", "entries", "hold")

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.entries: deque[tuple[Mail, int]] = deque()
        #: The id of the hold asked of the publisher for this queue (0: none).
        self.hold = 0


class Held:
    """The ``"block"`` subscriptions that have messages from a link waiting, per link.

    ``subscribed(sub)`` tells whether a subscription still stands; the drain checks it before
    each message, so one that unsubscribed gets no more (they go to dead letters).
    """

    def __init__(self, node: Any, codec: Codec, subscribed: Callable[[Any], bool]) -> None:
        self.node = node
        self.codec = codec
        self.subscribed = subscribed
        self._ids = itertools.count(1)
        #: link -> subscription -> its queue; empty (falsy) in the common case.
        self.by_link: dict[Link, dict[Any, _Queue]] = {}

    def queue(self, link: Link, sub: Any, cell: Cell, item: Mail, size: int) -> Awaitable[None] | None:
        """Queue ``item`` (a mailbox item carrying a Message) for ``sub`` behind what waits
        already; ``size`` is its estimated bytes. Returns what the link's reader must await when
        the link's backlogs are past their budget, else None."""
        queues = self.by_link.get(link)
        if queues is None:
            queues = self.by_link[link] = {}
        q = queues.get(sub)
        if q is None:
            q = queues[sub] = _Queue(cell)
            self.node.spawn_system(self._drain, link, sub, q)
        q.entries.append((item, size))
        if not q.hold and len(q.entries) >= HOLD_AT and not link.closed:
            q.hold = next(self._ids)
            _system(link, "pubsub.hold", self.codec.encode([q.hold, sub.pattern]))
        return link.backlog_added(size)

    def _release(self, link: Link, q: _Queue) -> None:
        if q.hold:
            if not link.closed:
                _system(link, "pubsub.release", self.codec.encode([q.hold]))
            q.hold = 0

    async def _drain(self, link: Link, sub: Any, q: _Queue) -> None:
        """Move ``q`` into the mailbox as room appears; the queue ends (and the fast path is
        back for that subscription) once it is empty. Between the last check of ``entries`` and
        the removal there is no checkpoint, so nothing queued can be left behind."""
        cell, entries = q.cell, q.entries
        reason = "stopped"
        try:
            while entries:
                if cell.status >= STOPPING:
                    return
                if not self.subscribed(sub):
                    reason = "unsubscribed"
                    return
                item, size = entries[0]
                status = await cell.put(item)
                if status == DEAD:
                    return
                entries.popleft()
                link.backlog_drained(size)
                if q.hold and len(entries) <= HOLD_AT // 4:
                    self._release(link, q)
        finally:
            self._release(link, q)
            queues = self.by_link.get(link)
            if queues is not None and queues.get(sub) is q:
                del queues[sub]
                if not queues:
                    del self.by_link[link]
            while entries:
                item, size = entries.popleft()
                msg = item.msg
                self.node.dead_letter(cell.ref, msg, reason, None)
                link.backlog_drained(size)


class Holds:
    """The publishing side: holds peers asked for (``pubsub.hold``), per link; a publish to that
    peer on a topic matching a held pattern waits in :meth:`wait` until the hold is released or
    the link closes (a hold never outlives its link)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        #: link -> hold id -> pattern; empty (falsy) in the common case.
        self.by_link: dict[Link, dict[int, str]] = {}
        self._released: dict[Link, trio.Event] = {}

    def on_hold(self, link: Link, env: Envelope) -> None:
        try:
            hold_id, pattern = self.codec.decode(env.body)
            if type(hold_id) is not int or not isinstance(pattern, str):
                raise ValueError("bad hold")
            validate_pattern(pattern)
        except (MicroError, ValueError, TypeError) as exc:
            log.debug("bad pubsub.hold from %s: %s", link.peer.node_id, exc)
            return
        if link.closed:
            return
        for old in [k for k in self.by_link if k.closed]:  # holds die with their link
            self._drop(old)
        holds = self.by_link.setdefault(link, {})
        if len(holds) < MAX_HOLDS:
            holds[hold_id] = pattern

    def on_release(self, link: Link, env: Envelope) -> None:
        try:
            (hold_id,) = self.codec.decode(env.body)
        except (MicroError, ValueError, TypeError):
            return
        holds = self.by_link.get(link)
        if holds is not None and holds.pop(hold_id, None) is not None:
            if not holds:
                del self.by_link[link]
            released = self._released.pop(link, None)
            if released is not None:
                released.set()

    def _drop(self, link: Link) -> None:
        self.by_link.pop(link, None)
        released = self._released.pop(link, None)
        if released is not None:
            released.set()

    async def wait(self, link: Link, topic: str) -> None:
        """Wait while a hold of ``link`` covers ``topic`` (the subscriber there is slow)."""
        while True:
            holds = self.by_link.get(link)
            if holds is None:
                return
            if link.closed:
                self._drop(link)
                return
            if not any(matches(pattern, topic) for pattern in holds.values()):
                return
            released = self._released.get(link)
            if released is None:
                released = self._released[link] = trio.Event()
            with trio.move_on_after(RECHECK):
                await released.wait()
