"""Remote actors: refs on other nodes, reached over one secure connection per pair of nodes.

A ref whose node is not this one is bound to a :class:`RemoteActor`, which has the same four
calls as a local cell (``tell``, ``try_tell``, ``ask``, ``system``), so ``tell``/``ask`` and death
watch work the same whatever the ref's location. Underneath:

- :class:`Remoting` (``node.remote``) owns the listener, the identity, the codecs and one
  :class:`Peer` per known node.
- A :class:`Peer` holds the :class:`Link` (secure connection) to one node, dials it on first use
  (one dial at a time; after a failure, new attempts wait out an exponential backoff), and
  remembers which local actors watch actors there.
- A :class:`Link` runs three tasks: a reader that decodes envelopes and dispatches them, a writer
  that sends everything queued since its last write in one coalesced, encrypted write, and a
  keepalive watchdog. When the link ends, every ask waiting on it fails at once with 503 "node
  unreachable" and watchers of actors on that node get ``Terminated``.

Requests from other nodes are queued like local ones, with an :class:`InboundReply` that sends
the answer back; their deadline bounds the handler (``Cell._handle_bounded``) and the caller's
CANCEL ends it early. See docs/protocol.md for the wire rules this follows.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias, cast

import msgpack
import trio
from nacl.signing import SigningKey
from trio.lowlevel import ParkingLot

from trimicro.mailbox.codec import Codec, CodecSet
from trimicro.mailbox.envelope import Envelope, Kind, decode_envelope, encode_envelope
from trimicro.mailbox.errors import (
    BadRequest,
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    error_from_fields,
)
from trimicro.mailbox.framing import DEFAULT_MAX_FRAME_SIZE
from trimicro.mailbox.refs import ActorRef, ref_binder
from trimicro.mailbox.secure.stream import SecureConnection, secure_client, secure_server
from trimicro.mailbox.transport import Connection, Listener, Transport, serve

from ..busypoll import DEFAULT_BUSY_POLL, PROBE_EVERY, BusyPoller
from ..cell import DEAD, FULL, OK, Cell, Reply, Stopped, current_item
from ..messages import Terminated
from ..streams import DEFAULT_WINDOW, Stream
from .tellflow import BACKLOG_BYTES, HOLD_AFTER, Backlog, on_held, on_hold
from .watch import MAX_REMOTE_WATCHES, PeerWatches, on_unwatch, on_watch

if TYPE_CHECKING:
    from ..node import Node

__all__ = [
    "AUTHORIZATION",
    "Coalesced",
    "Guard",
    "Identity",
    "InboundReply",
    "Link",
    "Peer",
    "RemoteActor",
    "Remoting",
    "Unreachable",
    "forward_auth",
]

log = logging.getLogger("trimicro.remote")

#: Bytes queued for one link before senders wait (replies and control messages never wait).
OUT_HIGH_WATER = 4 * 1024 * 1024
#: Bytes queued for one link at which it is closed (its peer is not reading our answers).
OUT_HARD_CAP = 4 * OUT_HIGH_WATER
#: Longest deadline a peer may give a request (a longer one is cut to this).
MAX_DEADLINE_MS = 3_600_000
#: Requests from one peer being served at once; more are refused with 429.
MAX_INBOUND = 16 * 1024
#: Streams open at once on one link; more are refused with 429.
MAX_STREAMS = 4096
#: Largest credit one STREAM_CREDIT may grant.
MAX_CREDIT = 1 << 20
#: Bound refs remembered per peer (so a hot sender ref is bound once, not per message).
REF_CACHE = 4096
#: Entries in one Coalesced frame, and the room kept for its envelope within the frame limit.
COALESCE_MAX = 1024
COALESCE_SLACK = 256
#: Longest a duplicate link stays open for the exchanges that started on it (see Link.retire).
RETIRE_GRACE = 60.0
#: The optional frames this node understands, listed in its hello (docs/protocol.md §4.4).
FEATURES = ["tells", "items", "tells.hold"]
RETIRE_POLL = 0.05
#: Inbound connections whose handshake is still running, at most (``start_node(max_handshakes=)``).
MAX_HANDSHAKES = 256


class Identity(Protocol):
    """What a node needs to prove who it is and to judge peers (see ``trimicro.mailbox.secure.identity``)."""

    signing_key: SigningKey
    certificate: bytes

    def verify_peer(self, id_key: bytes, cert: bytes) -> Any:
        """Return the peer's certificate (with a ``node_id``) or raise to refuse it."""
        ...


class Guard(Protocol):
    """Decides whether a request from another node may reach a local actor (authentication and
    access rules live in a higher layer: ``trimicro.cluster.auth``)."""

    def admit(
        self, link: Link, action: str, cell: Cell, endpoint: str, headers: Mapping[str, str] | None, msg: Any
    ) -> Any:
        """Return the caller's principal (the handler's ``context.account``) or raise a
        :class:`~trimicro.mailbox.errors.MicroError` (401/403) to refuse. ``action`` is
        ``"call"``, ``"tell"`` or ``"stream"``."""
        ...

    def admit_watch(self, link: Link, path: str, headers: Mapping[str, str] | None) -> Any:
        """Like :meth:`admit` for a death watch of the actor at ``path``, judged by the path
        alone: the node calls it before it looks the actor up, so that a refusal is the same
        whether the actor exists or not (see :mod:`.remote_watch`)."""
        ...

    def admit_path(
        self, link: Link, action: str, path: str, endpoint: str, headers: Mapping[str, str] | None
    ) -> Any:
        """Like :meth:`admit` for a request to ``path`` where no actor lives, judged by the path
        and endpoint alone: the node asks before it answers 404, so that a caller the rules
        refuse gets the same 401/403 whether the actor exists or not (no probing for actors)."""
        ...

    def admit_peer(self, peer_info: Any) -> None:
        """Raise to refuse a node that passed the handshake (revoked since its certificate was
        issued): no link, so none of its messages (SYSTEM ones included) reach this node."""
        ...


#: The metadata key carrying the caller's bearer token; forwarded on calls made while serving.
AUTHORIZATION = "authorization"


def forward_auth(headers: dict[str, str] | None) -> dict[str, str] | None:
    """Calls made while serving a request carry its caller's token onwards (Go Micro does the same
    with its ``Authorization`` metadata), so the next service judges the original caller."""
    item = current_item.get()
    if item is None:
        return headers
    inbound = item[4]
    if not inbound or AUTHORIZATION not in inbound or (headers and AUTHORIZATION in headers):
        return headers
    out = dict(headers) if headers else {}
    out[AUTHORIZATION] = inbound[AUTHORIZATION]
    return out


class Unreachable(ServiceUnavailable):
    """503: the node holding the actor cannot be reached (down, refused, or the link dropped).

    ``maybe_delivered`` is True when the link dropped after the request was queued for it: the
    peer may have run it. Only then is a retry elsewhere unsafe for non-idempotent calls.
    """

    maybe_delivered = False


def _fail_fields(err: MicroError) -> dict[str, Any]:
    return err.to_fields()


class InboundReply(Reply):
    """The reply slot of a request from another node: completing it sends REPLY or ERROR back."""

    __slots__ = ("codec", "corr", "link")

    def __init__(self, link: Link, corr: int, codec: Codec) -> None:
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
        self.forget_deadline()
        if self.abandoned or link.closed:
            return False
        link.answered()
        if self.error is None:
            try:
                body = self.codec.encode(self.value)
            except MicroError as exc:
                link.send_error(self.corr, exc, self.codec)
                return True
            ct = self.codec.content_type
            env = Envelope(Kind.REPLY, self.corr, content_type=ct, headers=self.headers or {}, body=body)
            try:
                frame = encode_envelope(env)
            except Exception as exc:  # reply headers the handler filled with something unencodable
                bad = InternalServerError(f"reply not encodable: {type(exc).__name__}: {exc}")
                link.send_error(self.corr, bad, self.codec)
                return True
            if not link.fits(frame):
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

    def __init__(self, link: Link, corr: int, codec: Codec) -> None:
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


class _Gone(Stopped):
    """Binding of a ref to a local actor that no longer exists (a ref from another node naming
    one of ours): like a stopped actor's own ref, except that an ask is answered 404."""

    __slots__ = ()

    def _refusal(self) -> MicroError:
        return NotFound(f"no actor {self.ref}", id=self.node.id)


class RemoteActor:
    """The binding of a ref to an actor on another node: same calls as a local cell."""

    __slots__ = ("node", "peer", "target")

    def __init__(self, peer: Peer, target: ActorRef) -> None:
        self.peer = peer
        self.node = peer.remoting.node
        self.target = target

    def __repr__(self) -> str:
        return f"<RemoteActor {self.target}>"

    async def tell(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None = None,
    ) -> None:
        """Send one-way; waits only while the link's send buffer is full, or while the peer holds
        tells to this actor back (its mailbox is backed up: see :mod:`.tellflow`). Failures are
        dead letters."""
        node = self.node
        if node.spend():
            await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.checkpoint_if_cancelled()
        headers = forward_auth(headers)
        try:
            link = self.peer.link or await self.peer.connect(node.ask_timeout)
            codec = self.peer.remoting.codec
            body = codec.encode(msg)
            if link.held:  # the peer holds back tells to some of its actors
                link = await self._credit(link)
        except MicroError as exc:
            node.dead_letter(self.target, msg, f"undeliverable: {exc.detail}", sender)
            return
        # Without headers it joins the tells queued just before it to the same actor (one frame).
        if (
            not headers
            and link.out_bytes < OUT_HIGH_WATER
            and link.tell_later(self.target, sender, endpoint or "", codec.content_type, body)
        ):
            return
        env = Envelope(
            Kind.TELL, 0, self.target, sender, endpoint or "", codec.content_type, headers or {}, 0, body
        )
        frame = encode_envelope(env)
        if link.out_bytes < OUT_HIGH_WATER and len(frame) <= link.remoting.max_frame_size:
            link.push(frame)  # Link.send without its coroutine: the usual case, no room to wait for
        else:
            try:
                await link.send(frame)
            except Unreachable as exc:  # the link dropped while this waited for room
                node.dead_letter(self.target, msg, f"undeliverable: {exc.detail}", sender)

    async def _credit(self, link: Link) -> Link:
        """Wait while the peer holds tells to this actor back and has granted no credit for
        them (a hold counts credit as a stream does); returns the link to send on."""
        while True:
            hold = link.held.get(self.target.path)
            if hold is None:
                return link
            try:
                await hold.send(None)  # takes one credit (the tell itself leaves as a TELL)
                return link
            except MicroError:
                if link.closed:  # (else the hold ended: the tell goes out freely)
                    link = self.peer.link or await self.peer.connect(self.node.ask_timeout)

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None) -> bool:
        link = self.peer.link
        if link is None or link.out_bytes >= OUT_HIGH_WATER:
            self.node.dead_letter(self.target, msg, "unreachable" if link is None else "full", sender)
            if link is None:
                self.peer.connect_soon()
            return False
        codec = self.peer.remoting.codec
        try:
            body = codec.encode(msg)
        except MicroError as exc:
            self.node.dead_letter(self.target, msg, f"undeliverable: {exc.detail}", sender)
            return False
        headers = forward_auth(headers)
        env = Envelope(Kind.TELL, 0, self.target, sender, "", codec.content_type, headers or {}, 0, body)
        frame = encode_envelope(env)
        if not link.fits(frame):
            self.node.dead_letter(self.target, msg, "too large", sender)
            return False
        if link.held:
            hold = link.held.get(self.target.path)
            if hold is not None and not hold.take_credit():  # held back, and no credit now
                self.node.dead_letter(self.target, msg, "full", sender)
                return False
        link.push(frame)
        return True

    async def ask(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None,
        timeout: float,
        reply_headers: dict[str, str] | None = None,
    ) -> Any:
        """Send a request and wait for its answer; on timeout or cancellation send CANCEL."""
        deadline = trio.current_time() + timeout
        peer = self.peer
        link = peer.link
        if link is None:
            with trio.move_on_at(deadline):
                link = await peer.connect(timeout)
            if link is None:
                raise RequestTimeout(
                    f"no connection to node {peer.node_id} within {timeout:g}s", id=self.target.path
                )
        if link.out_bytes >= OUT_HIGH_WATER:  # the send queue is full: wait for room, by the deadline
            with trio.move_on_at(deadline):
                await link.wait_room()
            if link.out_bytes >= OUT_HIGH_WATER and not link.closed:
                raise RequestTimeout(
                    f"no room to send to node {peer.node_id} within {timeout:g}s", id=self.target.path
                )
        codec = peer.remoting.codec
        body = codec.encode(msg)
        headers = forward_auth(headers)
        corr = link.new_corr()
        reply = Reply()
        env = Envelope(
            Kind.ASK,
            corr,
            self.target,
            sender,
            endpoint or "",
            codec.content_type,
            headers or {},
            max(1, math.ceil((deadline - trio.current_time()) * 1000)),  # what is left after dialing
            body,
        )
        frame = encode_envelope(env)
        pending = link.pending
        first = not pending  # no other request in flight on this link
        pending[corr] = reply
        poller = peer.remoting.poller
        if poller is not None and first:
            # Poll toward peers whose polled-for replies come in time, and now and then to any
            # peer (a probe: a peer that was slow may be fast again).
            link.lone_asks += 1
            if not (poller.worth(link.poll_time) or link.lone_asks % PROBE_EVERY == 0):
                poller = None
        else:
            poller = None
        sent_at = 0.0 if poller is None else _clock()
        reply.label = self.target.path
        reply.timeout = timeout
        wheel = self.node.timeouts
        reply.slot = wheel.add(deadline, reply)  # a cancel scope per call would cost more
        try:
            if link.out_bytes >= OUT_HIGH_WATER or not link.fits(frame):
                await link.send(frame)  # waits for room; refuses an oversized frame with 400
            elif first and not link.out:
                link.write_at_once(frame)
            else:
                link.push(frame)  # behind requests in flight: leaves with them in one write
            if poller is None:
                value = await reply.wait()
            else:
                poller.begin()
                try:
                    value = await reply.wait()
                finally:
                    poller.end()
                    # How long polled-for replies take on this link: a moving average (1/8 each).
                    link.poll_time += (_clock() - sent_at - link.poll_time) * 0.125
            if reply_headers is not None and reply.headers:
                reply_headers.update(reply.headers)
            return value
        except BaseException:
            # Timed out or cancelled before an answer came: tell the callee to stop working on it.
            reply.abandoned = True
            if pending.pop(corr, None) is not None and not link.closed:
                link.push(encode_envelope(Envelope(Kind.CANCEL, corr)))
            raise
        finally:
            if reply.slot is not None:
                wheel.remove(reply.slot, reply)
                reply.slot = None

    async def open_stream(
        self,
        endpoint: str,
        request: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        window: int,
        timeout: float,
    ) -> Stream:
        """Open a stream with a stream handler on the peer; returns once it accepted."""
        deadline = trio.current_time() + timeout
        peer = self.peer
        link = peer.link
        if link is None:
            with trio.move_on_at(deadline):
                link = await peer.connect(timeout)
            if link is None:
                raise RequestTimeout(f"no connection to node {peer.node_id} within {timeout:g}s")
        codec = peer.remoting.codec
        body = codec.encode(request)
        corr = link.new_corr()
        streams = link.streams
        stream = Stream(window, request=request, headers=headers, peer=self.target)
        stream.on_done = lambda _s: streams.pop(corr, None)
        stream.ops = RemoteStreamOps(link, corr, codec)
        meta = dict(forward_auth(headers) or {})
        meta["credit"] = str(window)
        ct = codec.content_type
        env = Envelope(Kind.STREAM_OPEN, corr, self.target, sender, endpoint, ct, meta, 0, body)
        streams[corr] = stream
        try:
            with trio.move_on_at(deadline):
                await link.send(encode_envelope(env))
                await stream.wait_accepted()
                return stream
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        await stream.aclose()
        raise RequestTimeout(f"stream {endpoint} on {self.target} not accepted within {timeout:g}s")

    def system(self, msg: Any) -> bool:
        """Runtime notices for a remote actor; only ``Terminated`` (for a remote watcher) travels."""
        if not isinstance(msg, Terminated):
            return False
        self.peer.watching.discard(msg.ref, self.target)  # the watch is over (if it was one)
        link = self.peer.link
        if link is None:
            return False
        body = self.peer.remoting.codec.encode(msg.reason)
        link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, self.target, msg.ref, "terminated", body=body)))
        return True

    def add_watcher(self, watcher: ActorRef) -> None:
        """Watch this remote actor for ``watcher`` (a local actor)."""
        self.peer.watch(self.target, watcher)

    def remove_watcher(self, watcher: ActorRef) -> None:
        self.peer.unwatch(self.target, watcher)


class Coalesced:
    """Entries (each one msgpack value, already encoded) that leave as ONE ``SYSTEM`` frame whose
    body is the msgpack array of them: many small messages of a higher layer (pub/sub) cost one
    envelope, one frame and one decode call. It sits in the link's queue like a frame, so it keeps
    its place in the order of everything sent on the link."""

    __slots__ = ("op", "parts", "size")

    def __init__(self, op: str) -> None:
        self.op = op
        self.parts: list[bytes] = []
        self.size = 0

    def frame(self) -> bytes:
        body = _array(self.parts)
        return encode_envelope(
            Envelope(Kind.SYSTEM, 0, None, None, self.op, "application/msgpack", {}, 0, body)
        )


def _array(parts: list[bytes], *first: bytes) -> bytes:
    """The msgpack array of ``first`` then ``parts`` (each one encoded value; 65535 at most)."""
    n = len(first) + len(parts)
    header = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return b"".join((header, *first, *parts))


_clock = time.perf_counter


class TellBatch:
    """Tells to one actor (same sender, endpoint and content type, no headers) that leave as ONE
    ``SYSTEM`` ``tells`` frame: its body is the msgpack array ``[endpoint, body, body, ...]``
    (each body a bin in ``content_type``). Consecutive tells share an envelope, so the receiver
    decodes one envelope for the lot (that decode was a quarter of a received tell's cost).
    It keeps its place in the link's queue, so order with everything else is kept."""

    __slots__ = ("content_type", "endpoint", "parts", "room", "sender", "size", "target")

    def __init__(self, target: ActorRef, sender: ActorRef | None, endpoint: str, content_type: str) -> None:
        self.target = target
        self.sender = sender
        self.endpoint = endpoint
        self.content_type = content_type
        self.parts: list[bytes] = []
        self.size = 0
        #: Bytes of entries that fit in a frame next to this batch's envelope.
        self.room = 0

    def frame(self) -> bytes:
        body = _array(self.parts, msgpack.packb(self.endpoint))
        env = Envelope(Kind.SYSTEM, 0, self.target, self.sender, "tells", self.content_type, {}, 0, body)
        return encode_envelope(env)


class ItemsBatch:
    """Items of one stream that leave as ONE ``SYSTEM`` ``items`` frame for stream ``corr``: its
    body is the msgpack array ``[body, body, ...]`` (each a bin in ``content_type``). A stream's
    items no longer cost an envelope and a frame each (their decode was most of a received
    item's cost); the receiver hands them to the stream one by one, so credit works as before."""

    __slots__ = ("content_type", "corr", "parts", "room", "size")

    def __init__(self, corr: int, content_type: str) -> None:
        self.corr = corr
        self.content_type = content_type
        self.parts: list[bytes] = []
        self.size = 0
        self.room = 0

    def frame(self) -> bytes:
        body = _array(self.parts)
        return encode_envelope(
            Envelope(Kind.SYSTEM, self.corr, None, None, "items", self.content_type, {}, 0, body)
        )


#: What a link's send queue holds: frames, and batches that become a frame when written.
_Queued: TypeAlias = bytes | Coalesced | TellBatch | ItemsBatch


def _is_tell(frame: bytes) -> bool:
    """Whether one of our encoded envelopes is a TELL: ``[version, kind, ...]``, both fixints."""
    return len(frame) > 2 and frame[2] == Kind.TELL


def _bin(data: bytes) -> bytes:
    """``data`` as a msgpack bin."""
    n = len(data)
    if n < 0x100:
        return b"\xc4" + bytes((n,)) + data
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big") + data
    return b"\xc6" + n.to_bytes(4, "big") + data


class _Tells(NamedTuple):
    """Received tells to one actor on their way into its mailbox (a batch, or one TELL whose
    message is decoded already: no bodies, and its headers)."""

    cell: Cell
    codec: Codec
    sender: ActorRef | None
    endpoint: str
    bodies: list[bytes]
    headers: dict[str, str] | None = None


#: The bodies of a single TELL (its message is decoded as it arrives).
_NO_BODIES: list[bytes] = []


def _batch_of(body: bytes, what: str) -> list[Any]:
    """The array of a ``tells`` or ``items`` batch (at most one header and COALESCE_MAX bodies,
    no maps or extensions); :class:`BadRequest` if malformed."""
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            max_array_len=COALESCE_MAX + 1,
            max_str_len=len(body),
            max_bin_len=len(body),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:
        raise BadRequest(f"malformed {what} batch: {exc}") from None
    if type(obj) is not list:
        raise BadRequest(f"a {what} batch is an array")
    return obj


def _tells_of(body: bytes) -> tuple[str, list[bytes]]:
    """The endpoint and message bodies of a ``tells`` batch; :class:`BadRequest` if malformed."""
    obj = _batch_of(body, "tells")
    if len(obj) < 2 or type(obj[0]) is not str or any(type(b) is not bytes for b in obj[1:]):
        raise BadRequest("a tells batch is [endpoint: str, body: bin, ...]")
    return obj[0], obj[1:]


def _items_of(body: bytes) -> list[bytes]:
    """The item bodies of an ``items`` batch; :class:`BadRequest` if malformed."""
    obj = _batch_of(body, "items")
    if not 1 <= len(obj) <= COALESCE_MAX or any(type(b) is not bytes for b in obj):
        raise BadRequest(f"an items batch is [body: bin, ...] (1 to {COALESCE_MAX} bodies)")
    return obj


def _nothing() -> None:
    pass


class _Flusher(trio.abc.Instrument):
    """Sends, just before trio waits for I/O, what tasks queued on links during the scheduler
    batch that is ending: every frame of the batch in one write per link, with no writer task
    to wake (that task's turn cost a scheduler pass on each request's path). A link whose
    socket will not take it all, or whose writer is busy, leaves the rest to its writer task.

    A trio instrument (one per node, installed by the first link that needs it): its
    ``before_io_wait`` runs once per scheduler batch, outside every task.
    """

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.installed = False
        self._token: trio.lowlevel.TrioToken | None = None

    def add(self, link: Link) -> None:
        if not self.installed:
            trio.lowlevel.add_instrument(self)
            self._token = trio.lowlevel.current_trio_token()
            self.installed = True
        self.links.append(link)

    def before_io_wait(self, timeout: float) -> None:
        links = self.links
        if not links:
            return
        self.links = []
        woke = False
        try:
            for link in links:
                # Flushing wakes senders waiting for room and flush() callers; what the socket
                # does not take wakes the writer.
                woke = woke or bool(link._room) or link._flushed is not None
                link.flush_now()
                woke = woke or bool(link.out) or link.conn.backlog or link.closed
        finally:
            for link in links:
                link._dirty = False
        # trio chose how long to wait before calling this hook: a task woken here must not
        # wait for the next I/O event or timer, so end the wait at once. (Known from the
        # links rather than from trio's run statistics, which cost more than the flush.)
        if woke and timeout > 0 and self._token is not None:
            self._token.run_sync_soon(_nothing)

    def uninstall(self) -> None:
        if self.installed:
            self.installed = False
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(self)
            for link in self.links:  # (none are left unless the node stops mid-batch)
                link.flush_now()
            self.links = []


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
        #: their estimated bytes; the reader waits on ``_backlog_room`` past BACKLOG_BYTES.
        self.backlogs: dict[Cell, Backlog] = {}
        self.backlog_bytes = 0
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
        item = (msg, reply, sender, env.endpoint or None, env.headers or None, principal)
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
            # (its deadline and the caller's CANCEL still end it while it waits).
            self.inbound[corr] = reply
            tells = _Tells(cell, codec, sender, env.endpoint, _NO_BODIES)
            self.backlog_bytes += backlog.add(item, tells, 0, credit=False)
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
        item = (msg, None, sender, env.endpoint or None, env.headers or None, principal)
        if self.backlogs:
            backlog = self.backlogs.get(cell)
            if backlog is not None:  # its earlier tells wait there: this one joins them
                return self._queue(backlog, item, _Tells(cell, codec, sender, env.endpoint, _NO_BODIES), 0)
        offered = cell.offer(item)
        if offered == OK:
            return None
        if offered == DEAD:  # stopped between lookup and offer: nothing to wait for
            remoting.node.dead_letter(cell.ref, msg, "stopped", sender)
            return None
        return self._put_tells(_Tells(cell, codec, sender, env.endpoint, _NO_BODIES), -1, item)

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

    def offer_tells(self, tells: _Tells, start: int) -> tuple[int, tuple[Any, ...]] | None:
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
            item = (msg, None, sender, endpoint or None, headers, principal)
            offered = cell.offer(item)
            if offered == DEAD:
                remoting.node.dead_letter(cell.ref, msg, "stopped", sender)
            elif offered != OK:
                return i, item
        return None

    async def _put_tells(self, tells: _Tells, i: int, item: tuple[Any, ...]) -> None:
        """Wait for room for the tell at ``i``, then offer the rest, waiting again as needed (a
        loop: a slow consumer must not deepen a chain of awaits by one per tell).

        The rest of the link waits meanwhile: with a peer that holds its tells back on request,
        at most HOLD_AFTER; then the actor counts as slow, its tells wait in a backlog and the
        peer is asked to hold them (see :mod:`.tellflow`).
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
                    pending = self._queue(self._backlog(cell), item, tells, i + 1)
                    if pending is not None:
                        await pending
                    return
                deadline = trio.current_time() + HOLD_AFTER
            if result == DEAD:
                node.dead_letter(cell.ref, item[0], "stopped", item[2])
            full = self.offer_tells(tells, i + 1)
            if full is None:
                return
            i, item = full

    def _backlog(self, cell: Cell) -> Backlog:
        """Hold the peer's tells to ``cell`` back: they wait in a backlog that grants credit
        for more as it drains, under a new id that the ``tells.hold`` frame gives the peer."""
        corr = self.new_corr()
        ops = RemoteStreamOps(self, corr, self.remoting.codec)
        backlog = self.backlogs[cell] = Backlog(self, cell, corr, ops)
        self.push(encode_envelope(Envelope(Kind.SYSTEM, corr, cell.ref, None, "tells.hold")))
        self.remoting.node.spawn_system(backlog.run)
        return backlog

    def _queue(
        self, backlog: Backlog, item: tuple[Any, ...] | None, tells: _Tells, start: int
    ) -> Awaitable[None] | None:
        """Add tells to ``backlog``; past BACKLOG_BYTES on this link (a peer that does not hold
        back), what the reader awaits until the backlogs drain."""
        self.backlog_bytes += backlog.add(item, tells, start)
        return self._backlog_drains() if self.backlog_bytes > BACKLOG_BYTES else None

    async def _backlog_drains(self) -> None:
        while self.backlog_bytes > BACKLOG_BYTES and not self.closed:
            await self._backlog_room.park()

    def backlog_drained(self, size: int) -> None:
        """``size`` estimated bytes left the backlogs (see :meth:`_queue`)."""
        self.backlog_bytes -= size
        if self._backlog_room and self.backlog_bytes <= BACKLOG_BYTES:
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
        cell.start_stream(fn, stream, (request, None, sender, env.endpoint, headers or None, principal))

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


class Peer:
    """Another node as seen from this one: its link when up, how to dial it, who watches what there."""

    def __init__(self, remoting: Remoting, node_id: str) -> None:
        self.remoting = remoting
        self.node_id = node_id
        self.address: str | None = None
        self.links: list[Link] = []
        self._dialing: trio.Event | None = None
        self._failures = 0
        self._retry_at = -math.inf
        self._last_error = ""
        self._refs: dict[ActorRef, ActorRef] = {}
        #: remote actor -> local watchers, in the order they came: the first is the one named
        #: in the ``watch`` frame (any stands for all; see :meth:`unwatch`).
        self.watched: dict[ActorRef, dict[ActorRef, None]] = {}
        #: Its watches of our actors (bounded; all removed when it goes).
        self.watching = PeerWatches()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of this peer's links (for tools and tests)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<Peer {self.node_id} at {self.address} links={len(self.links)}>"

    @property
    def link(self) -> Link | None:
        """The link new traffic uses (both nodes pick the same one when two exist)."""
        links = self.links
        return links[0] if links else None

    def bind(self, ref: ActorRef) -> ActorRef:
        """``ref`` (an actor on this peer) bound to a :class:`RemoteActor`, cached."""
        bound = self._refs.get(ref)
        if bound is None:
            if len(self._refs) >= REF_CACHE:
                self._refs.clear()
            bound = self._refs[ref] = ref.bind(RemoteActor(self, ref))
        return bound

    # ---- links ---------------------------------------------------------------------------------

    def add_link(self, link: Link) -> None:
        """Register a new link; with two, both nodes keep the one dialed by the smaller node id."""
        links = self.links
        links.append(link)
        if len(links) == 1:
            for hook in list(self.remoting.on_peer_up):
                hook(self)
        self._failures = 0
        self._retry_at = -math.inf
        if len(links) > 1:
            local = self.remoting.node.id

            def rank(candidate: Link) -> tuple[int, int]:
                dialer = local if candidate.initiator else self.node_id
                # Newer links from the same dialer replace older ones (the peer reconnected).
                return (0 if dialer == min(local, self.node_id) else 1, -candidate.seq)

            links.sort(key=rank)
            for extra in links[1:]:
                if extra.initiator:  # the dialer of a losing link retires it, after a last flush
                    self.remoting.node.spawn_system(extra.retire)
        self._notify()

    def restarted(self, link: Link) -> None:
        """``link`` told us the peer's incarnation: links to an earlier run of it are dead (the
        old process may never close them, e.g. when it hangs), so close them now rather than
        after ``dead_after`` seconds of silence, and treat the old run as gone (its actors
        stopped: their watchers hear so) and the new one as come (``on_peer_up``)."""
        stale = [
            other
            for other in self.links
            if other is not link and other.incarnation is not None and other.incarnation != link.incarnation
        ]
        if not stale:
            return
        for other in stale:
            other.close("the peer restarted")
            self.links.remove(other)  # at once: the new run is the only one from now on
        self._forget_run("the peer restarted")
        for hook in list(self.remoting.on_peer_up):
            hook(self)
        self._notify()

    def _forget_run(self, reason: str) -> None:
        """The peer's process is gone: tell watchers of its actors, forget its watches of ours."""
        watched, self.watched = self.watched, {}
        for ref, watchers in watched.items():
            for watcher in watchers:
                binding = watcher.binding
                if binding is not None:
                    binding.system(Terminated(self.bind(ref), f"node unreachable: {reason}"))
        watching, self.watching = self.watching, PeerWatches()
        watching.drop_all(self.remoting.node.cells)
        self._refs = {}  # (bound refs to a run that is gone: a peer that flooded us leaves none)

    def link_closed(self, link: Link) -> None:
        if link in self.links:
            self.links.remove(link)
        self._notify()
        if not self.links:
            reason = link.reason or "connection lost"
            for hook in list(self.remoting.on_peer_lost):
                hook(self, reason)
            self._forget_run(reason)
            self.remoting.dormant(self)

    def send_system(self, op: str, body: bytes, target: ActorRef | None = None) -> bool:
        """Queue a SYSTEM ``op`` on the current link; ``False`` (and a dial started) if none."""
        link = self.link
        if link is None:
            self.connect_soon()
            return False
        link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, target, None, op, body=body)))
        return True

    def connect_soon(self) -> None:
        if self.link is None and self._dialing is None:
            self.remoting.node.spawn_system(self._connect_quietly)

    async def _connect_quietly(self) -> None:
        with contextlib.suppress(MicroError):
            await self.connect(self.remoting.node.ask_timeout)

    async def connect(self, timeout: float) -> Link:
        """The current link, dialing if there is none (one dial at a time, with backoff)."""
        while True:
            link = self.link
            if link is not None:
                return link
            if self._dialing is None:
                break
            await self._dialing.wait()
            if self.link is None and trio.current_time() < self._retry_at:  # that dial failed
                raise Unreachable(f"node {self.node_id} unreachable: {self._last_error}", id=self.node_id)
            # (else it was cancelled, its caller's deadline passed: dial again, within ours)
        now = trio.current_time()
        if now < self._retry_at:
            raise Unreachable(
                f"node {self.node_id} unreachable: {self._last_error} (retry in {self._retry_at - now:.2f}s)",
                id=self.node_id,
            )
        address = self.address or self.remoting.address_of(self.node_id)
        if address is None:
            raise Unreachable(f"node {self.node_id} unreachable: no known address", id=self.node_id)
        event = self._dialing = trio.Event()
        try:
            return await self.remoting.dial(address, timeout, expect=self.node_id)
        except MicroError as exc:
            self._failures += 1
            self._last_error = exc.detail
            backoff = min(5.0, 0.05 * 2 ** min(self._failures, 10))
            self._retry_at = trio.current_time() + backoff * (0.5 + self.remoting.node.rng.random() / 2)
            raise Unreachable(f"node {self.node_id} unreachable: {exc.detail}", id=self.node_id) from exc
        finally:
            self._dialing = None
            event.set()

    # ---- death watch ---------------------------------------------------------------------------

    def watch(self, target: ActorRef, watcher: ActorRef) -> None:
        watchers = self.watched.get(target)
        if watchers is None:
            watchers = self.watched[target] = {}
        first = not watchers
        watchers[watcher] = None
        if first:
            self.remoting.node.spawn_system(self._send_watch, target)

    async def _send_watch(self, target: ActorRef) -> None:
        try:
            link = await self.connect(self.remoting.node.ask_timeout)
        except MicroError as exc:
            watchers = self.watched.pop(target, {})
            for w in watchers:
                if w.binding is not None:
                    w.binding.system(Terminated(self.bind(target), f"node unreachable: {exc.detail}"))
            return
        now = self.watched.get(target)
        if now:  # (all may have unwatched while the link was dialed)
            # Any local watcher stands for all of them: the peer answers "terminated" once.
            self._send_watch_op(link, "watch", target, next(iter(now)))

    @staticmethod
    def _send_watch_op(link: Link, op: str, target: ActorRef, watcher: ActorRef) -> None:
        link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, target, watcher, op)))

    def unwatch(self, target: ActorRef, watcher: ActorRef) -> None:
        """The peer knows the watch by the watcher named in it (the first local one), and only
        that one undoes it: when that watcher leaves and others remain, the watch is moved to
        the next one (watch it, then unwatch the first), so the peer keeps exactly one."""
        watchers = self.watched.get(target)
        if not watchers or watcher not in watchers:
            return
        named = next(iter(watchers))
        del watchers[watcher]
        if watchers and watcher != named:
            return
        if not watchers:
            del self.watched[target]
        link = self.link
        if link is None or self._dialing is not None:
            return  # nothing sent yet, or _send_watch will name the current first watcher
        if watchers:
            self._send_watch_op(link, "watch", target, next(iter(watchers)))
        self._send_watch_op(link, "unwatch", target, watcher)

    def terminated(self, ref: ActorRef, watcher: ActorRef, reason: str | None) -> None:
        """The peer says ``ref`` stopped: tell every local watcher once."""
        watchers = self.watched.pop(ref, None)
        if watchers is None and ref.uid:  # watched by path ("whoever holds it", uid 0)
            ref = ActorRef(ref.node, ref.path, 0)
            watchers = self.watched.pop(ref, None)
        if watchers is None:
            return
        bound = self.bind(ref)  # the ref as the watchers know it
        for w in watchers:
            if w.binding is not None:
                w.binding.system(Terminated(bound, reason))


class Remoting:
    """A node's connections to other nodes: listener, identity, codecs and peers."""

    def __init__(
        self,
        node: Node,
        nursery: trio.Nursery,
        *,
        transport: Transport,
        identity: Callable[[], Identity],
        codecs: CodecSet,
        keepalive: float = 1.0,
        dead_after: float = 10.0,
        handshake_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        busy_poll: float = DEFAULT_BUSY_POLL,
        max_handshakes: int = MAX_HANDSHAKES,
    ) -> None:
        self.node = node
        self._nursery = nursery
        #: Polls for the reply of a lone request instead of sleeping (see :mod:`.busypoll`).
        self.poller: BusyPoller | None = BusyPoller(nursery, busy_poll) if busy_poll else None
        self.transport = transport
        self._identity_factory = identity
        self._identity: Identity | None = None
        self.codecs = codecs
        self.codec = codecs.get()
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.handshake_timeout = handshake_timeout
        #: Inbound connections still in their handshake, and how many may be: an unauthenticated
        #: connection costs buffers and a task for up to ``handshake_timeout``, so beyond the cap
        #: a new one is closed at once (established links are not counted).
        self.handshaking = 0
        self.max_handshakes = max_handshakes
        #: Connections closed at once because the cap was reached (and when that was last logged).
        self.refused_handshakes = 0
        self._refusal_logged = -math.inf
        #: Watches one peer may hold on this node's actors (see :mod:`.remote_watch`).
        self.max_watches = MAX_REMOTE_WATCHES
        self.max_frame_size = max_frame_size
        self.peers: dict[str, Peer] = {}
        self._dormant: weakref.WeakValueDictionary[str, Peer] = weakref.WeakValueDictionary()
        self.listener: Listener | None = None
        self._serve_scope = trio.CancelScope()
        self.link_seq = itertools.count()
        #: This run of the node, told to peers in ``hello``: a new one means "I restarted".
        self.incarnation = secrets.token_hex(8)
        #: Hook for discovery: node id -> address, consulted when a peer's address is unknown.
        self.resolve: Callable[[str], str | None] | None = None
        #: SYSTEM operations handled by higher layers: ``endpoint -> handler(link, envelope)``;
        #: a handler may return an awaitable, which the link's reader awaits (backpressure).
        self.system_handlers: dict[str, Callable[[Link, Envelope], Awaitable[object] | None]] = {}
        #: Called with ``(peer, reason)`` when a peer's last link closes (failure detectors).
        self.on_peer_lost: list[Callable[[Peer, str], None]] = []
        #: Admits or refuses each request from another node (``None``: every peer that passed
        #: the handshake may call anything; ``trimicro.cluster.auth`` installs one).
        self.guard: Guard | None = None
        #: Called with ``peer`` when a peer gains its first link.
        self.on_peer_up: list[Callable[[Peer], None]] = []
        #: Writes what links queued, once per scheduler batch.
        self.flusher = _Flusher()

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self._identity_factory()
        return self._identity

    @property
    def address(self) -> str | None:
        return None if self.listener is None else self.listener.address

    def address_of(self, node_id: str) -> str | None:
        return None if self.resolve is None else self.resolve(node_id)

    def peer(self, node_id: str) -> Peer:
        peer = self.peers.get(node_id)
        if peer is None:
            peer = self._dormant.pop(node_id, None) or Peer(self, node_id)
            self.peers[node_id] = peer
        return peer

    def dormant(self, peer: Peer) -> None:
        """A peer with no link and nothing watched there leaves :attr:`peers` (which would
        otherwise grow with every node ever seen, e.g. each CLI run). It stays reachable by
        weak reference while refs bound to it exist, so it is revived, never duplicated."""
        if (
            peer.links
            or peer.watched
            or peer._dialing is not None
            or self.peers.get(peer.node_id) is not peer
        ):
            return
        del self.peers[peer.node_id]
        self._dormant[peer.node_id] = peer

    def bind_ref(self, ref: ActorRef) -> ActorRef:
        """Bind a ref decoded from the wire: a local cell, a remote actor, or a dead local one."""
        node = self.node
        if ref.node != node.id:
            return self.peer(ref.node).bind(ref)
        cell = node.cells.get(ref.path)
        if cell is None or (ref.uid and cell.ref.uid != ref.uid):
            return ref.bind(_Gone(node, ref))
        return cell.ref

    def cell_for(
        self, link: Link, action: str, target: ActorRef | None, endpoint: str, headers: Mapping[str, str]
    ) -> Cell:
        """:meth:`local_cell` for a request that is answered: a missing actor is first judged
        by the guard on its path (:meth:`Guard.admit_path`), so a refused caller gets its
        401/403, never a 404 that would tell it that nothing lives there."""
        try:
            return self.local_cell(target)
        except NotFound:
            guard = self.guard
            if guard is not None and target is not None and target.node == self.node.id:
                guard.admit_path(link, action, target.path, endpoint, headers)
            raise

    def local_cell(self, target: ActorRef | None) -> Cell:
        """The live local actor an incoming message is for, or :class:`NotFound`."""
        node = self.node
        if target is None or target.node != node.id:
            raise NotFound(f"message for {target} reached node {node.id}", id=node.id)
        cell = node.cells.get(target.path)
        if cell is None or (target.uid and cell.ref.uid != target.uid):
            raise NotFound(f"no actor {target}", id=node.id)
        return cell

    # ---- listening and dialing -----------------------------------------------------------------

    async def listen(self, address: str) -> str:
        """Accept connections from other nodes on ``address``; returns the bound address."""
        if self.listener is not None:
            raise RuntimeError(f"node {self.node.id} already listens on {self.listener.address}")
        _ = self.identity  # load or create it now, so a bad identity fails the start, not a peer
        self.listener = await self.transport.listen(address)
        await self._nursery.start(self._serve, self.listener)
        return self.listener.address

    async def _serve(self, listener: Listener, *, task_status: trio.TaskStatus[None]) -> None:
        with self._serve_scope:
            await serve(listener, self._accepted, task_status=task_status)

    async def _accepted(self, conn: Connection) -> None:
        if self.handshaking >= self.max_handshakes:
            self._refuse_handshake()
            return  # (``serve`` closes the connection)
        identity = self.identity
        self.handshaking += 1
        try:
            secure = await secure_server(
                conn,
                identity.signing_key,
                identity.certificate,
                identity.verify_peer,
                self.handshake_timeout,
                max_frame_size=self.max_frame_size,
            )
        finally:
            self.handshaking -= 1
        node_id = _node_id_of(secure.peer_info)
        if node_id == self.node.id:
            raise Unreachable("refusing a connection from a node with this node's own id")
        if self.guard is not None:
            try:
                self.guard.admit_peer(secure.peer_info)
            except MicroError as exc:
                log.warning("refused a link from node %s: %s", node_id, exc.detail)
                await secure.aclose()
                return
        peer = self.peer(node_id)
        link = Link(self, peer, secure, initiator=False)
        peer.add_link(link)
        link.push(self._hello())
        await link.run()

    def _refuse_handshake(self) -> None:
        """Count a connection closed for the handshake cap; log it at most every 10 s."""
        self.refused_handshakes += 1
        now = trio.current_time()
        if now - self._refusal_logged >= 10.0:
            self._refusal_logged = now
            log.warning(
                "%d connections in their handshake: refusing new ones (%d so far)",
                self.handshaking,
                self.refused_handshakes,
            )

    async def dial(self, address: str, timeout: float, *, expect: str | None = None) -> Link:
        """Open a secure link to the node at ``address`` (and check it is ``expect`` if given)."""
        identity = self.identity
        with trio.move_on_after(timeout) as scope:
            conn = await self.transport.dial(address, timeout)
            secure = await secure_client(
                conn,
                identity.signing_key,
                identity.certificate,
                identity.verify_peer,
                min(timeout, self.handshake_timeout),
                max_frame_size=self.max_frame_size,
            )
        if scope.cancelled_caught:
            raise RequestTimeout(f"connecting to {address} took more than {timeout:g}s")
        node_id = _node_id_of(secure.peer_info)
        if (expect is not None and node_id != expect) or node_id == self.node.id:
            await secure.aclose()
            raise Unreachable(f"{address} is node {node_id}, not {expect or 'another node'}")
        if self.guard is not None:
            try:
                self.guard.admit_peer(secure.peer_info)
            except MicroError:
                await secure.aclose()
                raise Unreachable(f"node {node_id} is refused here") from None
        peer = self.peer(node_id)
        peer.address = address
        link = Link(self, peer, secure, initiator=True)
        peer.add_link(link)
        link.push(self._hello())
        self._nursery.start_soon(link.run)
        return link

    def _hello(self) -> bytes:
        """Where this node listens, which run of it this is (a restart is a new incarnation), and
        which optional frames it understands (``tells`` and ``items``: batches of tells and of
        stream items)."""
        hello = self.codec.encode(
            {"address": self.address or "", "incarnation": self.incarnation, "features": FEATURES}
        )
        return encode_envelope(Envelope(Kind.SYSTEM, endpoint="hello", body=hello))

    async def connect(self, address: str, timeout: float | None = None) -> str:
        """Dial ``address`` unless a link to that node exists; return the node's id."""
        for peer in self.peers.values():
            if peer.address == address and peer.link is not None:
                return peer.node_id
        link = await self.dial(address, self.node.ask_timeout if timeout is None else timeout)
        return link.peer.node_id

    async def aclose(self, flush_timeout: float = 1.0) -> None:
        """Stop listening, send what is queued (a membership leave, last answers) within
        ``flush_timeout``, and close every link (peers see a clean end, then "node unreachable")."""
        links = [link for peer in list(self.peers.values()) for link in peer.links]
        with trio.move_on_after(flush_timeout):
            for link in links:
                await link.flush()
        try:
            self._serve_scope.cancel()  # also ends the accepted links' tasks
            if self.listener is not None:
                await self.listener.aclose()
            for link in links:
                link.close("node shutting down")
        finally:
            self.flusher.uninstall()


#: Initial credit when a STREAM_OPEN carries no ``credit`` header (docs/protocol.md §4.3).
PROTOCOL_DEFAULT_CREDIT = 64


def _error_of(fields: Any) -> MicroError:
    """The typed error in an error map from a peer; ``BadRequest`` if the map is malformed."""
    if (
        not isinstance(fields, dict)
        or type(fields.get("code", 500)) is not int
        or not all(isinstance(fields.get(k, ""), str) for k in ("id", "detail", "status"))
    ):
        return BadRequest("malformed error map from the peer")
    return error_from_fields(fields)


def _credit_header(value: str | None) -> int:
    if value is None:
        return PROTOCOL_DEFAULT_CREDIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_CREDIT:
        raise BadRequest("the credit header is an integer from 1 to 2^20")
    return int(value)


def _node_id_of(peer_info: Any) -> str:
    node_id = getattr(peer_info, "node_id", None)
    if not isinstance(node_id, str) or not node_id:
        raise Unreachable("the peer's certificate names no node id")
    return node_id
