"""HTTP bodies both ways, without I/O: content negotiation over JSON, msgpack and CBOR, and
Go Micro's error JSON.

A request body is decoded by its ``Content-Type`` (JSON when absent), a reply is encoded in the
first type of ``Accept`` the gateway speaks (else the request's own type, else JSON), so a client
that sends msgpack gets msgpack back without asking twice.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import cbor2
import msgpack

from trimicro.mailbox.codec.cbor import cbor_prescan
from trimicro.mailbox.errors import BadRequest, InternalServerError, MicroError
from trimicro.mailbox.limits import DEFAULT_LIMITS

__all__ = [
    "CBOR",
    "JSON",
    "MSGPACK",
    "decode_body",
    "encode_body",
    "error_body",
    "http_status",
    "media_type",
    "reply_type",
]

JSON = "application/json"
MSGPACK = "application/msgpack"
CBOR = "application/cbor"
_ALIASES = {
    "application/json": JSON,
    "text/json": JSON,
    "application/msgpack": MSGPACK,
    "application/x-msgpack": MSGPACK,
    "application/vnd.msgpack": MSGPACK,
    "application/cbor": CBOR,
}


def media_type(header: str | None) -> str | None:
    """The media type a ``Content-Type`` value names, if the gateway speaks it (``None`` if not)."""
    if not header:
        return JSON
    return _ALIASES.get(header.split(";", 1)[0].strip().lower())


def reply_type(accept: str | None, request_type: str | None) -> str:
    """The first type of ``Accept`` (in order of ``q``) the gateway speaks, else the request's, else JSON."""
    if accept:
        ranked: list[tuple[float, int, str]] = []
        for i, part in enumerate(accept.split(",")):
            name, *params = (p.strip() for p in part.split(";"))
            q = 1.0
            for p in params:
                if p.startswith("q="):
                    try:
                        q = float(p[2:])
                    except ValueError:
                        q = 0.0
            ranked.append((-q, i, name.lower()))
        for negq, _, name in sorted(ranked):
            if negq >= 0:
                continue
            if name in _ALIASES:
                return _ALIASES[name]
            if name in ("*/*", "application/*"):
                break
    return request_type or JSON


def decode_body(content_type: str | None, data: bytes) -> Any:
    """The request's value (``None`` for an empty body); 400 for a body that does not decode."""
    kind = media_type(content_type)
    if kind is None:
        raise BadRequest(
            f"unsupported content type {content_type!r}; use JSON, msgpack or CBOR", id="gateway"
        )
    if not data:
        return None
    try:
        if kind == JSON:
            return json.loads(data)
        # Map keys are strings (or bytes) only, as on the wire: Python does not randomise the
        # hashes of numbers, so a body of colliding integer keys would make building its dict
        # quadratic (a minute of the node's one thread for a body under the size cap).
        if kind == MSGPACK:
            return msgpack.unpackb(data, raw=False, strict_map_key=True)
        cbor_prescan(data, DEFAULT_LIMITS)  # lengths, depth and tags, before anything is built
        return cbor2.loads(data, strict_hashable_types=True, max_depth=2 * DEFAULT_LIMITS.max_depth + 2)
    except Exception as exc:  # each codec raises its own family; all mean "not a body"
        raise BadRequest(f"the body is not valid {kind}: {exc}", id="gateway") from None


def encode_body(kind: str, value: Any) -> bytes:
    """``value`` in ``kind``: an attrs instance (a handler's typed reply) as the object its
    schema documents; what else JSON cannot carry (bytes, sets) is written as text."""
    if kind == MSGPACK:
        packed: bytes = msgpack.packb(value, default=_plain, use_bin_type=True)
        return packed
    if kind == CBOR:
        encoded: bytes = cbor2.dumps(value, default=_cbor_default)
        return encoded
    return json.dumps(value, default=_plain, separators=(",", ":"), ensure_ascii=False).encode()


def _plain(value: Any) -> Any:
    if attrs.has(type(value)):
        return {a.alias or a.name: getattr(value, a.name) for a in attrs.fields(type(value)) if a.init}
    return str(value)


def _cbor_default(encoder: Any, value: Any) -> None:
    encoder.encode(_plain(value))


def http_status(exc: MicroError) -> int:
    """The HTTP status of a typed error: its code when that is an error status, else 500."""
    return exc.code if 400 <= exc.code <= 599 else 500


def error_body(exc: BaseException) -> MicroError:
    """Any failure as a typed error (an unexpected one is a 500 that leaks no detail)."""
    if isinstance(exc, MicroError):
        return exc
    return InternalServerError("internal error in the gateway", id="gateway")
