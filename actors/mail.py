"""What a mailbox holds: the queued item, and the reply slot an ask waits on.

Every message, local or from another node, is queued as one :class:`Mail` value: the message,
the :class:`Reply` of an ask (``None`` for a tell), the sender, the endpoint it names, its
metadata and the verified principal of a caller on another node. It is a ``NamedTuple``: fields
are read by name through C-level getters and the layout stays a flat tuple, so the typed value
costs the mailbox nothing over the positional tuple it replaces.

Building one through the generated ``__new__`` is a Python-level call (about 5x a tuple
display); the paths that build an item per message use :data:`build_mail` instead, which is
``tuple.__new__`` itself, typed field by field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

import trio
from trio.lowlevel import Abort, checkpoint, current_task, reschedule

from trimicro.mailbox.errors import RequestTimeout
from trimicro.mailbox.refs import ActorRef

__all__ = ["Mail", "Reply", "build_mail"]


class Mail(NamedTuple):
    """One queued message and everything its handler may ask about it."""

    msg: Any
    #: The slot the asker waits on; ``None`` for a tell, a system notice or a stream's opening.
    reply: Reply | None
    sender: ActorRef | None
    #: ``"Service.method"`` when the message names its handler; ``None``: chosen by type.
    endpoint: str | None = None
    #: Metadata sent with the message (``context.headers``).
    headers: dict[str, str] | None = None
    #: Who is calling, as the node's guard verified it (requests from other nodes only).
    principal: Any = None


#: ``build_mail(Mail, (msg, reply, sender, endpoint, headers, principal))``: a :class:`Mail`
#: without the generated ``__new__`` (a Python call per message on the tell and ask paths).
build_mail: Final[
    Callable[
        [type[Mail], tuple[Any, Reply | None, ActorRef | None, str | None, dict[str, str] | None, Any]],
        Mail,
    ]
] = tuple.__new__


class Reply:
    """A one-shot reply slot for one ask. A slot is never reused: a late reply finds it abandoned."""

    __slots__ = (
        "abandoned",
        "deadline",
        "done",
        "error",
        "headers",
        "label",
        "scope",
        "slot",
        "task",
        "timeout",
        "value",
    )

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.done = False
        self.abandoned = False
        self.value: Any = None
        self.error: BaseException | None = None
        #: When set (requests from other nodes), the handler must finish by this trio time: it
        #: is skipped if still queued then, and cancelled through ``scope`` (the cancel scope of
        #: the worker running it) at the deadline or on the caller's CANCEL.
        self.deadline: float | None = None
        self.scope: trio.CancelScope | None = None
        #: Where this reply waits in the node's TimeoutWheel (``None`` when not registered).
        self.slot: int | None = None
        self.label = ""
        self.timeout = 0.0
        #: Metadata the handler sends back with its answer (``context.reply_headers``).
        self.headers: dict[str, str] | None = None

    def expire(self) -> None:
        """The asker's deadline passed: fail the wait with 408 (a late answer is then dropped)."""
        self.slot = None
        if not self.done:
            self.abandoned = True
            self.fail(RequestTimeout(f"no reply from {self.label} within {self.timeout:g}s", id=self.label))

    def resolve(self, value: Any) -> bool:
        """Deliver the answer; ``False`` if the asker already gave up (the reply is dropped)."""
        if self.done:
            return False
        self.value = value
        return self._finish()

    def fail(self, error: BaseException) -> bool:
        """Deliver an error instead of an answer; ``False`` as for :meth:`resolve`."""
        if self.done:
            return False
        self.error = error
        return self._finish()

    def _finish(self) -> bool:
        self.done = True
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)
        return not self.abandoned

    def _abort(self, raise_cancel: Any) -> Abort:
        self.task = None
        self.abandoned = True
        return Abort.SUCCEEDED

    async def wait(self) -> Any:
        if self.done:
            await checkpoint()
        else:
            self.task = current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self.error is not None:
            raise self.error
        return self.value
