"""Actors layer: the runtime (nodes, cells, dispatcher), refs, ask/tell, supervision, timers.

Public surface: everything in ``__all__``; modules not re-exported here are internal.
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
)
from trimicro.mailbox.mailboxes import MailboxSpec, bounded, priority, unbounded
from trimicro.mailbox.refs import ActorRef

from .actor import Actor, handles, not_handler
from .api import ask, open_stream, tell, try_tell
from .cell import Escalated
from .context import Context
from .messages import DeadLetter, Terminated
from .middleware import Call, Middleware, Next
from .node import DEFAULT_ASK_TIMEOUT, Node, start_node
from .streams import Stream, StreamClosed
from .supervision import Backoff, ChildSpec, Restart, Strategy, SupervisorStrategy
from .supervisor import Supervisor
from .timers import Timer

__all__ = [
    "DEFAULT_ASK_TIMEOUT",
    "Actor",
    "ActorRef",
    "Backoff",
    "BadRequest",
    "Call",
    "ChildSpec",
    "Conflict",
    "Context",
    "DeadLetter",
    "Escalated",
    "Forbidden",
    "InternalServerError",
    "MailboxSpec",
    "MicroError",
    "Middleware",
    "Next",
    "Node",
    "NotFound",
    "RequestTimeout",
    "Restart",
    "ServiceUnavailable",
    "Strategy",
    "Stream",
    "StreamClosed",
    "Supervisor",
    "SupervisorStrategy",
    "Terminated",
    "Timer",
    "TooManyRequests",
    "Unauthorized",
    "ask",
    "bounded",
    "handles",
    "not_handler",
    "open_stream",
    "priority",
    "start_node",
    "tell",
    "try_tell",
    "unbounded",
]
