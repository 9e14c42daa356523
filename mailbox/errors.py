"""Typed errors with Go Micro's fields: ``id``, ``code``, ``detail``, ``status``.

Go Micro carries one error shape across every boundary (JSON ``{"id", "code", "detail",
"status"}``). We keep that shape so errors cross nodes and languages unchanged, and add one
Python subclass per code so callers can ``except NotFound:`` instead of comparing integers.
:func:`error_from_fields` rebuilds the right subclass from the four fields.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

__all__ = [
    "GUARD_ID",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "InternalServerError",
    "MicroError",
    "NotFound",
    "RequestTimeout",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "error_from_fields",
]


#: The ``id`` of the 401/403 a node's guard answers with (its own rejection of the caller, by
#: token or rules): a sender tells it from the same codes raised by a handler for its own
#: reasons (pub/sub's acknowledged mode does not redeliver the first, see docs/auth.md). Here,
#: with the errors, because both the guard (cluster auth) and those who read its refusals (the
#: broker) use it, and neither should import the other.
GUARD_ID = "trimicro.auth"


def _status_text(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


class MicroError(Exception):
    """An error that answers a request: what went wrong (``detail``), where (``id``), how (``code``).

    ``id`` names the service or actor that produced the error, ``code`` is an HTTP status code,
    ``status`` its text. Raising one from a handler answers the caller with it and leaves the
    actor running: it is an answer, not a crash.
    """

    default_code: ClassVar[int] = 500

    def __init__(
        self, detail: str = "", *, id: str = "", code: int | None = None, status: str | None = None
    ) -> None:
        self.id = id
        self.code = self.default_code if code is None else int(code)
        self.detail = detail
        self.status = _status_text(self.code) if status is None else status
        super().__init__(detail)

    def to_fields(self) -> dict[str, Any]:
        """The four Go Micro fields, ready for any codec."""
        return {"id": self.id, "code": self.code, "detail": self.detail, "status": self.status}

    def __str__(self) -> str:
        where = f"{self.id}: " if self.id else ""
        return f"{where}{self.code} {self.status}: {self.detail}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, code={self.code}, "
            f"detail={self.detail!r}, status={self.status!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MicroError):
            return NotImplemented
        return self.to_fields() == other.to_fields()

    def __hash__(self) -> int:
        return hash((self.id, self.code, self.detail, self.status))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.to_fields(),))


def _rebuild(fields: dict[str, Any]) -> MicroError:
    return error_from_fields(fields)


class BadRequest(MicroError):
    """400: the request itself is wrong (bad body, unknown endpoint argument, decode failure)."""

    default_code = 400


class Unauthorized(MicroError):
    """401: no or invalid credentials."""

    default_code = 401


class Forbidden(MicroError):
    """403: valid credentials, not allowed."""

    default_code = 403


class NotFound(MicroError):
    """404: no such actor, service or endpoint."""

    default_code = 404


class RequestTimeout(MicroError):
    """408: the deadline passed before a reply arrived."""

    default_code = 408


class Conflict(MicroError):
    """409: the request conflicts with the current state."""

    default_code = 409


class TooManyRequests(MicroError):
    """429: a bounded queue refused the request."""

    default_code = 429


class InternalServerError(MicroError):
    """500: the handler failed; ``detail`` names the exception type and message."""

    default_code = 500


class ServiceUnavailable(MicroError):
    """503: the target stopped or cannot be reached."""

    default_code = 503


_BY_CODE: dict[int, type[MicroError]] = {
    cls.default_code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        RequestTimeout,
        Conflict,
        TooManyRequests,
        InternalServerError,
        ServiceUnavailable,
    )
}


def error_from_fields(fields: dict[str, Any]) -> MicroError:
    """Rebuild the typed error from Go Micro's four fields (unknown codes give ``MicroError``)."""
    code = int(fields.get("code", 500))
    cls = _BY_CODE.get(code, MicroError)
    return cls(
        str(fields.get("detail", "")),
        id=str(fields.get("id", "")),
        code=code,
        status=str(fields.get("status") or _status_text(code)),
    )
