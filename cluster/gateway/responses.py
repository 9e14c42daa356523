"""Replies in the type the client asked for, and errors as Go Micro's error JSON."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .codec import JSON, encode_body, error_body, http_status, media_type, reply_type

__all__ = ["error_reply", "reply"]


def reply(request: Request, value: Any, status: int = 200, kind: str | None = None) -> Response:
    """``value`` in the type the client asked for."""
    kind = kind or reply_type(request.headers.get("accept"), media_type(request.headers.get("content-type")))
    return Response(encode_body(kind, value), status_code=status, media_type=kind)


def error_reply(exc: BaseException) -> Response:
    """Go Micro's error JSON, always JSON (a client reading an error need not know our codecs)."""
    err = error_body(exc)
    return Response(encode_body(JSON, err.to_fields()), status_code=http_status(err), media_type=JSON)
