"""CBOR (RFC 8949): :class:`CborCodec` and :func:`cbor_prescan`, the header walk that enforces
the limits before :mod:`cbor2` allocates anything.
"""

from __future__ import annotations

from typing import Any

import cbor2

from trimicro.mailbox.codec.typeregistry import DecodeError, EncodeError, TypeRegistry, default_registry
from trimicro.mailbox.limits import DEFAULT_LIMITS, DecodeLimits

from . import CBOR, _decode_failure, _encode_failure, _too_big, _too_deep

__all__ = ["CBOR_TYPE_TAG", "CborCodec", "cbor_prescan"]

#: CBOR semantic tag wrapping ``[type tag, fields]`` (IANA first-come-first-served range;
#: pass ``type_tag=`` to :class:`CborCodec` if a peer needs another).
CBOR_TYPE_TAG = 40_000


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
