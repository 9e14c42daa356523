"""msgpack, the default codec: compact, fast, and close to Go Micro's own binary codecs.

A registered value travels as ``[Ext(MSGPACK_EXT_CODE, tag), fields]``; decoding checks depth
and builds registered values level by level, without recursion (see :class:`MsgpackCodec`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgpack

from trimicro.mailbox.codec.typeregistry import DecodeError, EncodeError, TypeRegistry, default_registry
from trimicro.mailbox.limits import DEFAULT_LIMITS, DecodeLimits

from . import MSGPACK, _decode_failure, _encode_failure, _too_big

__all__ = ["MSGPACK_EXT_CODE", "MsgpackCodec"]

#: msgpack extension type code whose payload is a registered type's tag (UTF-8).
MSGPACK_EXT_CODE = 1


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
        if name in self._registry:
            tag = self._tags[bytes(data)] = _Tag(name)  # registered tags only: the cache stays bounded
            return tag
        if not self._registry.decodes(name):
            raise DecodeError(f"unknown type tag {name!r:.200}")
        return _Tag(name)  # from_wire turns it into a plain map

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
