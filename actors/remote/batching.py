"""What a link queues besides single frames: many small messages that leave as one frame.

:class:`Coalesced` (entries of a higher layer, pub/sub, in one ``SYSTEM`` frame), :class:`TellBatch`
and :class:`ItemsBatch` (tells and stream items to one target, in one ``TELLS``/``ITEMS`` frame, the
optional frames of docs/protocol.md §4.4), and the decoders the reader uses for those frames.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, TypeAlias

import msgpack

from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Kind, encode_parts, ref_fields
from trimicro.mailbox.errors import BadRequest
from trimicro.mailbox.refs import ActorRef

from ..cell import Cell
from . import COALESCE_MAX


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
        return encode_parts(_SYSTEM, 0, None, None, self.op, "application/msgpack", {}, 0, body)


def _array(parts: list[bytes], *first: bytes) -> bytes:
    """The msgpack array of ``first`` then ``parts`` (each one encoded value; 65535 at most)."""
    n = len(first) + len(parts)
    header = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return b"".join((header, *first, *parts))


_clock = time.perf_counter

#: A batch's kind, as an int: reading an enum member costs more than packing it.
_SYSTEM = int(Kind.SYSTEM)


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
        target, sender = ref_fields(self.target), ref_fields(self.sender)
        return encode_parts(_SYSTEM, 0, target, sender, "tells", self.content_type, {}, 0, body)


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
        return encode_parts(_SYSTEM, self.corr, None, None, "items", self.content_type, {}, 0, body)


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
