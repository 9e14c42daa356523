"""JSON (UTF-8, compact), for browsers, ``curl`` and Go Micro's JSON clients: :class:`JsonCodec`.

Registered values, bytes and maps with reserved keys travel as ``$``-marked objects.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any

from trimicro.mailbox.codec.typeregistry import DecodeError, EncodeError, TypeRegistry, default_registry
from trimicro.mailbox.limits import DEFAULT_LIMITS, DecodeLimits

from . import JSON, _decode_failure, _encode_failure, _too_big

__all__ = ["JsonCodec"]

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
