"""A :class:`Link`: one authenticated connection to a peer node, shared by every actor on both nodes.

It runs three tasks: a reader that decodes envelopes and dispatches them, a writer that sends
everything queued since its last write in one coalesced, encrypted write, and a keepalive
watchdog. When the link ends, every ask waiting on it fails at once with 503 "node unreachable"
and watchers of actors on that node get ``Terminated``. See docs/protocol.md for the wire rules.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio.lowlevel import ParkingLot

from trimicro.mailbox.envelope import Envelope, Kind, decode_parts, encode_envelope
from trimicro.mailbox.errors import BadRequest, MicroError, ServiceUnavailable, TooManyRequests
from trimicro.mailbox.logs import get_logger
from trimicro.mailbox.refs import ActorRef, ref_binder
from trimicro.mailbox.secure.stream import SecureConnection

from ..cell import DEAD, OK, Cell
from ..mail import Mail, Reply
from ..streams import DEFAULT_WINDOW, Stream
from . import (
    MAX_DEADLINE_MS,
    MAX_INBOUND,
    MAX_STREAMS,
    Unreachable,
    _credit_header,
    _error_of,
)
from .batching import (
    _NO_BODIES,
    _items_of,
    _Queued,
    _Tells,
)
from .outbox import InboundReply, RemoteStreamOps
from .ports import PeerPort, RemotingPort
from .protocol import BadCorrelation, BadCredit, LinkEvent, LinkProtocol, check_credit
from .tellflow import BACKLOG_LIMIT, MAX_WAITING_ASKS, Backlog, TellFlow, _headers_size, on_held, on_hold
from .watch import on_unwatch, on_watch

#: The package's logger, bound here (not imported) so calls on it compile as method calls, as before.
log = get_logger(__package__)

#: The kinds the reader tells apart first, bound here: reading an enum member (``Kind.ASK``)
#: costs several times a global's lookup, and the reader does it for every frame.
_REPLY, _ERROR, _ASK, _TELL, _SYSTEM = Kind.REPLY, Kind.ERROR, Kind.ASK, Kind.TELL, Kind.SYSTEM
_CANCEL, _STREAM_OPEN, _STREAM_DATA = Kind.CANCEL, Kind.STREAM_OPEN, Kind.STREAM_DATA
_STREAM_CREDIT, _STREAM_CLOSE = Kind.STREAM_CREDIT, Kind.STREAM_CLOSE


class Link(TellFlow):
    """One authenticated connection to a peer node, shared by every actor on both nodes."""

    def __init__(
        self, remoting: RemotingPort, peer: PeerPort, conn: SecureConnection, initiator: bool
    ) -> None:
        self.remoting = remoting
        self.peer = peer
        self.conn = conn
        self.initiator = initiator
        self.closed = False
        self.reason = ""
        #: The protocol's state and rules, without I/O (:mod:`.protocol`); ``closed`` mirrors
        #: its CLOSED state as a plain attribute, read on every send.
        self.protocol = LinkProtocol(initiator)
        #: A fresh correlation id for an exchange this side starts (§3.3).
        self.new_corr: Callable[[], int] = self.protocol.new_corr
        self.pending: dict[int, Reply] = {}
        self.inbound: dict[int, InboundReply] = {}
        self.streams: dict[int, Stream] = {}
        self.out: list[_Queued] = []
        self.out_bytes = 0
        self._writer = ParkingLot()
        self._room = ParkingLot()
        self.received = 0
        self.sent = 0
        #: Bytes of the frames read, and queued to be written (before encryption).
        self.received_bytes = 0
        self.sent_bytes = 0
        remoting.node.metrics.links_opened += 1
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
        #: Queued for the node's :class:`_Flusher` (sends at the end of this scheduler batch).
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

    # ---- receiving ---------------------------------------------------------------------------

    async def _read(self) -> None:
        ref_binder.set(self.remoting.bind_ref)  # refs inside bodies arrive bound (this task only)
        conn = self.conn
        try:
            await self._read_loop(conn)
        finally:
            self._reading = False
            self._answered_at = 0.0  # no next request: nothing to measure

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
                self.step_answers = 0
                if self._answered_at:
                    self._next_came()
                if frame is None:
                    self.reason = "connection closed by the peer"
                    return
            self.received += 1
            self.received_bytes += len(frame)
            # The fields as locals: the two commonest frames need no Envelope object.
            kind, corr, target, sender, endpoint, content_type, headers, deadline_ms, body = decode_parts(
                frame
            )
            if kind is _REPLY or kind is _ERROR:
                self._on_answer(kind, corr, content_type, headers, body)
                continue
            if kind is _ASK:
                self._on_ask(corr, target, sender, endpoint, content_type, headers, deadline_ms, body)
                continue
            env = Envelope(kind, corr, target, sender, endpoint, content_type, headers, deadline_ms, body)
            if kind is _TELL:
                full = self._on_tell(env)
                if full is not None:
                    self.busy = True  # waiting on a full mailbox is not silence (see _keepalive)
                    self._end_step()  # it waits: nothing queued may wait with it
                    await full
                    self._reading = True
                    self.busy = False
            elif kind is _SYSTEM:
                pending = self._on_system(env)
                if pending is not None:  # a higher layer's handler that may wait (backpressure)
                    self.busy = True
                    self._end_step()
                    await pending
                    self._reading = True
                    self.busy = False
            elif kind is _CANCEL:
                self._on_cancel(corr)
            elif kind is _STREAM_DATA:
                self._on_stream_data(env)
            elif kind is _STREAM_CREDIT:
                self._on_stream_credit(env)
            elif kind is _STREAM_CLOSE:
                self._on_stream_close(env)
            elif kind is _STREAM_OPEN:
                self._on_stream_open(env)

    def _on_answer(
        self, kind: Kind, corr: int, content_type: str, headers: dict[str, str], body: bytes
    ) -> None:
        reply = self.pending.pop(corr, None)
        if reply is None:
            return  # the caller gave up; a late answer is dropped
        self.step_answers += 1
        if headers:
            reply.headers = headers
        try:
            codec = self.remoting.codecs.get(content_type)
            value = codec.decode(body)
            if kind is _ERROR:
                reply.fail(_error_of(value))
            else:
                reply.resolve(value)
        except MicroError as exc:
            reply.fail(exc)

    def _on_ask(
        self,
        corr: int,
        target: ActorRef | None,
        sender: ActorRef | None,
        endpoint: str,
        content_type: str,
        headers: dict[str, str],
        deadline_ms: int,
        body: bytes,
    ) -> None:
        remoting = self.remoting
        protocol = self.protocol
        if corr % 2 != protocol.peer_parity or corr in self.inbound or corr in self.streams:
            try:  # (the rule, inline above for the usual case, is the protocol's: it refuses)
                protocol.check_peer_corr(corr, corr in self.inbound or corr in self.streams)
            except BadCorrelation as exc:
                self.send_error(corr, exc, remoting.codec)
                return
        try:
            codec = remoting.codecs.get(content_type)
        except MicroError as exc:
            self.send_error(corr, exc, remoting.codec)
            return
        try:
            if len(self.inbound) >= MAX_INBOUND:
                raise TooManyRequests(f"more than {MAX_INBOUND} requests in flight", id=remoting.node.id)
            cell = remoting.cell_for(self, "call", target, endpoint, headers)
            msg = codec.decode(body)
            guard = remoting.guard
            principal = None if guard is None else guard.admit(self, "call", cell, endpoint, headers, msg)
        except MicroError as exc:
            self.send_error(corr, exc, codec)
            return
        reply = InboundReply(self, corr, codec)
        sender = None if sender is None else self.peer.bind(sender)
        item = Mail()  # Mail.of written out, as on every per-message path (see actors/mail.py)
        item.msg, item.reply, item.sender = msg, reply, sender
        item.endpoint, item.headers, item.principal = endpoint or None, headers or None, principal
        if deadline_ms:
            reply.deadline = remoting.now() + min(deadline_ms, MAX_DEADLINE_MS) / 1000
        else:
            reply.deadline = math.inf  # still cancellable by the caller's CANCEL
        backlog = self.backlogs.get(cell) if self.backlogs else None
        if backlog is None and cell.handle_now(item):  # an idle actor, a handler without await
            return
        if deadline_ms:
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
            tells = _Tells(cell, codec, sender, endpoint, _NO_BODIES)
            size = len(body) + _headers_size(headers)
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
        opening = Mail.of(request, None, sender, env.endpoint, headers or None, principal)
        cell.start_stream(fn, stream, opening)

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
        try:
            stream.on_credit(check_credit(n))
        except BadCredit as exc:
            stream.fail(exc)

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
            self.protocol.handle(LinkEvent.HELLO)
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

    def unreachable(self, reason: str) -> Unreachable:
        node_id = self.peer.node_id
        err = Unreachable(f"node {node_id} unreachable: {reason}", id=node_id)
        err.maybe_delivered = True
        return err

    def _closed(self) -> None:
        if self.closed:
            return
        self.protocol.handle(LinkEvent.CLOSE)
        self.closed = True
        metrics = self.remoting.node.metrics
        metrics.links_closed += 1
        metrics.link_bytes_sent += self.sent_bytes
        metrics.link_bytes_received += self.received_bytes
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
