"""The sending half of a :class:`~.link.Link`: its queue of frames and batches, and how
they reach the socket.

Everything a link sends is queued here first (``out``): frames, and batches that later
entries join until the writer takes them (:mod:`.batching`). Three things send it, whichever
comes first: the reader, at the end of its step (the answers that step produced, in one
non-blocking write); the node's flusher (:mod:`.flusher`), at the end of the scheduler batch
in which a task queued something; and the writer task, when the socket cannot take it all at
once. Senders wait while more than OUT_HIGH_WATER bytes are queued; answers never wait, and
past OUT_HARD_CAP the peer is not reading: the link is closed.

:class:`Outbox` is a base class of :class:`~.link.Link` (not an object a link holds: the
hot paths read ``link.out`` and call ``link.push`` without an extra attribute hop). It
declares the state it shares with the rest of the link; ``Link.__init__`` sets it. Modules
that only send on a link (:mod:`.watch`, :mod:`.actor`, :mod:`.flusher`), and :mod:`.peer`,
which holds its links, type it as this class, so they need not import the link (which imports
them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import msgpack
import trio
from trio.lowlevel import ParkingLot

from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope, Kind, decode_envelope, encode_envelope, encode_parts
from trimicro.mailbox.errors import BadRequest, InternalServerError, MicroError, RequestTimeout
from trimicro.mailbox.logs import get_logger
from trimicro.mailbox.refs import ActorRef, ref_binder
from trimicro.mailbox.secure.stream import SecureConnection

from ..mail import Reply
from ..streams import Stream
from . import (
    COALESCE_MAX,
    COALESCE_SLACK,
    OUT_HARD_CAP,
    OUT_HIGH_WATER,
    RETIRE_GRACE,
    RETIRE_POLL,
    Unreachable,
)
from .batching import Coalesced, ItemsBatch, TellBatch, _bin, _clock, _is_tell, _Queued
from .ports import PeerPort, RemotingPort
from .protocol import LinkEvent, LinkProtocol, LinkState

__all__ = ["InboundReply", "Outbox", "RemoteStreamOps"]

log = get_logger(__package__)

#: The kinds of an answer, as ints: reading an enum member costs more than packing it.
_REPLY, _ERROR = int(Kind.REPLY), int(Kind.ERROR)


class Outbox:
    """A link's send queue and the state the rest of the link shares (see the module doc)."""

    remoting: RemotingPort
    peer: PeerPort
    conn: SecureConnection
    initiator: bool
    #: What the peer proved in the handshake (its verified certificate), and whoever the node's
    #: guard authenticated on this link (it caches it here): a guard judges a link by them.
    peer_info: Any
    principal: Any
    #: The link's rank among its peer's links (newer ones replace older ones from the same
    #: dialer), and the peer process's incarnation from its hello (None until then).
    seq: int
    incarnation: str | None
    #: The protocol's state and rules, without I/O (:mod:`.protocol`).
    protocol: LinkProtocol
    #: ``protocol``'s CLOSED state as a plain attribute, read on every send.
    closed: bool
    reason: str
    #: Asks this side sent, by corr; requests from the peer being served; open streams
    #: (and holds, see :mod:`.tellflow`).
    pending: dict[int, Reply]
    inbound: dict[int, InboundReply]
    streams: dict[int, Stream]
    held: dict[str, Stream]
    out: list[_Queued]
    out_bytes: int
    sent: int
    sent_bytes: int
    _writer: ParkingLot
    _room: ParkingLot
    _cancel_scope: trio.CancelScope
    _flushed: trio.Event | None
    _reading: bool
    _coalesced: bool
    _dirty: bool
    batch_tells: bool
    batch_items: bool
    poll_time: float
    lone_asks: int
    next_gap: float
    _answered_at: float
    _answered: bool
    #: The node polls for the peer's next frame since the last answer (it reports whether the
    #: frame came within the budget: see :class:`~..busypoll.PollGate`).
    _polled_next = False
    #: Answers to our requests that the reader's current (or last) step delivered: when more
    #: than one, their callers' next requests follow in the same scheduler batch, and leave
    #: together at its end rather than the first alone (see :meth:`write_at_once`).
    step_answers = 0

    #: A fresh correlation id for an exchange this side starts (§3.3): ``protocol.new_corr``,
    #: bound once.
    new_corr: Callable[[], int]

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
        if not self._dirty and not self._reading and self._writer:  # (the cheap tests first)
            self._wake()

    def write_at_once(self, frame: bytes) -> None:
        """Send a frame now, with one non-blocking write, when nothing is queued and the writer is
        idle (else queue it as :meth:`push` does): a lone request leaves before its caller's
        task parks, instead of at the end of the scheduler batch. Callers use it only for the
        first request in flight on the link, so requests that pile up still share a write;
        and not after a step that answered several requests (their callers' next requests are
        on their way: all of them leave in one write at the end of the batch)."""
        if self.out or self.closed or self.step_answers > 1:
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
        if not self._dirty and not self._reading and self._writer:  # (the cheap tests first)
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
        self.push(encode_parts(_ERROR, corr, None, None, "", codec.content_type, {}, 0, body))

    def _take_out(self) -> list[bytes]:
        """Everything queued, as frames, leaving the queue empty (and waking its waiters)."""
        queued, self.out = self.out, []
        self.sent_bytes += self.out_bytes
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
            self._polled_next = poller.poll_briefly()

    def _next_came(self) -> None:
        """The peer's next frame after an answer: measure the gap (capped, so that one idle
        spell does not stop the polling for the next hundred answers)."""
        poller = self.remoting.poller
        gap = _clock() - self._answered_at
        self._answered_at = 0.0
        if poller is None:  # (polling turned off since)
            return
        if self._polled_next:  # it polled for this frame: did it come in time?
            self._polled_next = False
            poller.record(gap < poller.budget)
        gap = min(gap, poller.worth_below)
        self.next_gap = gap if self.next_gap == math.inf else self.next_gap + (gap - self.next_gap) * 0.125

    async def retire(self) -> None:
        """Close a duplicate link once its exchanges are over: new traffic already takes the
        other link, but asks, requests being served and streams that started here finish here
        (within RETIRE_GRACE), and what is queued is written before the close."""
        if self.protocol.state not in (LinkState.AWAITING_HELLO, LinkState.OPEN):
            return  # closed meanwhile, or already retiring
        self.protocol.handle(LinkEvent.RETIRE)
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

    def _dead_letter_tells(self, queued: list[_Queued], reason: str) -> None:
        """Tells still queued when the link closed were never sent: they go to dead letters, as
        a tell to an unreachable node does (asks fail and streams end instead; what the socket
        took is at most once, as in Akka)."""
        remoting = self.remoting
        letters = remoting.node.dead_letters
        if not letters.observed():  # (up to 16 MiB of tells: count them, decode nothing)
            letters.add(
                sum(
                    len(f.parts) if isinstance(f, TellBatch) else _is_tell(f)
                    for f in queued
                    if not isinstance(f, Coalesced | ItemsBatch)
                ),
                reason,
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


class InboundReply(Reply):
    """The reply slot of a request from another node: completing it sends REPLY or ERROR back."""

    __slots__ = ("codec", "corr", "link")

    def __init__(self, link: Outbox, corr: int, codec: Codec) -> None:
        super().__init__()
        self.link = link
        self.corr = corr
        self.codec = codec

    def expire(self) -> None:
        """The caller's deadline passed: answer 408 and cancel the handler if it is running."""
        self.slot = None
        if self.done:
            return
        self.fail(RequestTimeout("the caller's deadline passed", id=self.link.remoting.node.id))
        if self.scope is not None:
            self.scope.cancel()

    def forget_deadline(self) -> None:
        """Take this request out of the timeout wheel (answered, cancelled, or its link gone)."""
        if self.slot is not None:
            self.link.remoting.node.timeouts.remove(self.slot, self)
            self.slot = None

    def _finish(self) -> bool:
        self.done = True
        link = self.link
        link.inbound.pop(self.corr, None)
        if self.slot is not None:  # (forget_deadline, inline: once per request served)
            link.remoting.node.timeouts.remove(self.slot, self)
            self.slot = None
        if self.abandoned or link.closed:
            return False
        if link._reading:  # (answered(), inline: the reader's step decides at its end)
            link._answered = True
        else:
            link.answered()
        if self.error is None:
            try:
                body = self.codec.encode(self.value)
            except MicroError as exc:
                link.send_error(self.corr, exc, self.codec)
                return True
            ct = self.codec.content_type
            try:
                frame = encode_parts(_REPLY, self.corr, None, None, "", ct, self.headers or {}, 0, body)
            except Exception as exc:  # reply headers the handler filled with something unencodable
                bad = InternalServerError(f"reply not encodable: {type(exc).__name__}: {exc}")
                link.send_error(self.corr, bad, self.codec)
                return True
            if len(frame) > link.remoting.max_frame_size:
                too_big = InternalServerError(f"reply of {len(frame)} bytes exceeds the frame limit")
                link.send_error(self.corr, too_big, self.codec)
                return True
            link.push(frame)
        else:
            err = self.error
            if not isinstance(err, MicroError):
                err = InternalServerError(f"{type(err).__name__}: {err}")
            link.send_error(self.corr, err, self.codec)
        return True


class RemoteStreamOps:
    """Stream operations across a link: each becomes one envelope for stream ``corr``."""

    __slots__ = ("codec", "corr", "link")

    def __init__(self, link: Outbox, corr: int, codec: Codec) -> None:
        self.link = link
        self.corr = corr
        self.codec = codec

    async def data(self, item: Any) -> None:
        codec = self.codec
        body = codec.encode(item)
        link = self.link
        # It joins the items of this stream queued just before it (one frame), room permitting.
        if link.out_bytes < OUT_HIGH_WATER and link.items_later(self.corr, codec.content_type, body):
            return
        env = Envelope(Kind.STREAM_DATA, self.corr, content_type=codec.content_type, body=body)
        await link.send(encode_envelope(env))

    def credit(self, n: int) -> None:
        codec = self.codec
        env = Envelope(Kind.STREAM_CREDIT, self.corr, content_type=codec.content_type, body=codec.encode(n))
        self.link.push(encode_envelope(env))

    def close(self, error: MicroError | None) -> None:
        codec = self.codec
        body = b"" if error is None else codec.encode(error.to_fields())
        env = Envelope(Kind.STREAM_CLOSE, self.corr, content_type=codec.content_type, body=body)
        self.link.push(encode_envelope(env))

    def cancel(self) -> None:
        self.link.push(encode_envelope(Envelope(Kind.CANCEL, self.corr)))
