"""Flow control of tells per target actor between two nodes (docs/protocol.md §4.6).

Why: one link carries everything between two nodes. Its reader used to wait for room whenever a
tell met a full mailbox, which is backpressure on the whole link: one slow actor stalled every
message behind it, and asks to other actors of that node timed out behind a flood of tells.
The backpressure is now per actor, with the credit that streams use (§4.3):

- The reader still waits for room, but at most ``HOLD_AFTER`` per frame: an actor that is full
  for a moment (a fast consumer behind a burst) drains within microseconds, and its tells go on
  as before, at no extra cost.
- Past that, the actor is slow. The rest of the frame's tells to it, and every later tell (or
  request) to it from that link, wait in a :class:`Backlog` whose own task moves them into the
  mailbox as room appears, and the sending node is asked to hold its tells to that actor back
  (SYSTEM ``tells.hold``, with a new id). The sender answers ``tells.held``: every tell to that
  actor it writes after that uses a credit, which the backlog grants (STREAM_CREDIT with the
  hold's id) as it drains, and its producers wait in ``tell`` meanwhile, as they would for a
  full local mailbox. A fast producer slows to the consumer's pace, and the backlog holds at most
  ``TELL_WINDOW`` tells and ``HOLD_BYTES`` (estimated: credit is sized by the average tell, at
  least one), or what was already on its way when the hold was sent if more.
- Once the backlog has stayed empty for ``RELEASE_IDLE``, the hold ends (CANCEL with its id).

So the common case (room in the mailbox) costs one truthiness test per frame on the receiving
side (``Link.backlogs``) and one per tell on the sending side (``Link.held``). Peers whose hello
does not list ``tells.hold`` would not hold back: for them the reader waits for room as long as
it takes, as before. What a compliant sender sends before it hears of a hold (its send queue,
up to OUT_HIGH_WATER, and the socket buffers) is bounded but may be megabytes: each backlog may
take ``FREE_BYTES`` of it, and the link's backlogs ``BACKLOG_LIMIT`` in all. A peer that does
not hold back although it said it would (more than ``FREE_BYTES`` before ``tells.held``, or a
tell beyond its credit after it: a protocol error, §4.6) is treated from then on as a peer that
does not hold back: past ``BACKLOG_BYTES`` of backlogs the reader waits for them to drain (TCP
backpressure again, for that peer's link only). No tell is dropped: each reaches the mailbox,
or dead letters on this node if the actor stops (or the node does) first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable
from typing import Any

import trio

from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import MicroError, ServiceUnavailable
from trimicro.mailbox.refs import ref_binder

from ..cell import DEAD, FULL, OK, STOPPING, Cell
from ..mail import Mail
from ..streams import Stream, StreamOps
from .batching import _NO_BODIES, _Tells, _tells_of
from .outbox import Outbox, RemoteStreamOps

__all__ = [
    "BACKLOG_BYTES",
    "BACKLOG_LIMIT",
    "FREE_BYTES",
    "HOLD_AFTER",
    "HOLD_BYTES",
    "MAX_WAITING_ASKS",
    "RELEASE_IDLE",
    "TELL_WINDOW",
    "Backlog",
    "TellFlow",
    "on_held",
    "on_hold",
]

#: Longest the reader of a link waits for room in one actor's mailbox per frame before it holds
#: that actor's tells back (every other message on the link waits meanwhile).
HOLD_AFTER = 0.002
#: Tells a held sender may have on their way to one actor (its credit window).
TELL_WINDOW = 1024
#: How long a backlog stays empty before the hold ends.
RELEASE_IDLE = 0.5
#: Bytes (estimated) of credited tells a backlog lets a held sender have on their way (with
#: ``TELL_WINDOW``: big tells get fewer credits, at least one at a time).
HOLD_BYTES = 1024 * 1024
#: Bytes (estimated) a backlog takes before the sender said it holds its tells: what it wrote
#: before it heard of the hold (its send queue, at most OUT_HIGH_WATER, 4 MiB, and the socket
#: buffers on both sides, a few MiB each). More is a sender that does not hold back.
FREE_BYTES = 16 * 1024 * 1024
#: Bytes (estimated) in the backlogs of one link beyond which its reader waits for them to
#: drain: for a peer shown not to hold back (see above) ...
BACKLOG_BYTES = 8 * 1024 * 1024
#: ... and for any peer (several holds that begin together each take what came freely).
BACKLOG_LIMIT = 64 * 1024 * 1024
#: Requests from one link that may wait in its backlogs (behind tells); more are refused with
#: 429. They count until they leave the backlog, even once over (expired or cancelled).
MAX_WAITING_ASKS = 1024
#: Estimated bytes of one waiting tell beyond its body (a bytes object, a list slot, its share
#: of the :class:`Mail`).
TELL_OVERHEAD = 64


class _HoldOps:
    """Stream operations of a hold on the sending side: a hold is only a credit account (the
    tells themselves leave as TELL frames), so it sends nothing of its own."""

    __slots__ = ()

    async def data(self, item: Any) -> None:
        pass

    def credit(self, n: int) -> None:
        pass

    def close(self, error: MicroError | None) -> None:
        pass

    def cancel(self) -> None:
        pass


HOLD_OPS: StreamOps = _HoldOps()


def on_hold(link: TellFlow, env: Envelope, max_streams: int) -> None:
    """The peer (the receiving side) asks to hold our tells to one of its actors back: those to
    that actor's path wait for its credit from now on, in a send-only Stream that is the hold's
    credit account (STREAM_CREDIT with the hold's id adds to it, CANCEL ends it, as for any
    stream on the link), and ``tells.held`` tells the peer from which frame on they use it. A
    hold the peer cannot mean (id 0, a bad or used id, no target) is ignored (a CANCEL with that
    id could end a live exchange); one we refuse (a second one for the path: the peer ends the
    first before it asks again; more than ``max_streams``) is answered with CANCEL: the peer then
    takes our tells as they come, at worst by stopping to read."""
    corr, target = env.corr, env.target
    streams, held = link.streams, link.held
    if (
        target is None
        or not corr
        or corr % 2 != (0 if link.initiator else 1)
        or corr in streams
        or corr in link.inbound
    ):
        return
    if target.path in held or len(streams) >= max_streams:
        link.push(encode_envelope(Envelope(Kind.CANCEL, corr)))
        return
    path = target.path
    hold = Stream(1)
    hold.ops = HOLD_OPS

    def done(_s: Stream) -> None:
        streams.pop(corr, None)
        if held.get(path) is hold:
            del held[path]

    hold.on_done = done
    streams[corr] = held[path] = hold
    link.push(encode_envelope(Envelope(Kind.SYSTEM, corr, target, None, "tells.held")))


def on_held(link: TellFlow, env: Envelope) -> None:
    """The peer holds its tells to one of our actors from this frame on (``tells.held``): the
    backlog counts each later one against the credit it granted."""
    try:
        cell = link.remoting.local_cell(env.target)
    except MicroError:
        return
    backlog = link.backlogs.get(cell)
    if backlog is not None and backlog.corr == env.corr:
        backlog.credited = True
        backlog.grant()  # the first credit (none at all when what came freely fills the window)


def _undelivered(cell: Cell, item: Mail) -> None:
    """A tell or request from the backlog that the actor stopped before taking: a dead letter,
    or 503 for the request's caller."""
    msg, reply, sender = item.msg, item.reply, item.sender
    if reply is None:
        cell.node.dead_letter(cell.ref, msg, "stopped", sender)
    else:
        reply.fail(ServiceUnavailable(f"actor {cell.path} stopped", id=cell.path))


async def _set_when(event: trio.Event, then: trio.Event) -> None:
    await event.wait()
    then.set()


class Backlog:
    """Tells from one link to one local actor waiting, in order, for room in its mailbox.

    Each entry is ``(item, tells, start, size)``: ``item`` a tell already decoded (or None),
    then ``tells.bodies[start:]``, decoded as they move (as the reader would have, with the
    same checks), and the estimated bytes of the entry.
    """

    __slots__ = (
        "_more",
        "asks",
        "bytes",
        "cell",
        "corr",
        "count",
        "credited",
        "entries",
        "granted",
        "link",
        "ops",
        "unit",
    )

    def __init__(self, link: TellFlow, cell: Cell, corr: int, ops: StreamOps) -> None:
        self.link = link
        self.cell = cell
        #: The hold's id; ``ops`` grants credit to it and ends it.
        self.corr = corr
        self.ops = ops
        self.entries: deque[tuple[Mail | None, _Tells, int, int]] = deque()
        #: Tells waiting here.
        self.count = 0
        #: The sender has said that it holds its tells (``tells.held``): every later one uses
        #: a credit. Those before were on their way when it heard of the hold.
        self.credited = False
        #: Credit granted that the sender has not used yet.
        self.granted = 0
        #: Estimated bytes waiting here, and those of one tell (a moving average: credit is
        #: sized by it), and the requests waiting here.
        self.bytes = 0
        self.unit = 0
        self.asks = 0
        self._more: trio.Event | None = None

    def add(
        self, item: Mail | None, tells: _Tells, start: int, credit: bool = True, item_size: int = 0
    ) -> int:
        """Queue ``item`` (its encoded body and headers ``item_size`` bytes) and
        ``tells.bodies[start:]`` (tells, which use a credit once the sender holds them, unless
        ``credit`` is false: a request); returns the estimated bytes."""
        bodies = tells.bodies
        n = len(bodies) - start
        size = sum(map(len, bodies[start:])) + TELL_OVERHEAD * n
        if item is not None:
            n += 1
            size += item_size + 4 * TELL_OVERHEAD
            if not credit:
                self.asks += 1
        self.entries.append((item, tells, start, size))
        self.count += n
        self.bytes += size
        if credit and n:
            self.unit = size // n if not self.unit else self.unit + (size // n - self.unit) // 4
            if not self.credited:
                if self.bytes > FREE_BYTES:  # more than a sender's queue and buffers: not holding
                    self.link.backlog_limit = BACKLOG_BYTES
            elif n > self.granted:  # beyond its credit: a peer not holding back (§4.6)
                self.granted = 0
                self.link.backlog_limit = BACKLOG_BYTES
            else:
                self.granted -= n
        if self._more is not None:
            self._more.set()
        return size

    def _moved(self, n: int) -> None:
        """``n`` tells left the backlog."""
        self.count -= n
        self.grant()

    def refused(self) -> None:
        """The sender refused the hold (CANCEL with its id): it sends as it pleases, so the link
        counts as one whose peer does not hold back (the reader stops past BACKLOG_BYTES)."""
        self.corr = 0
        self.credited = False
        self.link.backlog_limit = BACKLOG_BYTES

    def _drained(self, size: int) -> None:
        """An entry of ``size`` estimated bytes has left the backlog."""
        self.bytes -= size
        self.link.backlog_drained(size)
        self.grant()

    def grant(self) -> None:
        """Grant the sender what its window has free, in halves (as a stream's reader does):
        once what waits here or may be on its way takes at most half of it. The window is
        ``TELL_WINDOW`` tells and ``HOLD_BYTES``, in tells of the average size (big tells would
        otherwise fill the link's backlogs before the window: the stall that holds prevent);
        at least one tell when nothing waits or is on its way. Not before the sender said that
        it holds its tells: by then all that it sent freely has come, so the window counts
        from what is really here."""
        if not self.credited or self.link.closed:
            return
        unit = max(self.unit, TELL_OVERHEAD)
        window = max(1, min(TELL_WINDOW, HOLD_BYTES // unit))
        free = min(window - self.count, (HOLD_BYTES - self.bytes) // unit) - self.granted
        if free >= (window + 1) // 2 or (free < 1 and self.count == 0 and self.granted == 0):
            free = max(free, 1)
            self.granted += free
            self.ops.credit(free)

    async def run(self) -> None:
        """Move the tells into the mailbox as room appears, until the backlog has stayed empty
        for RELEASE_IDLE (at once when empty if the link closed or the actor stopped: a new
        actor by that name gets a hold of its own); then end the hold."""
        link, cell = self.link, self.cell
        token = ref_binder.set(link.remoting.bind_ref)  # refs inside bodies arrive bound
        item: Mail | None = None
        tells: _Tells | None = None
        i = size = 0
        try:
            while True:
                while self.entries:
                    item, tells, i, size = self.entries.popleft()
                    while True:
                        if item is not None:
                            # (a request: skipped if over while it waited)
                            reply = item.reply
                            if reply is not None:
                                self.asks -= 1
                                link.backlog_asks -= 1
                            over = reply is not None and (reply.done or reply.abandoned)
                            if not over and await cell.put(item) == DEAD:
                                _undelivered(cell, item)
                            item = None
                            self._moved(1)
                        full = link.offer_tells(tells, i)
                        if full is None:
                            self._moved(len(tells.bodies) - i)
                            break
                        j, item = full
                        self._moved(j - i)
                        i = j + 1
                    tells = None
                    self._drained(size)
                    size = 0
                if link.closed or cell.status >= STOPPING:  # nothing more can come, or be taken
                    return
                more = self._more = trio.Event()
                with trio.move_on_after(RELEASE_IDLE):
                    async with trio.open_nursery() as nursery:  # (idle only: no cost per tell)
                        nursery.start_soon(_set_when, cell.stopped_event(), more)
                        await more.wait()
                        nursery.cancel_scope.cancel()
                self._more = None
                if not self.entries or cell.status >= STOPPING:
                    return
        finally:
            try:
                self._end(item, tells, i, size)
            finally:
                ref_binder.reset(token)

    def end_hold(self) -> None:
        """End the hold (CANCEL with its id: the sender sends freely again), once; and stop
        waiting for more if idle (a new actor by the same name is getting a hold of its own)."""
        if self.corr and not self.link.closed:
            self.ops.cancel()
        self.corr = 0
        self.credited = False  # (no more grants)
        if self._more is not None:
            self._more.set()

    def _end(self, item: Mail | None, tells: _Tells | None, i: int, size: int) -> None:
        """The backlog is over: end the hold (the sender sends freely again), and if the node is
        stopping with tells still here, they go to dead letters."""
        link, cell = self.link, self.cell
        if link.backlogs.get(cell) is self:
            del link.backlogs[cell]
        self.end_hold()
        node = link.remoting.node
        left: list[tuple[Mail | None, _Tells | None, int, int]] = [(item, tells, i, size)]
        left.extend(self.entries)
        self.entries.clear()
        for item, tells, i, size in left:
            if item is not None:
                reply = item.reply
                if reply is not None:
                    self.asks -= 1
                    link.backlog_asks -= 1
                _undelivered(cell, item)
            if tells is not None:
                for body in tells.bodies[i:]:
                    try:
                        msg: Any = tells.codec.decode(body)
                    except MicroError:
                        msg = body
                    node.dead_letter(cell.ref, msg, "stopped", tells.sender)
            self.bytes -= size
            link.backlog_drained(size)


class TellFlow(Outbox):
    """The receiving half of a link for tells (TELL frames and ``tells`` batches): each goes
    into its actor's mailbox without waiting when there is room; otherwise the reader waits
    (at most HOLD_AFTER with a peer that holds back), then the actor's tells wait in a
    :class:`Backlog` (see the module doc). A base class of :class:`~.link.Link`, as
    :class:`~.outbox.Outbox` is; :class:`Backlog` and the hold handlers type their link as it.
    """

    #: The peer holds its tells to one of our actors back when asked (``tells.hold``).
    hold_tells: bool
    #: Tells from the peer waiting for room in our slow actors' mailboxes, per actor, their
    #: estimated bytes, and the requests waiting in them; the reader waits on
    #: ``_backlog_room`` past ``backlog_limit``.
    backlogs: dict[Cell, Backlog]
    backlog_bytes: int
    backlog_limit: int
    backlog_asks: int
    _backlog_room: trio.lowlevel.ParkingLot

    def _on_tell(self, env: Envelope) -> Awaitable[None] | None:
        """Deliver a tell without waiting; what the reader awaits when the mailbox is full (see
        :meth:`_put_tells`)."""
        remoting = self.remoting
        sender = None if env.sender is None else self.peer.bind(env.sender)
        try:
            codec = remoting.codecs.get(env.content_type)
            cell = remoting.local_cell(env.target)
            msg = codec.decode(env.body)
            guard = remoting.guard
            principal = (
                None if guard is None else guard.admit(self, "tell", cell, env.endpoint, env.headers, msg)
            )
        except MicroError as exc:
            remoting.node.dead_letter(env.target, env.body, f"undeliverable: {exc.detail}", sender)
            return None
        item = Mail()  # Mail.of written out, as on every per-message path (see actors/mail.py)
        item.msg, item.reply, item.sender = msg, None, sender
        item.endpoint, item.headers, item.principal = env.endpoint or None, env.headers or None, principal
        if self.backlogs:
            backlog = self.backlogs.get(cell)
            if backlog is not None:  # its earlier tells wait there: this one joins them
                tells = _Tells(cell, codec, sender, env.endpoint, _NO_BODIES)
                return self._queue(backlog, item, tells, 0, len(env.body) + _headers_size(env.headers))
        offered = cell.offer(item)
        if offered == OK:
            return None
        if offered == DEAD:  # stopped between lookup and offer: nothing to wait for
            remoting.node.dead_letter(cell.ref, msg, "stopped", sender)
            return None
        tells = _Tells(cell, codec, sender, env.endpoint, _NO_BODIES)
        return self._put_tells(tells, -1, item, len(env.body) + _headers_size(env.headers))

    def _on_tells(self, env: Envelope) -> Awaitable[object] | None:
        """Deliver a :class:`TellBatch` as :meth:`_on_tell` delivers each of its tells."""
        remoting = self.remoting
        sender = None if env.sender is None else self.peer.bind(env.sender)
        try:
            endpoint, bodies = _tells_of(env.body)
        except MicroError as exc:  # malformed: one letter for the lot
            remoting.node.dead_letter(env.target, env.body, f"undeliverable: {exc.detail}", sender)
            return None
        try:
            codec = remoting.codecs.get(env.content_type)
            cell = remoting.local_cell(env.target)
        except MicroError as exc:  # a letter per tell, as for that many TELL frames
            for body in bodies:
                remoting.node.dead_letter(env.target, body, f"undeliverable: {exc.detail}", sender)
            return None
        tells = _Tells(cell, codec, sender, endpoint, bodies)
        if self.backlogs:
            backlog = self.backlogs.get(cell)
            if backlog is not None:  # its earlier tells wait there: these join them
                return self._queue(backlog, None, tells, 0)
        full = self.offer_tells(tells, 0)
        return None if full is None else self._put_tells(tells, *full)

    def offer_tells(self, tells: _Tells, start: int) -> tuple[int, Mail] | None:
        """Offer ``tells.bodies[start:]`` in order; at a full mailbox, its index and item."""
        remoting = self.remoting
        guard = remoting.guard
        cell, codec, sender, endpoint, bodies, headers = tells
        for i in range(start, len(bodies)):
            try:
                msg = codec.decode(bodies[i])
                principal = (
                    None if guard is None else guard.admit(self, "tell", cell, endpoint, headers or {}, msg)
                )
            except MicroError as exc:
                remoting.node.dead_letter(cell.ref, bodies[i], f"undeliverable: {exc.detail}", sender)
                continue
            item = Mail()  # Mail.of written out, as on every per-message path (see actors/mail.py)
            item.msg, item.reply, item.sender = msg, None, sender
            item.endpoint, item.headers, item.principal = endpoint or None, headers, principal
            offered = cell.offer(item)
            if offered == DEAD:
                remoting.node.dead_letter(cell.ref, msg, "stopped", sender)
            elif offered != OK:
                return i, item
        return None

    async def _put_tells(self, tells: _Tells, i: int, item: Mail, size: int = 0) -> None:
        """Wait for room for the tell at ``i``, then offer the rest, waiting again as needed (a
        loop: a slow consumer must not deepen a chain of awaits by one per tell).

        The rest of the link waits meanwhile: with a peer that holds its tells back on request,
        at most HOLD_AFTER; then the actor counts as slow, its tells wait in a backlog and the
        peer is asked to hold them (see :mod:`.tellflow`). ``size``: the encoded bytes of a
        lone ``item`` (a TELL frame's, ``i`` = -1).
        """
        cell = tells.cell
        node = self.remoting.node
        deadline = trio.current_time() + HOLD_AFTER if self.hold_tells else math.inf
        while True:
            with trio.move_on_at(deadline) as waited:
                result = await cell.put(item)
            if waited.cancelled_caught:
                # No room for HOLD_AFTER: a slow actor, unless this process did not run meanwhile
                # (a loaded machine), so first let the actor's worker have its turn.
                await trio.lowlevel.cancel_shielded_checkpoint()
                result = cell.offer(item)
                if result == FULL:
                    size = len(tells.bodies[i]) if i >= 0 else size
                    pending = self._queue(self._backlog(cell), item, tells, i + 1, size)
                    if pending is not None:
                        await pending
                    return
                deadline = trio.current_time() + HOLD_AFTER
            if result == DEAD:
                msg, sender = item.msg, item.sender
                node.dead_letter(cell.ref, msg, "stopped", sender)
            full = self.offer_tells(tells, i + 1)
            if full is None:
                return
            i, item = full
            size = 0

    def _backlog(self, cell: Cell) -> Backlog:
        """Hold the peer's tells to ``cell`` back: they wait in a backlog that grants credit
        for more as it drains, under a new id that the ``tells.hold`` frame gives the peer."""
        path = cell.path
        for other in self.backlogs.values():
            if other.cell.path == path:  # an actor by that name that stopped: one hold per path
                other.end_hold()
        corr = self.new_corr()
        ops = RemoteStreamOps(self, corr, self.remoting.codec)
        backlog = self.backlogs[cell] = Backlog(self, cell, corr, ops)
        self.push(encode_envelope(Envelope(Kind.SYSTEM, corr, cell.ref, None, "tells.hold")))
        self.remoting.node.spawn_system(backlog.run)
        return backlog

    def _queue(
        self, backlog: Backlog, item: Mail | None, tells: _Tells, start: int, item_size: int = 0
    ) -> Awaitable[None] | None:
        """Add tells to ``backlog`` (``item_size``: the encoded bytes of ``item``); past
        ``backlog_limit`` on this link, what the reader awaits until the backlogs drain."""
        return self.backlog_added(backlog.add(item, tells, start, item_size=item_size))

    def backlog_added(self, size: int) -> Awaitable[None] | None:
        """``size`` estimated bytes joined the backlogs of this link (held tells here, pub/sub
        messages for a full "block" subscriber in the cluster layer); past ``backlog_limit``,
        what the reader awaits until they drain (TCP backpressure, for this link only)."""
        self.backlog_bytes += size
        return self._backlog_drains() if self.backlog_bytes > self.backlog_limit else None

    async def _backlog_drains(self) -> None:
        while self.backlog_bytes > self.backlog_limit and not self.closed:
            await self._backlog_room.park()

    def backlog_drained(self, size: int) -> None:
        """``size`` estimated bytes left the backlogs (see :meth:`_queue`)."""
        self.backlog_bytes -= size
        if self._backlog_room and self.backlog_bytes <= self.backlog_limit:
            self._backlog_room.unpark_all()


def _headers_size(headers: dict[str, str] | None) -> int:
    """Estimated bytes of a frame's headers, for the backlog bound (a request's may be large)."""
    return sum(len(k) + len(v) for k, v in headers.items()) if headers else 0
