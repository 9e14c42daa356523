"""Mailbox layer: errors, addresses, codecs, mailboxes (later: framing, transports, secure channel).

Nothing here imports :mod:`trimicro.actors` or :mod:`trimicro.cluster`.
"""

from trimicro.mailbox.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    error_from_fields,
)
from trimicro.mailbox.refs import ActorRef

__all__ = [
    "ActorRef",
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
