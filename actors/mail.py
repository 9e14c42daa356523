"""What a mailbox holds: the queued item, and the reply slot an ask waits on.

Every message, local or from another node, is queued as one :class:`Mail`: the message, the
:class:`Reply` of an ask (``None`` for a tell), the sender, the endpoint it names, its metadata
and the verified principal of a caller on another node. Every reader takes its fields by name
(``item.reply``), and mypy checks each one.

Why a slotted class built without ``__init__``: an item is built and read once per message, so
its cost is paid by every tell and ask (``benchmarks/count_instructions.py``, CPython 3.11):

* an exact tuple read by unpacking: the baseline;
* a ``NamedTuple``: +8.4% instructions per local tell, +6.8% per ask, even with every reader
  unpacking and items built by ``tuple.__new__`` (CPython 3.11 builds a tuple subclass about
  1,400 instructions dearer and unpacks it through the generic iterator path);
* this class with a six-argument ``__init__``: about 1,860 instructions more per item than a
  tuple (calling a Python ``__init__`` from ``type.__call__`` re-enters the interpreter);
* this class built as ``Mail()`` and six slot stores: about 770 more per item, and a read by
  name (``LOAD_ATTR_SLOT``) costs what unpacking did. The per-message paths build it that way
  (:meth:`Mail.of` written out); the rest call :meth:`Mail.of`.

The ~770 are paid for by a cheaper cancellation check in local and remote ``tell`` and the
direct ``ask`` (:mod:`.cancelpoint`, about 1,400 fewer). Against the exact tuple, in one
side-by-side run: local tell and local ask 0.98, remote ask with 16 in flight 1.00, remote tell
and a publish to one subscriber 1.01 (remote tell moves by about 5% between runs of the same
code).
"""

from __future__ import annotations

from typing import Any

import trio
from trio.lowlevel import Abort, checkpoint, current_task, reschedule

from trimicro.mailbox.errors import RequestTimeout
from trimicro.mailbox.refs import ActorRef

__all__ = ["Mail", "Reply"]


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


class Mail:
    """One queued item. Build it with :meth:`of` (or, on a per-message path, ``Mail()`` and all
    six stores: a field never stored raises ``AttributeError`` when read)."""

    __slots__ = ("endpoint", "headers", "msg", "principal", "reply", "sender")

    #: The message (or an endpoint's body).
    msg: Any
    #: The slot the asker waits on; ``None`` for a tell, a system notice or a stream's opening.
    reply: Reply | None
    #: The sending actor's ref, if any.
    sender: ActorRef | None
    #: ``"Service.method"`` when the message names its handler; ``None``: chosen by type.
    endpoint: str | None
    #: Metadata sent with the message (``context.headers``), or ``None``.
    headers: dict[str, str] | None
    #: Who is calling, as the node's guard verified it (requests from other nodes only;
    #: ``None`` otherwise).
    principal: Any

    @classmethod
    def of(
        cls,
        msg: Any,
        reply: Reply | None = None,
        sender: ActorRef | None = None,
        endpoint: str | None = None,
        headers: dict[str, str] | None = None,
        principal: Any = None,
    ) -> Mail:
        """An item with these fields (the ones left out are ``None``)."""
        item = cls()
        item.msg, item.reply, item.sender = msg, reply, sender
        item.endpoint, item.headers, item.principal = endpoint, headers, principal
        return item

    def __repr__(self) -> str:
        return (
            f"Mail(msg={self.msg!r}, reply={self.reply!r}, sender={self.sender!r}, "
            f"endpoint={self.endpoint!r}, headers={self.headers!r}, principal={self.principal!r})"
        )
