"""A :class:`Link`: one authenticated connection to a peer node, shared by every actor on both nodes.

It runs three tasks: a reader that decodes envelopes and dispatches them, a writer that sends
everything queued since its last write in one coalesced, encrypted write, and a keepalive
watchdog. When the link ends, every ask waiting on it fails at once with 503 "node unreachable"
and watchers of actors on that node get ``Terminated``. See docs/protocol.md for the wire rules.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import msgpack
import trio
from trio.lowlevel import ParkingLot

from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope, Kind, decode_envelope, encode_envelope
from trimicro.mailbox.errors import BadRequest, MicroError, ServiceUnavailable, TooManyRequests
from trimicro.mailbox.refs import ActorRef, ref_binder
from trimicro.mailbox.secure.stream import SecureConnection

from ..cell import DEAD, FULL, OK, Cell
from ..mail import Mail, Reply, build_mail
from ..streams import DEFAULT_WINDOW, Stream
from . import (
    COALESCE_MAX,
    COALESCE_SLACK,
    MAX_CREDIT,
    MAX_DEADLINE_MS,
    MAX_INBOUND,
    MAX_STREAMS,
    OUT_HARD_CAP,
    OUT_HIGH_WATER,
    RETIRE_GRACE,
    RETIRE_POLL,
    Unreachable,
    _credit_header,
    _error_of,
)
from .actor import InboundReply, RemoteStreamOps
from .batching import (
    _NO_BODIES,
    Coalesced,
    ItemsBatch,
    TellBatch,
    _bin,
    _clock,
    _is_tell,
    _items_of,
    _Queued,
    _Tells,
    _tells_of,
)
from .tellflow import BACKLOG_LIMIT, HOLD_AFTER, MAX_WAITING_ASKS, Backlog, on_held, on_hold
from .watch import on_unwatch, on_watch

#: The package's logger, bound here (not imported) so calls on it compile as method calls, as before.
log = logging.getLogger("trimicro.remote")

if TYPE_CHECKING:
    from .peer import Peer
    from .remoting import Remoting


class Link:
    """One authenticated connection to a peer node, shared by every actor on both nodes."""

    def __init__(self, remoting: Remoting, peer: Peer, conn: SecureConnection, initiator: bool) -> None:
        self.remoting = remoting
        self.peer = peer
        self.conn = conn
        self.initiator = initiator
        self.closed = False
        self.reason = ""
        # Each side numbers the exchanges it starts: the dialer odd, the acceptor even (§3.3).
        self._corrs = itertools.count(1 if initiator else 2, 2)
        self.pending: dict[int, Reply] = {}
        self.inbound: dict[int, InboundReply] = {}
        self.streams: dict[int, Stream] = {}
        self.out: list[_Queued] = []
        self.out_bytes = 0
        self._writer = ParkingLot()
        self._room = ParkingLot()
        self.received = 0
        self.sent = 0
        self._cancel_scope = trio.CancelScope()
        self._flushed: trio.Event | None = None
        #: The reader is in a step (between receiving a frame and waiting for the next): what
        #: it queues meanwhile it sends itself before it waits (see ``_send_owed``).
        self._reading = False
        #: The reader is waiting on backpressure (a full mailbox): the peer is not silent.
        self.busy = False
        self.seq = next(remoting.link_seq)
        #: What the peer proved in the handshake (its verified certificate).
        self.peer_info: Any = conn.peer_info
        #: The guard's account for the peer node, computed once per link.
        self.principal: Any = None
        #: A Coalesced frame is in ``out`` (the writer builds it when it takes the queue).
        self._coalesced = False
        #: The peer process's incarnation, from its hello (None until then).
        self.incarnation: str | None = None
        #: Mail for the node's :class:`_Flusher` (sends at the end of this scheduler batch).
        self._dirty = False
        #: Seconds a polled-for reply takes on this link, a moving average, and the count of
        #: lone requests (see :mod:`.busypoll`).
        self.poll_time = 0.0
        self.lone_asks = 0
        #: Seconds from our answer to the only request in flight to the peer's next frame, a
        #: moving average: a caller in a loop sends its next request soon (see :meth:`answered`).
        self.next_gap = math.inf
        #: When that answer left (0: none is waiting for its next request), and whether the
        #: reader's current step answered a request.
        self._answered_at = 0.0
        self._answered = False
        #: The peer said in its hello that it understands ``tells`` batches (an older node
        #: would ignore them: until then, and with one, every tell is its own TELL frame).
        self.batch_tells = False
        #: Likewise for ``items`` batches of stream items (else each is a STREAM_DATA frame).
        self.batch_items = False
        #: The peer holds its tells to one of our actors back when asked (``tells.hold``): only
        #: then does the reader stop waiting for a slow actor's room (see :mod:`.tellflow`).
        self.hold_tells = False
        #: Tells from the peer waiting for room in our slow actors' mailboxes, per actor, and
        #: their estimated bytes, and the requests waiting in them; the reader waits on
        #: ``_backlog_room`` past ``backlog_limit`` (lowered for a peer that does not hold back).
        self.backlogs: dict[Cell, Backlog] = {}
        self.backlog_bytes = 0
        self.backlog_limit = BACKLOG_LIMIT
        self.backlog_asks = 0
        self._backlog_room = ParkingLot()
        #: The peer's actors (by path) whose tells it holds back: a credit account each (a
        #: send-only Stream, also in ``streams`` under the hold's id).
        self.held: dict[str, Stream] = {}

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<Link to {self.peer.node_id} {'out' if self.initiator else 'in'}{state}>"

    def new_corr(self) -> int:
        return next(self._corrs)

    # ---- sending -----------------------------------------------------------------------------

    def push(self, frame: bytes) -> None:
        """Queue a frame for the writer without waiting (answers and control messages).

        Answers do not wait for room, so a peer that sends requests but stops reading our
        answers could grow this queue: past a hard cap the link is closed instead.
        """
        if self.closed:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_bytes > OUT_HARD_CAP:
            self.close(f"peer not reading: more than {OUT_HARD_CAP} bytes queued")
            return
        if self._writer and not self._reading and not self._dirty:
            self._wake()

    def write_at_once(self, frame: bytes) -> None:
        """Send a frame now, with one non-blocking write, when nothing is queued and the writer is
        idle (else queue it as :meth:`push` does): a lone request leaves before its caller's
        task parks, instead of at the end of the scheduler batch. Callers use it only for the
        first request in flight on the link, so requests that pile up still share a write."""
        if self.out or self.closed:
            self.push(frame)
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        self.flush_now()  # what the flusher would do at the end of the batch, now

    def coalesce(self, op: str, entry: bytes) -> bool:
        """Queue ``entry`` (one encoded msgpack value) for a :class:`Coalesced` ``op`` frame: the
        one at the end of the queue if there is room in it, else a new one. ``False`` if the
        entry alone would not fit in a frame, or the link is closed."""
        if self.closed or len(entry) > self.remoting.max_frame_size - COALESCE_SLACK:
            return False
        out = self.out
        last = out[-1] if out else None
        if (
            not isinstance(last, Coalesced)
            or last.op != op
            or len(last.parts) >= COALESCE_MAX
            or last.size + len(entry) > self.remoting.max_frame_size - COALESCE_SLACK
        ):
            last = Coalesced(op)
            self._start_batch(last)
        return self._add_entry(last, entry)

    def _start_batch(self, batch: Coalesced | TellBatch | ItemsBatch) -> None:
        """Queue a batch that later entries join until the writer takes it."""
        self.out.append(batch)
        self._coalesced = True
        if self._writer and not self._reading and not self._dirty:
            self._wake()

    def _add_entry(self, batch: Coalesced | TellBatch | ItemsBatch, entry: bytes) -> bool:
        batch.parts.append(entry)
        batch.size += len(entry)
        self.out_bytes += len(entry)
        if self.out_bytes > OUT_HARD_CAP:
            self.close(f"peer not reading: more than {OUT_HARD_CAP} bytes queued")
            return False
        return True

    def tell_later(
        self, target: ActorRef, sender: ActorRef | None, endpoint: str, content_type: str, body: bytes
    ) -> bool:
        """Queue a tell in a :class:`TellBatch`: the one at the end of the queue if it is for the
        same actor, sender, endpoint and content type and has room, else a new one. ``False``
        (send it as a TELL frame) if the link is closed or the body is too big for a batch."""
        if self.closed or not self.batch_tells:
            return False
        entry = _bin(body)
        last = self.out[-1] if self.out else None
        if (  # (checked field by field: this runs once per tell)
            type(last) is TellBatch
            and last.target == target
            and last.sender == sender
            and last.endpoint == endpoint
            and last.content_type == content_type
            and self._joined(last, entry)
        ):
            return True
        return self._add_to_new(TellBatch(target, sender, endpoint, content_type), entry)

    def items_later(self, corr: int, content_type: str, body: bytes) -> bool:
        """Queue an item of stream ``corr`` in an :class:`ItemsBatch`, as :meth:`tell_later` does
        a tell. ``False`` (send it as a STREAM_DATA frame) if the link is closed, the peer does
        not understand batches, or the body is too big for one."""
        if self.closed or not self.batch_items:
            return False
        entry = _bin(body)
        last = self.out[-1] if self.out else None
        if (
            type(last) is ItemsBatch
            and last.corr == corr
            and last.content_type == content_type
            and self._joined(last, entry)
        ):
            return True
        return self._add_to_new(ItemsBatch(corr, content_type), entry)

    def _joined(self, batch: TellBatch | ItemsBatch, entry: bytes) -> bool:
        """Add ``entry`` to ``batch`` (the last in the queue) if it has room for it."""
        if len(batch.parts) >= COALESCE_MAX or batch.size + len(entry) > batch.room:
            return False
        self._add_entry(batch, entry)
        return True

    def _add_to_new(self, batch: TellBatch | ItemsBatch, entry: bytes) -> bool:
        """Queue a new ``batch`` holding ``entry``; ``False`` if the entry is too big for one."""
        # Room for entries next to this envelope, measured (its refs, endpoint and content type
        # in UTF-8), with 16 bytes for the array and bin headers to grow.
        batch.room = self.remoting.max_frame_size - len(batch.frame()) - 16
        if len(entry) > batch.room:
            return False
        self._start_batch(batch)
        self._add_entry(batch, entry)  # (if that closed the link, its close dead-letters tells)
        return True

    async def wait_room(self) -> None:
        """Wait while the send queue is over its high-water mark (then ``send`` would not wait)."""
        while self.out_bytes >= OUT_HIGH_WATER and not self.closed:
            await self._room.park()

    def fits(self, frame: bytes) -> bool:
        return len(frame) <= self.remoting.max_frame_size

    async def send(self, frame: bytes) -> None:
        """Queue a frame, waiting while the send buffer is over its high-water mark."""
        if len(frame) > self.remoting.max_frame_size:
            raise BadRequest(
                f"message of {len(frame)} bytes exceeds the {self.remoting.max_frame_size}-byte frame limit"
            )
        while self.out_bytes >= OUT_HIGH_WATER and not self.closed:
            await self._room.park()
        if self.closed:
            raise Unreachable(f"node {self.peer.node_id} unreachable: {self.reason}", id=self.peer.node_id)
        self.push(frame)

    def send_error(self, corr: int, err: MicroError, codec: Codec) -> None:
        body = codec.encode(err.to_fields())
        self.push(encode_envelope(Envelope(Kind.ERROR, corr, content_type=codec.content_type, body=body)))

    def _take_out(self) -> list[bytes]:
        """Everything queued, as frames, leaving the queue empty (and waking its waiters)."""
        queued, self.out = self.out, []
        self.out_bytes = 0
        if self._coalesced:
            self._coalesced = False
            batch = [f if isinstance(f, bytes) else f.frame() for f in queued]
        else:
            batch = cast("list[bytes]", queued)
        if self._room:
            self._room.unpark_all()
        self.sent += len(batch)
        return batch

    def _end_step(self) -> None:
        """The reader is about to wait: what its step queued must not wait with it."""
        self._reading = False
        if self.out:
            self._send_owed()

    def _send_owed(self) -> None:
        """The reader is about to wait for the peer: send what its step queued (answers, mostly)
        now, with one non-blocking write, when the writer is idle; else wake the writer. Saves
        the writer's scheduler round trips on a request's path (a reply goes out in the same
        step that handled its request)."""
        conn = self.conn
        if self._cancel_scope.cancel_called:  # closing: nothing more is written
            return
        if self._writer and not self.closed and conn.can_write_now():
            conn.write_now(self._take_out())
            if conn.backlog:  # the socket took part of it: the writer sends the rest
                self._writer.unpark()
            elif self._flushed is not None:
                self._flushed.set()
                self._flushed = None
        elif self._writer:
            self._writer.unpark()

    def _wake(self) -> None:
        """Get what was just queued sent: by the node's flusher at the end of this scheduler
        batch when this connection can write without waiting, else by the writer task."""
        if self.conn.can_write_now():
            self._dirty = True
            self.remoting.flusher.add(self)
        else:
            self._writer.unpark()

    def flush_now(self) -> None:
        """Called by the node's :class:`_Flusher` when trio is about to wait for I/O: send
        what tasks queued during this scheduler batch (see :meth:`_send_owed`)."""
        self._dirty = False
        if self.out and not self.closed and not self._cancel_scope.cancel_called:
            try:
                self._send_owed()
            except Exception as exc:  # e.g. the channel refusing to encrypt: this link only
                log.exception("link to %s failed to write", self.peer.node_id)
                self.close(f"internal error: {type(exc).__name__}")

    async def _write(self) -> None:
        conn = self.conn
        while True:
            if self._cancel_scope.cancel_called:  # closing: nothing more is written
                await trio.sleep_forever()  # (raises Cancelled at once)
            if not self.out:
                if conn.backlog:  # left by a write_now: send it before anything else
                    await conn.send_frames([])
                    continue
                flushed = self._flushed
                if flushed is not None:
                    self._flushed = None
                    flushed.set()
                await self._writer.park()
                continue
            await conn.send_frames(self._take_out())

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the link closed)."""
        while (self.out or self.conn.backlog) and not self.closed:
            if self._flushed is None:
                self._flushed = trio.Event()
            await self._flushed.wait()

    # ---- receiving ---------------------------------------------------------------------------

    async def _read(self) -> None:
        ref_binder.set(self.remoting.bind_ref)  # refs inside bodies arrive bound (this task only)
        conn = self.conn
        try:
            await self._read_loop(conn)
        finally:
            self._reading = False
            self._answered_at = 0.0  # no next request: nothing to measure

    def answered(self) -> None:
        """A request from the peer was just answered. If it was the only one in flight, the peer
        is likely a caller in a loop whose next request follows within microseconds: the node
        polls for it (:mod:`.busypoll`) instead of sleeping, if such requests came within the
        polling budget on average so far. (In a reader's step, its end decides.)"""
        if self._reading:
            self._answered = True
            return
        poller = self.remoting.poller
        if poller is None or self.inbound or self._answered_at or self._cancel_scope.cancel_called:
            return
        self._answered_at = _clock()
        if self.next_gap < poller.budget:
            poller.poll_briefly()

    def _next_came(self) -> None:
        """The peer's next frame after an answer: measure the gap (capped, so that one idle
        spell does not stop the polling for the next hundred answers)."""
        poller = self.remoting.poller
        gap = _clock() - self._answered_at
        self._answered_at = 0.0
        if poller is None:  # (polling turned off since)
            return
        gap = min(gap, poller.worth_below)
        self.next_gap = gap if self.next_gap == math.inf else self.next_gap + (gap - self.next_gap) * 0.125

    async def _read_loop(self, conn: SecureConnection) -> None:
        while True:
            # A step ends when no complete frame is left to handle without waiting (a burst of
            # requests gets its replies in one write).
            frame = conn.next_frame_nowait()
            if frame is None:
                if self.out:
                    self._send_owed()
                self._reading = False
                if self._answered:
                    self._answered = False
                    self.answered()
                frame = await conn.receive_frame()
                self._reading = True
                if self._answered_at:
                    self._next_came()
                if frame is None:
                    self.reason = "connection closed by the peer"
                    return
            self.received += 1
            env = decode_envelope(frame)
            kind = env.kind
            if kind is Kind.REPLY or kind is Kind.ERROR:
                self._on_answer(env)
            elif kind is Kind.ASK:
                self._on_ask(env)
            elif kind is Kind.TELL:
                full = self._on_tell(env)
                if full is not None:
                    self.busy = True  # waiting on a full mailbox is not silence (see _keepalive)
                    self._end_step()  # it waits: nothing queued may wait with it
                    await full
                    self._reading = True
                    self.busy = False
            elif kind is Kind.CANCEL:
                self._on_cancel(env.corr)
            elif kind is Kind.STREAM_DATA:
                self._on_stream_data(env)
            elif kind is Kind.STREAM_CREDIT:
                self._on_stream_credit(env)
            elif kind is Kind.STREAM_CLOSE:
                self._on_stream_close(env)
            elif kind is Kind.STREAM_OPEN:
                self._on_stream_open(env)
            elif kind is Kind.SYSTEM:
                pending = self._on_system(env)
                if pending is not None:  # a higher layer's handler that may wait (backpressure)
                    self.busy = True
                    self._end_step()
                    await pending
                    self._reading = True
                    self.busy = False

    def _on_answer(self, env: Envelope) -> None:
        reply = self.pending.pop(env.corr, None)
        if reply is None:
            return  # the caller gave up; a late answer is dropped
        if env.headers:
            reply.headers = env.headers
        try:
            codec = self.remoting.codecs.get(env.content_type)
            value = codec.decode(env.body)
            if env.kind is Kind.ERROR:
                reply.fail(_error_of(value))
            else:
                reply.resolve(value)
        except MicroError as exc:
            reply.fail(exc)

    def _on_ask(self, env: Envelope) -> None:
        corr = env.corr
        remoting = self.remoting
        if corr % 2 != (0 if self.initiator else 1) or corr in self.inbound or corr in self.streams:
            # The peer numbers its exchanges with its own parity and never reuses a live one (§3.3).
            self.send_error(corr, BadRequest(f"bad or reused corr {corr}"), remoting.codec)
            return
        try:
            codec = remoting.codecs.get(env.content_type)
        except MicroError as exc:
            self.send_error(corr, exc, remoting.codec)
            return
        try:
            if len(self.inbound) >= MAX_INBOUND:
                raise TooManyRequests(f"more than {MAX_INBOUND} requests in flight", id=remoting.node.id)
            cell = remoting.cell_for(self, "call", env.target, env.endpoint, env.headers)
            msg = codec.decode(env.body)
            guard = remoting.guard
            principal = (
                None if guard is None else guard.admit(self, "call", cell, env.endpoint, env.headers, msg)
            )
        except MicroError as exc:
            self.send_error(corr, exc, codec)
            return
        reply = InboundReply(self, corr, codec)
        sender = None if env.sender is None else self.peer.bind(env.sender)
        item = build_mail(Mail, (msg, reply, sender, env.endpoint or None, env.headers or None, principal))
        if env.deadline_ms:
            reply.deadline = trio.current_time() + min(env.deadline_ms, MAX_DEADLINE_MS) / 1000
        else:
            reply.deadline = math.inf  # still cancellable by the caller's CANCEL
        backlog = self.backlogs.get(cell) if self.backlogs else None
        if backlog is None and cell.handle_now(item):  # an idle actor, a handler without await
            return
        if env.deadline_ms:
            reply.slot = remoting.node.timeouts.add(reply.deadline, reply)
        if backlog is not None:
            # Tells from this peer wait for the actor's room: the request must not overtake them
            # (its deadline and the caller's CANCEL still end it while it waits). It counts
            # against MAX_WAITING_ASKS until it leaves the backlog, even once over.
            if self.backlog_asks >= MAX_WAITING_ASKS:
                reply.forget_deadline()
                self.send_error(
                    corr,
                    TooManyRequests(f"more than {MAX_WAITING_ASKS} requests waiting", id=cell.path),
                    codec,
                )
                return
            self.inbound[corr] = reply
            self.backlog_asks += 1
            tells = _Tells(cell, codec, sender, env.endpoint, _NO_BODIES)
            size = len(env.body) + _headers_size(env.headers)
            self.backlog_bytes += backlog.add(item, tells, 0, credit=False, item_size=size)
            return
        result = cell.offer(item)
        if result == OK:
            self.inbound[corr] = reply
        elif result == DEAD:
            self.send_error(
                corr, ServiceUnavailable(f"actor {cell.path} is not running", id=cell.path), codec
            )
        else:
            self.send_error(corr, TooManyRequests(f"mailbox of {cell.path} is full", id=cell.path), codec)

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
        item = build_mail(Mail, (msg, None, sender, env.endpoint or None, env.headers or None, principal))
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
            item = build_mail(Mail, (msg, None, sender, endpoint or None, headers, principal))
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
                node.dead_letter(cell.ref, item.msg, "stopped", item.sender)
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

    def _on_cancel(self, corr: int) -> None:
        reply = self.inbound.pop(corr, None)
        if reply is not None:
            reply.abandoned = True
            reply.forget_deadline()
            if reply.scope is not None:
                reply.scope.cancel()
            return
        stream = self.streams.get(corr)
        if stream is not None:
            stream.on_cancel()
            return
        for backlog in self.backlogs.values():  # (rare: a sender refusing one of our holds)
            if backlog.corr == corr:
                backlog.refused()
                return

    # ---- streams -----------------------------------------------------------------------------

    def _on_stream_open(self, env: Envelope) -> None:
        corr = env.corr
        remoting = self.remoting
        codec = remoting.codec
        try:
            codec = remoting.codecs.get(env.content_type)
            if corr in self.streams or corr in self.inbound:
                raise BadRequest(f"stream id {corr} is in use")
            if len(self.streams) >= MAX_STREAMS:
                raise TooManyRequests(f"more than {MAX_STREAMS} streams open", id=remoting.node.id)
            headers = dict(env.headers)
            credit = _credit_header(headers.pop("credit", None))
            cell = remoting.cell_for(self, "stream", env.target, env.endpoint, headers)
            request = codec.decode(env.body) if env.body else None
            guard = remoting.guard
            principal = (
                None if guard is None else guard.admit(self, "stream", cell, env.endpoint, headers, request)
            )
            fn = cell.stream_handler(env.endpoint)  # after the guard: no probing for endpoints either
        except MicroError as exc:
            body = codec.encode(exc.to_fields())
            refusal = Envelope(Kind.STREAM_CLOSE, corr, content_type=codec.content_type, body=body)
            self.push(encode_envelope(refusal))
            return
        sender = None if env.sender is None else self.peer.bind(env.sender)
        streams = self.streams
        stream = Stream(DEFAULT_WINDOW, request=request, headers=headers, peer=sender)
        stream.on_done = lambda _s: streams.pop(corr, None)
        stream.ops = RemoteStreamOps(self, corr, codec)
        streams[corr] = stream
        stream.on_credit(credit)
        stream.ops.credit(stream.window)  # accepting = granting the opener its first credit
        cell.start_stream(fn, stream, Mail(request, None, sender, env.endpoint, headers or None, principal))

    def _on_stream_data(self, env: Envelope) -> None:
        stream = self.streams.get(env.corr)
        if stream is None:
            return  # a stream that is over: late items are ignored
        try:
            item = self.remoting.codecs.get(env.content_type).decode(env.body)
        except MicroError as exc:
            stream.fail(exc)
            return
        stream.on_data(item)

    def _on_items(self, env: Envelope) -> None:
        """Hand an :class:`ItemsBatch` to its stream item by item, as that many STREAM_DATA."""
        stream = self.streams.get(env.corr)
        if stream is None:
            return  # a stream that is over: late items are ignored
        try:
            decode = self.remoting.codecs.get(env.content_type).decode
            for body in _items_of(env.body):
                stream.on_data(decode(body))
        except MicroError as exc:
            stream.fail(exc)

    def _on_stream_credit(self, env: Envelope) -> None:
        stream = self.streams.get(env.corr)
        if stream is None:
            return
        try:
            n = self.remoting.codecs.get(env.content_type).decode(env.body)
        except MicroError as exc:
            stream.fail(exc)
            return
        if type(n) is not int or not 1 <= n <= MAX_CREDIT:
            stream.fail(BadRequest("stream credit must be an integer from 1 to 2^20"))
            return
        stream.on_credit(n)

    def _on_stream_close(self, env: Envelope) -> None:
        stream = self.streams.get(env.corr)
        if stream is None:
            return
        if not env.body:
            stream.on_close(None)
            return
        try:
            fields = self.remoting.codecs.get(env.content_type).decode(env.body)
            error = _error_of(fields)
        except MicroError as exc:
            error = exc
        stream.on_close(error)

    def _on_system(self, env: Envelope) -> Awaitable[object] | None:
        op = env.endpoint
        remoting = self.remoting
        if op == "hello":
            try:
                info = remoting.codec.decode(env.body) if env.body else {}
            except MicroError:
                return None
            address = info.get("address") if isinstance(info, dict) else None
            if isinstance(address, str) and address and self.initiator is False:
                self.peer.address = address
            features = info.get("features") if isinstance(info, dict) else None
            if isinstance(features, list):
                self.batch_tells = "tells" in features
                self.batch_items = "items" in features
                self.hold_tells = "tells.hold" in features
            incarnation = info.get("incarnation") if isinstance(info, dict) else None
            if isinstance(incarnation, str) and 0 < len(incarnation) <= 64:
                self.incarnation = incarnation
                self.peer.restarted(self)
        elif op == "watch" and env.target is not None and env.sender is not None:
            on_watch(self, env, env.target, env.sender)
        elif op == "unwatch" and env.target is not None and env.sender is not None:
            on_unwatch(self, env.target, env.sender)
        elif op == "tells":
            return self._on_tells(env)
        elif op == "items":
            self._on_items(env)
        elif op == "tells.hold":
            on_hold(self, env, MAX_STREAMS)
        elif op == "tells.held":
            on_held(self, env)
        elif op == "terminated" and env.target is not None and env.sender is not None:
            try:
                reason = remoting.codec.decode(env.body) if env.body else None
            except MicroError:
                reason = None
            self.peer.terminated(env.sender, env.target, reason if isinstance(reason, str) else None)
        else:
            handler = remoting.system_handlers.get(op)
            if handler is not None:  # operations of higher layers (membership, pub/sub)
                return handler(self, env)
        # "heartbeat" and unknown operations only prove the peer is alive.
        return None

    # ---- lifetime ----------------------------------------------------------------------------

    async def _keepalive(self) -> None:
        """Send a heartbeat when idle; drop the link when the peer has been silent too long."""
        interval = self.remoting.keepalive
        silent_limit = self.remoting.dead_after
        heartbeat = encode_envelope(Envelope(Kind.SYSTEM, endpoint="heartbeat"))
        last_received = self.received
        silent = 0.0
        while True:
            sent = self.sent
            await trio.sleep(interval)
            if self.sent == sent and not self.out:
                self.push(heartbeat)
            if self.received == last_received and not self.busy:
                silent += interval
                if silent >= silent_limit:
                    self.reason = f"no traffic for {silent:g}s"
                    return
            else:
                last_received = self.received
                silent = 0.0

    async def run(self) -> None:
        """Serve the link until the peer goes away, a task fails, or :meth:`close` is called."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:

                    async def until_done(fn: Callable[[], Any]) -> None:
                        # The first of the three to end (a clean EOF, a broken or hostile peer,
                        # silence) ends the link; only MicroErrors are expected here.
                        try:
                            await fn()
                        except MicroError as exc:
                            self.reason = self.reason or f"{type(exc).__name__}: {exc.detail}"
                        except Exception as exc:  # a bug or a hostile frame: this link only, never the node
                            log.exception("link to %s failed", self.peer.node_id)
                            self.reason = self.reason or f"internal error: {type(exc).__name__}"
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(until_done, self._read)
                    nursery.start_soon(until_done, self._keepalive)
                    nursery.start_soon(until_done, self._write)
        finally:
            self._closed()
            with trio.CancelScope(shield=True):
                await self.conn.aclose()

    async def retire(self) -> None:
        """Close a duplicate link once its exchanges are over: new traffic already takes the
        other link, but asks, requests being served and streams that started here finish here
        (within RETIRE_GRACE), and what is queued is written before the close."""
        with trio.move_on_after(RETIRE_GRACE):
            # Polling, not an event: this is rare (two dials at once) and keeps the hot paths free.
            while (self.pending or self.inbound or self.streams) and not self.closed:  # noqa: ASYNC110
                await trio.sleep(RETIRE_POLL)
            await self.flush()
        self.close("duplicate connection")

    def close(self, reason: str) -> None:
        """End the link: nothing more is written (what is still queued then is not sent; callers
        that want it sent flush first), and its tasks are cancelled."""
        self.reason = self.reason or reason
        self._cancel_scope.cancel()

    def unreachable(self, reason: str) -> Unreachable:
        node_id = self.peer.node_id
        err = Unreachable(f"node {node_id} unreachable: {reason}", id=node_id)
        err.maybe_delivered = True
        return err

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        reason = self.reason or "connection lost"
        queued, self.out = self.out, []
        self.out_bytes = 0
        self._room.unpark_all()
        if self._flushed is not None:  # a flush() waiting: nothing more will be written
            self._flushed.set()
            self._flushed = None
        pending, self.pending = self.pending, {}
        for reply in pending.values():
            reply.fail(self.unreachable(reason))
        for stream in list(self.streams.values()):  # (holds too: their waiting tellers go on)
            stream.on_close(self.unreachable(reason))
        self.streams = {}
        self.held = {}
        self._backlog_room.unpark_all()
        inbound, self.inbound = self.inbound, {}
        for inbound_reply in inbound.values():
            inbound_reply.abandoned = True
            inbound_reply.forget_deadline()
            if inbound_reply.scope is not None:
                inbound_reply.scope.cancel()
        self.peer.link_closed(self)
        self._dead_letter_tells(queued, f"unreachable: {reason}")

    def _dead_letter_tells(self, queued: list[_Queued], reason: str) -> None:
        """Tells still queued when the link closed were never sent: they go to dead letters, as
        a tell to an unreachable node does (asks fail and streams end instead; what the socket
        took is at most once, as in Akka)."""
        remoting = self.remoting
        letters = remoting.node.dead_letters
        if not letters.observed():  # (up to 16 MiB of tells: count them, decode nothing)
            letters.count += sum(
                len(f.parts) if isinstance(f, TellBatch) else _is_tell(f)
                for f in queued
                if not isinstance(f, Coalesced | ItemsBatch)
            )
            return
        codecs = remoting.codecs
        token = ref_binder.set(remoting.bind_ref)  # refs inside them come bound, as on receipt

        def dead(target: ActorRef | None, sender: ActorRef | None, content_type: str, body: bytes) -> None:
            try:
                msg = codecs.get(content_type).decode(body)
            except MicroError:
                msg = body
            remoting.node.dead_letter(target, msg, reason, sender)

        try:
            for frame in queued:
                if isinstance(frame, TellBatch):
                    for part in frame.parts:
                        dead(frame.target, frame.sender, frame.content_type, msgpack.unpackb(part))
                elif isinstance(frame, bytes) and _is_tell(frame):
                    try:
                        env = decode_envelope(frame)
                    except MicroError:  # (ours, so valid; but a close must never fail)
                        continue
                    dead(env.target, env.sender, env.content_type, env.body)
        finally:
            ref_binder.reset(token)


def _headers_size(headers: dict[str, str] | None) -> int:
    """Estimated bytes of a frame's headers, for the backlog bound (a request's may be large)."""
    return sum(len(k) + len(v) for k, v in headers.items()) if headers else 0
