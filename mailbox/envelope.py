"""The message envelope: what travels in one frame, and its strict msgpack wire form.

The envelope carries routing and control (kind, correlation id, addresses, endpoint,
metadata, deadline) around a body that is already encoded by the codec named in
``content_type``; it never decodes bodies, so codecs can change without touching the
protocol. :func:`decode_envelope` faces untrusted peers: it bounds every allocation by the
input's size and reports every malformation as a :class:`ProtocolError`, nothing else.
See ``docs/protocol.md`` for the specification.
"""

from __future__ import annotations

import threading
from enum import IntEnum
from typing import Any

import attrs
import msgpack

from trimicro.mailbox.framing import ProtocolError
from trimicro.mailbox.refs import ActorRef

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "ENVELOPE_FIELDS",
    "PROTOCOL_VERSION",
    "Envelope",
    "EnvelopeParts",
    "Kind",
    "MalformedEnvelope",
    "UnknownKind",
    "UnsupportedVersion",
    "decode_envelope",
    "decode_parts",
    "encode_envelope",
    "encode_parts",
    "ref_fields",
]

#: The envelope layout version written as the first array element.
PROTOCOL_VERSION = 1

#: Number of elements in a version-1 envelope array.
ENVELOPE_FIELDS = 10

#: Codec assumed when an envelope names none.
DEFAULT_CONTENT_TYPE = "application/msgpack"

#: Default decoding limits for metadata: generous for tracing and auth, small enough that
#: metadata can never dominate a frame.
DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_HEADER_BYTES = 8 * 1024

_MAX_UINT64 = 0xFFFFFFFFFFFFFFFF


class UnsupportedVersion(ProtocolError):
    """The peer speaks an envelope version this node does not."""


class UnknownKind(ProtocolError):
    """The envelope's kind is not one this version defines."""


class MalformedEnvelope(ProtocolError):
    """Not a valid envelope: bad msgpack, wrong field count or types, or limits exceeded."""


class Kind(IntEnum):
    """What an envelope asks of its receiver (see ``docs/protocol.md`` for each one's rules)."""

    TELL = 1
    """One-way message; no answer."""
    ASK = 2
    """Request expecting exactly one REPLY or ERROR with the same ``corr``."""
    REPLY = 3
    """Successful answer to the ASK with the same ``corr``."""
    ERROR = 4
    """Failed answer; body is the codec-encoded map ``{id, code, detail, status}``."""
    CANCEL = 5
    """The caller gave up on ``corr`` (an ASK or a stream)."""
    STREAM_OPEN = 6
    """Opens stream ``corr`` on ``endpoint``; initial credit in header ``"credit"``."""
    STREAM_DATA = 7
    """One item of stream ``corr``."""
    STREAM_CREDIT = 8
    """The receiver of stream ``corr`` accepts ``body`` (a uint) more items."""
    STREAM_CLOSE = 9
    """Ends the sender's direction of stream ``corr``; an error map body means failure."""
    SYSTEM = 10
    """Node-level message (heartbeat, watch, terminated), named by ``endpoint``."""


_KINDS: dict[int, Kind] = {int(kind): kind for kind in Kind}


@attrs.define(slots=True)
class Envelope:
    """One message on the wire, with its body still encoded.

    A plain (not frozen) attrs class: one is built for every message sent and every message
    received, and a frozen attrs class costs about 2.5x as much to build. Treat it as a value
    anyway: nothing changes an envelope after building it.

    No validators run on construction (this is built for every message); the types are
    checked statically, and :func:`decode_envelope` checks everything a peer sends.
    ``deadline_ms`` is the caller's *remaining* budget when sent, not a clock time, so it
    survives clock skew between nodes; 0 means no deadline.
    """

    kind: Kind
    corr: int = 0
    target: ActorRef | None = None
    sender: ActorRef | None = None
    endpoint: str = ""
    content_type: str = DEFAULT_CONTENT_TYPE
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    deadline_ms: int = 0
    body: bytes = b""


def encode_envelope(env: Envelope) -> bytes:
    """The envelope as one msgpack array, ready to be a frame payload.

    Trusts its input (types are the static ones); a peer's :func:`decode_envelope` is the check.
    """
    target = env.target
    sender = env.sender
    return encode_parts(
        int(env.kind),
        env.corr,
        None if target is None else [target.node, target.path, target.uid],
        None if sender is None else [sender.node, sender.path, sender.uid],
        env.endpoint,
        env.content_type,
        env.headers,
        env.deadline_ms,
        env.body,
    )


def ref_fields(ref: ActorRef | None) -> list[Any] | None:
    """A ref as the envelope's ``[node, path, uid]`` (nil for none), for :func:`encode_parts`:
    a sender that sends to one actor many times builds this once (refs are immutable)."""
    return None if ref is None else [ref.node, ref.path, ref.uid]


def encode_parts(
    kind: int,
    corr: int,
    target: list[Any] | None,
    sender: list[Any] | None,
    endpoint: str,
    content_type: str,
    headers: dict[str, str],
    deadline_ms: int,
    body: bytes,
) -> bytes:
    """The bytes :func:`encode_envelope` makes of an envelope with these fields, the refs given
    as :func:`ref_fields`, without building the :class:`Envelope`.

    The hot paths (a request, its answer) send with this: an envelope object costs as much to
    build as to pack, and a request's sender reuses its target's fields. Same wire form.
    """
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    packed: bytes = packer.pack(
        [PROTOCOL_VERSION, kind, corr, target, sender, endpoint, content_type, headers, deadline_ms, body]
    )
    return packed


#: One reusable packer per thread: ~40% faster than ``msgpack.packb`` (which builds a packer
#: per call), and a ``Packer`` must not be shared between threads.
_local = threading.local()


def decode_envelope(
    data: bytes | bytearray | memoryview,
    *,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Envelope:
    """Parse and validate one envelope from untrusted bytes.

    Raises :class:`UnsupportedVersion`, :class:`UnknownKind` or :class:`MalformedEnvelope`
    (all :class:`ProtocolError`) and nothing else. Allocation is bounded by ``len(data)``:
    msgpack is told that no string or binary is longer than the input, that arrays have at
    most :data:`ENVELOPE_FIELDS` elements, that the only map has at most ``max_headers``
    entries, and that no extension types occur.
    """
    return Envelope(*decode_parts(data, max_headers=max_headers, max_header_bytes=max_header_bytes))


#: An envelope's fields in wire order after the version, validated: what :func:`decode_parts`
#: returns (``kind, corr, target, sender, endpoint, content_type, headers, deadline_ms, body``).
EnvelopeParts = tuple[Kind, int, ActorRef | None, ActorRef | None, str, str, dict[str, str], int, bytes]


def decode_parts(
    data: bytes | bytearray | memoryview,
    *,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> EnvelopeParts:
    """:func:`decode_envelope`'s fields, checked the same way, without building the
    :class:`Envelope`: a link's reader unpacks them into locals for the frames it handles
    most (a request, an answer), where the object cost as much as the rest of the checks."""
    size = len(data)
    try:
        obj = _unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=ENVELOPE_FIELDS,
            max_map_len=max_headers,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types; all mean "malformed"
        version = _peek_version(data)
        if version is not None and version != PROTOCOL_VERSION:
            raise UnsupportedVersion(_unsupported(version)) from None
        raise MalformedEnvelope(f"not a valid msgpack envelope: {exc}") from None

    if (
        type(obj) is not list
        or len(obj) != ENVELOPE_FIELDS
        or type(obj[0]) is not int
        or obj[0] != PROTOCOL_VERSION
    ):
        _refuse_layout(obj)
    _, kind, corr, target, sender, endpoint, content_type, headers, deadline_ms, body = obj

    known = _KINDS.get(kind) if type(kind) is int else None
    if known is None:
        if type(kind) is not int:
            raise MalformedEnvelope(f"kind must be an int, not {type(kind).__name__}")
        raise UnknownKind(f"unknown envelope kind {kind}")
    if type(corr) is not int or corr < 0:
        raise MalformedEnvelope(f"corr must be a uint64, not {corr!r}")
    if type(deadline_ms) is not int or deadline_ms < 0:
        raise MalformedEnvelope(f"deadline_ms must be a uint64, not {deadline_ms!r}")
    if type(endpoint) is not str:
        raise MalformedEnvelope(f"endpoint must be a str, not {type(endpoint).__name__}")
    if type(content_type) is not str:
        raise MalformedEnvelope(f"content_type must be a str, not {type(content_type).__name__}")
    if type(body) is not bytes:
        raise MalformedEnvelope(f"body must be msgpack bin, not {type(body).__name__}")
    if type(headers) is not dict:
        raise MalformedEnvelope(f"headers must be a map, not {type(headers).__name__}")
    if headers:
        _check_headers(headers, max_headers, max_header_bytes)
    return (
        known,
        corr,
        None if target is None else _ref(target, "target"),
        None if sender is None else _ref(sender, "sender"),
        endpoint,
        content_type,
        headers,
        deadline_ms,
        body,
    )


_unpackb = msgpack.unpackb


def _refuse_layout(obj: Any) -> None:
    """Raise the error for a decoded value that is not a version-1 envelope array."""
    if type(obj) is not list:
        raise MalformedEnvelope(f"an envelope is a msgpack array, not {type(obj).__name__}")
    if not obj:
        raise MalformedEnvelope("an envelope is a non-empty msgpack array")
    version = obj[0]
    if type(version) is not int:
        raise MalformedEnvelope(f"envelope version must be an int, not {type(version).__name__}")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(_unsupported(version))
    raise MalformedEnvelope(f"a version-1 envelope has {ENVELOPE_FIELDS} fields, not {len(obj)}")


def _ref(fields: Any, role: str) -> ActorRef:
    # Inline ActorRef.from_fields's checks, and reuse refs: this runs twice per message, and
    # building an ActorRef costs more than the rest of the checks together.
    if type(fields) is list and len(fields) == 3:
        node, path, uid = fields
        if type(node) is str and type(path) is str and type(uid) is int:
            key = (node, path, uid)
            ref = _refs.get(key)
            if ref is None:
                if len(_refs) >= _REF_CACHE_SIZE:
                    _refs.clear()  # crude but bounded: a hostile peer cannot grow it
                ref = _refs[key] = ActorRef(node, path, uid)
            return ref
    raise MalformedEnvelope(f"{role} must be nil or [node: str, path: str, uid: int], not {fields!r}")


#: Recently decoded refs. Refs are immutable values and decoded ones are unbound, so sharing
#: one object between envelopes is safe.
_REF_CACHE_SIZE = 4096
_refs: dict[tuple[str, str, int], ActorRef] = {}


def _check_headers(headers: dict[Any, Any], max_headers: int, max_header_bytes: int) -> None:
    if len(headers) > max_headers:  # msgpack's max_map_len already enforces this; be explicit
        raise MalformedEnvelope(f"{len(headers)} headers exceed the limit of {max_headers}")
    chars = 0
    for key, value in headers.items():
        if type(key) is not str or type(value) is not str:
            raise MalformedEnvelope(f"headers map str to str, not {key!r}: {value!r}")
        chars += len(key) + len(value)
    if chars * 4 > max_header_bytes:  # UTF-8 needs at most 4 bytes a character: count exactly
        total = sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
        if total > max_header_bytes:
            raise MalformedEnvelope(f"{total} bytes of headers exceed the limit of {max_header_bytes}")


def _unsupported(version: object) -> str:
    return f"envelope version {version!r} is not supported (this node speaks {PROTOCOL_VERSION})"


def _peek_version(data: bytes | bytearray | memoryview) -> int | None:
    """The version of an envelope this decoder could not parse, if it starts like an envelope.

    Lets a future layout (more fields, new types) be reported as :class:`UnsupportedVersion`
    rather than as garbage. Reads only the array header and first element, so it allocates
    nothing in proportion to what the header claims.
    """
    try:
        unpacker = msgpack.Unpacker(
            max_buffer_size=max(len(data), 1),
            max_str_len=0,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        unpacker.feed(data)
        if unpacker.read_array_header() < 1:
            return None
        version = unpacker.unpack()
    except Exception:
        return None
    return version if type(version) is int else None
