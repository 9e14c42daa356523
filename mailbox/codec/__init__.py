"""Content-type-keyed codecs: msgpack (the default), CBOR and JSON, each with explicit limits.

As in Go Micro, a message's ``Content-Type`` picks the codec (:class:`CodecSet`). All three carry
the same values: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, lists (tuples arrive
as lists), maps with ``str`` keys, and every value a :class:`TypeRegistry` knows (registered attrs
classes, :class:`ActorRef`, :class:`MicroError`), nested freely.

Decoding is for bytes from the network, so each codec checks a :class:`DecodeLimits` and turns
every failure (malformed bytes, trailing bytes, limits, unknown tags, wrong fields, bad UTF-8)
into :class:`DecodeError`; encoding failures become :class:`EncodeError`. Nothing else escapes.
Codecs hold no per-call state and may be shared between tasks and threads.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import cbor2
import msgpack

from trimicro.mailbox.codec.typeregistry import DecodeError, EncodeError, TypeRegistry, default_registry
from trimicro.mailbox.errors import BadRequest
from trimicro.mailbox.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = [
    "CBOR",
    "CBOR_TYPE_TAG",
    "JSON",
    "MSGPACK",
    "MSGPACK_EXT_CODE",
    "CborCodec",
    "Codec",
    "CodecSet",
    "DecodeError",
    "EncodeError",
    "JsonCodec",
    "MsgpackCodec",
    "TypeRegistry",
    "UnsupportedContentType",
    "cbor_prescan",
    "default_registry",
]

MSGPACK = "application/msgpack"
CBOR = "application/cbor"
JSON = "application/json"

#: msgpack extension type code whose payload is a registered type's tag (UTF-8).
MSGPACK_EXT_CODE = 1
#: CBOR semantic tag wrapping ``[type tag, fields]`` (IANA first-come-first-served range;
#: pass ``type_tag=`` to :class:`CborCodec` if a peer needs another).
CBOR_TYPE_TAG = 40_000

_E = TypeVar("_E", bound=BaseException)


class Codec(Protocol):
    """What the runtime needs from a codec: a content type and a pair of pure functions."""

    content_type: str

    def encode(self, obj: Any) -> bytes:
        """``obj`` as bytes; :class:`EncodeError` if it has no wire form."""
        ...

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; :class:`DecodeError` (only) for anything else."""
        ...


class UnsupportedContentType(BadRequest):
    """400: no codec for the message's ``Content-Type``."""


def _decode_failure(fmt: str, exc: BaseException) -> DecodeError:
    """The :class:`DecodeError` for an exception a decoder raised (not itself a DecodeError).

    Hooks run inside C decoders, which may wrap what the hook raised: keep our message if so.
    """
    inner = _find_in_chain(exc, DecodeError)
    if inner is not None:
        return DecodeError(inner.detail)
    if isinstance(exc, RecursionError):
        return DecodeError(f"{fmt} input nested too deeply to parse")
    return DecodeError(f"malformed {fmt}: {type(exc).__name__}: {exc}"[:400])


def _encode_failure(fmt: str, exc: BaseException) -> EncodeError:
    """The :class:`EncodeError` for an exception an encoder raised (not itself an EncodeError)."""
    inner = _find_in_chain(exc, EncodeError)
    if inner is not None:
        return EncodeError(inner.detail)
    if isinstance(exc, RecursionError):
        return EncodeError(f"value nested too deeply (or cyclic) for {fmt}")
    return EncodeError(f"cannot encode as {fmt}: {type(exc).__name__}: {exc}"[:400])


def _find_in_chain(exc: BaseException, kind: type[_E]) -> _E | None:
    cause = exc.__cause__ or exc.__context__
    for _ in range(8):
        if cause is None or isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _too_big(n: int, limits: DecodeLimits) -> DecodeError:
    return DecodeError(f"message of {n} bytes exceeds max_size={limits.max_size}")


def _too_deep(limits: DecodeLimits) -> DecodeError:
    return DecodeError(f"nesting deeper than max_depth={limits.max_depth}")


# --------------------------------------------------------------------------------------------
# msgpack
# --------------------------------------------------------------------------------------------


class _Tag:
    """Where a registered value starts: what the msgpack ext hook returns for a type tag."""

    __slots__ = ("tag",)

    def __init__(self, tag: str) -> None:
        self.tag = tag


_MSGPACK_LOOK = frozenset({list, dict, _Tag})


def _plain_msgpack(root: Any, max_depth: int) -> bool:
    """The common case, fast: check the depth of a value with no registered values in it, one
    level per C-level list comprehension. ``False`` as soon as a type tag shows up (then
    :func:`_finish_msgpack` does the full walk)."""
    look = _MSGPACK_LOOK
    level: list[Any] = [root]
    depth = 1
    while level:
        below = [v for c in level for v in (c if type(c) is list else c.values()) if type(v) in look]
        if not below:
            return True
        if depth >= max_depth:
            raise DecodeError(f"nesting deeper than max_depth={max_depth}")
        if any(type(v) is _Tag for v in below):
            return False
        depth += 1
        level = below
    return True


def _finish_msgpack(root: Any, max_depth: int, from_wire: Callable[[str, Any], Any]) -> Any:
    """Check nesting depth and build registered values bottom-up, level by level, no recursion.

    A registered value arrives as ``[_Tag, fields]``. Pairs are found level by level, parents
    first, so building them in reverse order builds children before their parents. The walk stops
    at the first level deeper than ``max_depth``; longer containers holding only scalars are
    skipped by a C-level type scan, so long flat arrays cost little.
    """
    holder = [root]
    fixups: list[tuple[Any, Any, list[Any]]] = []
    if type(root) is list and root and type(root[0]) is _Tag:
        if len(root) != 2:
            raise DecodeError("a registered value is [type tag, fields]")
        fixups.append((holder, 0, root))
    look = _MSGPACK_LOOK
    level: list[Any] = [root]
    depth = 1
    while level:
        below: list[Any] = []
        add = below.append
        for container in level:
            items: Iterable[tuple[Any, Any]]
            if type(container) is list:
                if container and type(container[0]) is _Tag:
                    items = ((1, container[1]),)
                elif len(container) > 8 and look.isdisjoint(map(type, container)):
                    continue
                else:
                    items = enumerate(container)
            elif len(container) > 8 and look.isdisjoint(map(type, container.values())):
                continue
            else:
                items = container.items()
            for key, value in items:
                kind = type(value)
                if kind is list:
                    if value and type(value[0]) is _Tag:
                        if len(value) != 2:
                            raise DecodeError("a registered value is [type tag, fields]")
                        fixups.append((container, key, value))
                    add(value)
                elif kind is dict:
                    add(value)
                elif kind is _Tag:
                    raise DecodeError("type tag out of place (not first in a [tag, fields] pair)")
        if below and depth >= max_depth:
            raise DecodeError(f"nesting deeper than max_depth={max_depth}")
        depth += 1
        level = below
    for parent, key, pair in reversed(fixups):
        parent[key] = from_wire(pair[0].tag, pair[1])
    return holder[0]


class MsgpackCodec:
    """msgpack, the default: compact, fast, and close to Go Micro's own binary codecs.

    A registered value ``v`` is the 2-array ``[Ext(1, tag), fields]``: the ext marks the pair, and
    the fields stay ordinary msgpack in the same stream (no nested packing, so encoding is a single
    pass and decoding never recurses through extension payloads).
    """

    content_type = MSGPACK

    __slots__ = ("_exts", "_limits", "_packers", "_registry", "_tags")

    def __init__(self, registry: TypeRegistry | None = None, limits: DecodeLimits | None = None) -> None:
        self._registry = default_registry() if registry is None else registry
        self._limits = DEFAULT_LIMITS if limits is None else limits
        # Packers are reused (about 2x faster than msgpack.packb); a pool, not one shared packer,
        # so concurrent use from threads is safe. Tag caches hold registered tags only: bounded.
        self._packers: list[msgpack.Packer] = []
        self._exts: dict[str, msgpack.ExtType] = {}
        self._tags: dict[bytes, _Tag] = {}

    @property
    def registry(self) -> TypeRegistry:
        """The registry naming this codec's message classes."""
        return self._registry

    @property
    def limits(self) -> DecodeLimits:
        """The bounds :meth:`decode` enforces."""
        return self._limits

    def _default(self, obj: Any) -> Any:
        tag, fields = self._registry.to_wire(obj)
        ext = self._exts.get(tag)
        if ext is None:
            ext = self._exts[tag] = msgpack.ExtType(MSGPACK_EXT_CODE, tag.encode())
        return [ext, fields]

    def _ext_hook(self, code: int, data: bytes) -> Any:
        tag = self._tags.get(data)
        if tag is not None and code == MSGPACK_EXT_CODE:
            return tag
        if code != MSGPACK_EXT_CODE:
            raise DecodeError(f"unknown msgpack extension type {code}")
        try:
            name = data.decode()
        except UnicodeDecodeError:
            raise DecodeError("type tag is not UTF-8") from None
        if name not in self._registry:
            raise DecodeError(f"unknown type tag {name!r:.200}")
        tag = self._tags[bytes(data)] = _Tag(name)
        return tag

    def encode(self, obj: Any) -> bytes:
        """``obj`` as msgpack; :class:`EncodeError` if it has no wire form."""
        try:
            packer = self._packers.pop()
        except IndexError:
            packer = msgpack.Packer(default=self._default, use_bin_type=True, datetime=False)
        try:
            data: bytes = packer.pack(obj)
        except EncodeError:
            raise
        except Exception as exc:
            raise _encode_failure("msgpack", exc) from exc
        finally:
            self._packers.append(packer)  # msgpack resets the buffer on failure too
        return data

    def decode(self, data: bytes) -> Any:
        """The value in ``data``; :class:`DecodeError` for anything else."""
        limits = self._limits
        try:
            n = len(data)
            if n > limits.max_size:
                raise _too_big(n, limits)
            cap = n if n < limits.max_len else limits.max_len  # limits.len_cap(n), inlined
            obj = msgpack.unpackb(
                data,
                raw=False,
                use_list=True,
                strict_map_key=True,  # str/bytes keys only: their hashes are randomised
                ext_hook=self._ext_hook,
                max_str_len=limits.max_str,
                max_bin_len=limits.max_str,
                max_ext_len=limits.max_str,
                max_array_len=cap,
                max_map_len=cap,
            )
            kind = type(obj)
            if kind is dict or kind is list:
                # Fastest first: a flat map or array (no containers or tags in it), checked in C.
                if _MSGPACK_LOOK.isdisjoint(map(type, obj.values() if kind is dict else obj)):
                    return obj
                if (kind is dict or not obj or type(obj[0]) is not _Tag) and _plain_msgpack(
                    obj, limits.max_depth
                ):
                    return obj
                return _finish_msgpack(obj, limits.max_depth, self._registry.from_wire)
            if kind is _Tag:
                raise DecodeError("type tag out of place (not at the start of a [tag, fields] pair)")
            return obj
        except DecodeError:
            raise
        except Exception as exc:
            raise _decode_failure("msgpack", exc) from exc


# --------------------------------------------------------------------------------------------
# CBOR
# --------------------------------------------------------------------------------------------


def _cbor_scalar_width(initial: int) -> int:
    """Bytes of the whole item if ``initial`` starts an int, float, false, true or null; else 0."""
    major, info = initial >> 5, initial & 0x1F
    if major <= 1 and info < 28:
        return 1 if info < 24 else 1 + (1 << (info - 24))
    if 0xF4 <= initial <= 0xF6:
        return 1
    if 0xF9 <= initial <= 0xFB:
        return 1 + (1 << (initial - 0xF8))
    return 0


_CBOR_WIDTH = bytes(_cbor_scalar_width(b) for b in range(256))
_CBOR_SAME_WIDTH = {w: bytes(b for b in range(256) if _CBOR_WIDTH[b] == w) for w in set(_CBOR_WIDTH) - {0}}


def cbor_prescan(data: bytes, limits: DecodeLimits, type_tag: int = CBOR_TYPE_TAG) -> None:
    """Walk the CBOR item headers of ``data`` without building anything.

    Refuses (:class:`DecodeError`), before any decoder allocates: a length that exceeds the bytes
    left or the limits (a 5-byte header may claim 2**31 elements), nesting deeper than
    ``max_depth`` (indefinite-length containers included), any tag except ``type_tag`` (which must
    wrap a 2-array) and bignums (2, 3; must wrap a byte string), simple values other than
    false/true/null and floats, stray breaks and trailing bytes. Tags do not count as nesting:
    the only ones allowed cannot wrap another tag. Sans-I/O and iterative.
    """
    n = len(data)
    max_depth = limits.max_depth
    max_str = limits.max_str
    cap = limits.len_cap(n)
    pos = 0
    # Items still expected per open container; the bottom entry is the single top-level item.
    # An indefinite-length container holds -(budget + 1): negative, counting up towards -1.
    stack = [1]
    while True:
        top = stack[-1]
        if top == 0:
            stack.pop()
            if not stack:
                break
            continue
        if pos >= n:
            raise DecodeError("truncated CBOR")
        initial = data[pos]
        pos += 1
        if initial == 0xFF:
            if top > 0:
                raise DecodeError("CBOR break outside an indefinite-length item")
            stack.pop()
            continue
        if top > 4 and _CBOR_WIDTH[initial]:
            # A run of same-width scalars, as in a numeric array: the bytes at every width-th
            # position are all initial bytes of that width, found at C speed by one lstrip.
            width = _CBOR_WIDTH[initial]
            start = pos - 1
            stride = data[start : start + width * top : width]
            count = len(stride) - len(stride.lstrip(_CBOR_SAME_WIDTH[width]))
            count = min(count, (n - start) // width)  # the last one must be whole
            if count:
                stack[-1] = top - count
                pos = start + width * count
                continue
        major = initial >> 5
        info = initial & 0x1F
        if info < 24:
            arg = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > n:
                raise DecodeError("truncated CBOR")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif info == 31 and 2 <= major <= 5:
            arg = -1
        else:
            raise DecodeError(f"invalid CBOR initial byte 0x{initial:02x}")
        if major == 6:
            if pos >= n:
                raise DecodeError("truncated CBOR")
            if arg == type_tag:
                if data[pos] != 0x82:
                    raise DecodeError(f"CBOR tag {type_tag} must wrap [type tag, fields]")
            elif arg == 2 or arg == 3:
                if data[pos] >> 5 != 2:
                    raise DecodeError("a CBOR bignum must wrap a byte string")
            else:
                raise DecodeError(f"CBOR tag {arg} is not accepted")
            continue  # the tagged item that follows is the one the container counts
        if top > 0:
            stack[-1] = top - 1
        elif top == -1:
            raise DecodeError(f"indefinite-length CBOR item exceeds max_len={cap}")
        else:
            stack[-1] = top + 1
        if major <= 1:
            continue
        if major == 7:
            if 20 <= info <= 22 or 25 <= info <= 27:
                continue
            raise DecodeError(f"CBOR simple value 0x{initial:02x} is not accepted")
        if major <= 3:
            if arg >= 0:
                if arg > max_str:
                    raise DecodeError(f"CBOR string of {arg} bytes exceeds max_str={max_str}")
                if arg > n - pos:
                    raise DecodeError("truncated CBOR")
                pos += arg
            else:
                pos = _cbor_chunks(data, pos, major, max_str)
            continue
        if len(stack) > max_depth:
            raise _too_deep(limits)
        if arg < 0:
            stack.append(-(cap + 1) if major == 4 else -(2 * cap + 1))
            continue
        if arg > cap:
            raise DecodeError(f"CBOR container of {arg} elements exceeds max_len={cap}")
        items = arg if major == 4 else 2 * arg
        if items > n - pos:
            raise DecodeError(f"CBOR container claims {arg} elements, more than bytes left")
        stack.append(items)
    if pos != n:
        raise DecodeError(f"{n - pos} bytes after the CBOR item")


def _cbor_chunks(data: bytes, pos: int, major: int, max_str: int) -> int:
    """Skip the definite-length chunks of an indefinite-length string; return the new position."""
    n = len(data)
    total = 0
    while True:
        if pos >= n:
            raise DecodeError("truncated CBOR")
        initial = data[pos]
        pos += 1
        if initial == 0xFF:
            return pos
        info = initial & 0x1F
        if initial >> 5 != major or info > 27:
            raise DecodeError("bad chunk in an indefinite-length CBOR string")
        if info < 24:
            size = info
        else:
            width = 1 << (info - 24)
            if pos + width > n:
                raise DecodeError("truncated CBOR")
            size = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        total += size
        if total > max_str:
            raise DecodeError(f"CBOR string exceeds max_str={max_str}")
        if size > n - pos:
            raise DecodeError("truncated CBOR")
        pos += size


class CborCodec:
    """CBOR (RFC 8949): for peers that speak it; registered values are tag 40000 ``[tag, fields]``.

    :func:`cbor_prescan` checks every header first, because a decoder may preallocate what a
    definite-length header claims, and cbor2 alone would accept trailing bytes, shared references
    and other tags this wire format does not use.
    """

    content_type = CBOR

    __slots__ = ("_cbor_depth", "_limits", "_registry", "_semantic", "_type_tag")

    def __init__(
        self,
        registry: TypeRegistry | None = None,
        limits: DecodeLimits | None = None,
        *,
        type_tag: int = CBOR_TYPE_TAG,
    ) -> None:
        self._registry = default_registry() if registry is None else registry
        self._limits = DEFAULT_LIMITS if limits is None else limits
        self._type_tag = type_tag
        self._semantic = {type_tag: self._build}
        # cbor2 counts tags as nesting too; the prescan already bounds the real depth.
        self._cbor_depth = 2 * self._limits.max_depth + 2

    @property
    def registry(self) -> TypeRegistry:
        """The registry naming this codec's message classes."""
        return self._registry

    @property
    def limits(self) -> DecodeLimits:
        """The bounds :meth:`decode` enforces."""
        return self._limits

    def _default(self, encoder: cbor2.CBOREncoder, obj: Any) -> None:
        tag, fields = self._registry.to_wire(obj)
        encoder.encode(cbor2.CBORTag(self._type_tag, [tag, fields]))

    def _build(self, value: Any, immutable: bool) -> Any:
        tag, fields = value  # the prescan guarantees a 2-array
        return self._registry.from_wire(tag, fields)

    def encode(self, obj: Any) -> bytes:
        """``obj`` as CBOR; :class:`EncodeError` if it has no wire form."""
        try:
            data: bytes = cbor2.dumps(obj, default=self._default)
        except EncodeError:
            raise
        except Exception as exc:
            raise _encode_failure("CBOR", exc) from exc
        return data

    def decode(self, data: bytes) -> Any:
        """The value in ``data``; :class:`DecodeError` for anything else."""
        limits = self._limits
        try:
            n = len(data)
            if n > limits.max_size:
                raise _too_big(n, limits)
            if type(data) is not bytes:
                data = bytes(data)
            cbor_prescan(data, limits, self._type_tag)
            return cbor2.loads(
                data,
                semantic_decoders=self._semantic,
                strict_hashable_types=True,  # str/bytes keys only: their hashes are randomised
                max_depth=self._cbor_depth,
            )
        except DecodeError:
            raise
        except Exception as exc:
            raise _decode_failure("CBOR", exc) from exc


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------

_TYPE = "$type"
_FIELDS = "$fields"
_BYTES = "$bytes"
_MAP = "$map"
_JSON_LOOK = frozenset({list, dict})


class _JsonEncoder(json.JSONEncoder):
    """The C encoder with a hook for bytes and registered values.

    ``marks`` counts the ``"$`` sequences the hook wrote; if the output holds more, some user
    string or key starts with ``$`` and the codec re-encodes through the escaping slow path.
    """

    def __init__(self, to_wire: Callable[[Any], tuple[str, Any]]) -> None:
        super().__init__(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self._to_wire = to_wire
        self.marks = 0

    def default(self, o: Any) -> Any:
        if isinstance(o, bytes | bytearray | memoryview):
            self.marks += 1
            return {_BYTES: base64.b64encode(o).decode("ascii")}
        tag, fields = self._to_wire(o)
        self.marks += 3 if tag.startswith("$") else 2
        return {_TYPE: tag, _FIELDS: fields}


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"JSON has no {name}")


class JsonCodec:
    """JSON (UTF-8, compact): for browsers, ``curl`` and Go Micro's JSON clients.

    Registered values are ``{"$type": tag, "$fields": ...}``, bytes ``{"$bytes": base64}``; a
    map that itself has a ``"$type"``, ``"$bytes"`` or ``"$map"`` key travels as
    ``{"$map": [k1, v1, ...]}`` so no user map is mistaken for one of these. Other ``$`` keys are
    plain keys. Non-finite floats are refused both ways (standard JSON has none).
    """

    content_type = JSON

    __slots__ = ("_decoder", "_encoders", "_limits", "_registry")

    def __init__(self, registry: TypeRegistry | None = None, limits: DecodeLimits | None = None) -> None:
        self._registry = default_registry() if registry is None else registry
        self._limits = DEFAULT_LIMITS if limits is None else limits
        self._encoders: list[_JsonEncoder] = []  # a pool: each encode owns one (``marks``)
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant)

    @property
    def registry(self) -> TypeRegistry:
        """The registry naming this codec's message classes."""
        return self._registry

    @property
    def limits(self) -> DecodeLimits:
        """The bounds :meth:`decode` enforces."""
        return self._limits

    def encode(self, obj: Any) -> bytes:
        """``obj`` as JSON; :class:`EncodeError` if it has no wire form."""
        try:
            encoder = self._encoders.pop()
        except IndexError:
            encoder = _JsonEncoder(self._registry.to_wire)
        try:
            encoder.marks = 0
            text = encoder.encode(obj)
            if text.count('"$') != encoder.marks:
                text = encoder.encode(self._escape(obj, 1))
        except EncodeError:
            raise
        except Exception as exc:
            raise _encode_failure("JSON", exc) from exc
        finally:
            self._encoders.append(encoder)
        try:
            return text.encode()
        except UnicodeError as exc:
            raise _encode_failure("JSON", exc) from exc

    def _escape(self, obj: Any, depth: int) -> Any:
        """The JSON tree of ``obj`` with reserved-looking maps wrapped (the rare slow path)."""
        if obj is None or isinstance(obj, str | int | float):
            return obj
        if isinstance(obj, bytes | bytearray | memoryview):
            return {_BYTES: base64.b64encode(obj).decode("ascii")}
        if depth > self._limits.max_depth:
            raise EncodeError(f"value nested deeper than max_depth={self._limits.max_depth}")
        if isinstance(obj, list | tuple):
            return [self._escape(v, depth + 1) for v in obj]
        if isinstance(obj, dict):
            if _TYPE in obj or _BYTES in obj or _MAP in obj:
                flat: list[Any] = []
                for key, value in obj.items():
                    if not isinstance(key, str):
                        raise EncodeError(f"JSON map keys are strings, not {key!r:.80}")
                    flat.append(key)
                    flat.append(self._escape(value, depth + 2))
                return {_MAP: flat}
            return {k: self._escape(v, depth + 1) for k, v in obj.items()}
        tag, fields = self._registry.to_wire(obj)
        return {_TYPE: tag, _FIELDS: self._escape(fields, depth + 1)}

    def decode(self, data: bytes) -> Any:
        """The value in ``data``; :class:`DecodeError` for anything else."""
        limits = self._limits
        try:
            n = len(data)
            if n > limits.max_size:
                raise _too_big(n, limits)
            text = str(data, "utf-8")
            obj = self._decoder.decode(text)
            check_str = limits.max_str < n
            if (
                '"$' in text
                or check_str
                or 2 * limits.max_len < n
                or text.count("[") + text.count("{") > limits.max_depth
            ):
                return _finish_json(obj, limits, check_str, self._registry.from_wire)
            return obj
        except DecodeError:
            raise
        except Exception as exc:
            raise _decode_failure("JSON", exc) from exc


def _finish_json(
    root: Any, limits: DecodeLimits, check_str: bool, from_wire: Callable[[str, Any], Any]
) -> Any:
    """Check depth, lengths (and string sizes, if one could exceed ``max_str``), then rebuild the
    ``$`` objects bottom-up; level by level like :func:`_finish_msgpack`.

    ``{"$bytes": ...}`` objects are not walked (their value must be a string) and so do not count
    as nesting: bytes are scalars in the other codecs too.
    """
    max_depth = limits.max_depth
    max_len = limits.max_len
    max_str = limits.max_str
    kind = type(root)
    if kind is not list and kind is not dict:
        if check_str and kind is str and len(root) > max_str:
            raise DecodeError(f"string exceeds max_str={max_str}")
        return root
    holder = [root]
    fixups: list[tuple[Any, Any, dict[str, Any]]] = []
    if kind is dict and (_TYPE in root or _BYTES in root or _MAP in root):
        fixups.append((holder, 0, root))
    look = _JSON_LOOK
    level: list[Any] = [root]
    depth = 1
    while level:
        below: list[Any] = []
        add = below.append
        for container in level:
            if len(container) > max_len:
                raise DecodeError(f"{len(container)} elements exceed max_len={max_len}")
            items: Iterable[tuple[Any, Any]]
            values: Iterable[Any]
            if type(container) is list:
                values = container
                items = enumerate(container)
            else:
                values = container.values()
                items = container.items()
                if check_str:
                    _check_strings(container, max_str)
            if check_str:
                _check_strings(values, max_str)
            if len(container) > 8 and look.isdisjoint(map(type, values)):
                continue
            for key, value in items:
                kind = type(value)
                if kind is dict:
                    if _BYTES in value:
                        fixups.append((container, key, value))
                        continue
                    if _TYPE in value or _MAP in value:
                        fixups.append((container, key, value))
                    add(value)
                elif kind is list:
                    add(value)
        if below and depth >= max_depth:
            raise DecodeError(f"nesting deeper than max_depth={max_depth}")
        depth += 1
        level = below
    for parent, key, special in reversed(fixups):
        parent[key] = _json_special(special, from_wire, max_str)
    return holder[0]


def _check_strings(values: Iterable[Any], max_str: int) -> None:
    for value in values:
        if type(value) is str and len(value) > max_str:
            raise DecodeError(f"string exceeds max_str={max_str}")


def _json_special(obj: dict[str, Any], from_wire: Callable[[str, Any], Any], max_str: int) -> Any:
    if _TYPE in obj:
        tag = obj[_TYPE]
        if len(obj) != 2 or _FIELDS not in obj or type(tag) is not str:
            raise DecodeError('a registered value is {"$type": tag, "$fields": fields}')
        return from_wire(tag, obj[_FIELDS])
    if len(obj) != 1:
        raise DecodeError('"$bytes" and "$map" objects have exactly one key')
    if _BYTES in obj:
        text = obj[_BYTES]
        if type(text) is not str:
            raise DecodeError('"$bytes" holds a base64 string')
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise DecodeError('"$bytes" holds invalid base64') from None
        if len(raw) > max_str:
            raise DecodeError(f"bytes exceed max_str={max_str}")
        return raw
    flat = obj[_MAP]
    if type(flat) is not list or len(flat) % 2:
        raise DecodeError('"$map" holds a flat [key, value, ...] list')
    keys = flat[0::2]
    if any(type(k) is not str for k in keys):
        raise DecodeError('"$map" keys are strings')
    return dict(zip(keys, flat[1::2], strict=True))


# --------------------------------------------------------------------------------------------
# Content-type lookup
# --------------------------------------------------------------------------------------------


class CodecSet:
    """Codecs by content type, as Go Micro picks them from a message's ``Content-Type``.

    ``get`` ignores parameters and case (``application/json; charset=utf-8``); an empty or
    missing content type means :attr:`default_codec`.
    """

    __slots__ = ("_by_type", "default_codec")

    def __init__(self, codecs: Iterable[Codec], default: str | None = None) -> None:
        self._by_type: dict[str, Codec] = {}
        for codec in codecs:
            if codec.content_type in self._by_type:
                raise ValueError(f"two codecs for {codec.content_type!r}")
            self._by_type[codec.content_type] = codec
        if not self._by_type:
            raise ValueError("a CodecSet needs at least one codec")
        first = next(iter(self._by_type))
        default = first if default is None else default
        if default not in self._by_type:
            raise ValueError(f"default content type {default!r} has no codec")
        self.default_codec: Codec = self._by_type[default]

    @classmethod
    def default(cls, registry: TypeRegistry | None = None, limits: DecodeLimits | None = None) -> CodecSet:
        """msgpack (default), CBOR and JSON sharing one registry and one set of limits."""
        registry = default_registry() if registry is None else registry
        limits = DEFAULT_LIMITS if limits is None else limits
        return cls(
            (
                MsgpackCodec(registry, limits),
                CborCodec(registry, limits),
                JsonCodec(registry, limits),
            ),
            default=MSGPACK,
        )

    def get(self, content_type: str | None = None) -> Codec:
        """The codec for ``content_type``; :class:`UnsupportedContentType` if there is none."""
        if type(content_type) is str:  # the common case first: one lookup (every message asks)
            found = self._by_type.get(content_type)
            if found is not None:
                return found
        if not content_type:
            return self.default_codec
        if not isinstance(content_type, str):
            raise UnsupportedContentType(f"a content type is a string, not {content_type!r:.100}")
        codec = self._by_type.get(content_type)
        if codec is None:
            codec = self._by_type.get(content_type.partition(";")[0].strip().lower())
            if codec is None:
                raise UnsupportedContentType(
                    f"unsupported content type {content_type!r:.100}; supported: {', '.join(self._by_type)}"
                )
        return codec

    def __contains__(self, content_type: object) -> bool:
        return content_type in self._by_type

    def __iter__(self) -> Iterator[Codec]:
        return iter(self._by_type.values())

    @property
    def content_types(self) -> tuple[str, ...]:
        """The content types served, in the order the codecs were given."""
        return tuple(self._by_type)
