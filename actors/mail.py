"""What a mailbox holds: the queued item, and the reply slot an ask waits on.

Every message, local or from another node, is queued as one :data:`Mail` value: the message,
the :class:`Reply` of an ask (``None`` for a tell), the sender, the endpoint it names, its
metadata and the verified principal of a caller on another node. ``Mail`` is a fixed-length
tuple type, so mypy checks every place one is built and every place one is read, and readers
unpack it into named variables (``msg, reply, sender, endpoint, headers, principal = item``),
never index it by number.

Why not a ``NamedTuple``: an item is built and read for every message, and a tuple *subclass*
pays for it on CPython 3.11. Building one (``tuple.__new__(Mail, ...)``, the cheapest way) costs
about 1,400 instructions more than a tuple display (an argument tuple, a temporary, a
GC-tracked allocation, no free list), and each read by name goes through the unspecialised
descriptor path (about 200 instructions, against about 30 to unpack a field of an exact tuple).
That came to +11% instructions per local tell and +13% per ask; the exact tuple costs nothing
over the untyped one it replaced. Tried again with every reader unpacking (no read by name) and
every item built by ``tuple.__new__(Mail, ...)`` bound once per module: still +8.4% per local
tell and +6.8% per ask (``count_instructions.py``; remote ask16 +0.8%), because unpacking a
tuple subclass takes CPython 3.11's generic iterator path (about 465 instructions more per
unpack than an exact tuple's specialised one) on top of the ~1,400 of building it.
"""

from __future__ import annotations

from typing import Any, TypeAlias

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


#: One queued item: ``(msg, reply, sender, endpoint, headers, principal)``.
#:
#: - ``msg``: the message (or an endpoint's body);
#: - ``reply``: the slot the asker waits on; ``None`` for a tell, a system notice or a stream's
#:   opening;
#: - ``sender``: the sending actor's ref, if any;
#: - ``endpoint``: ``"Service.method"`` when the message names its handler; ``None``: chosen
#:   by type;
#: - ``headers``: metadata sent with the message (``context.headers``), or ``None``;
#: - ``principal``: who is calling, as the node's guard verified it (requests from other nodes
#:   only; ``None`` otherwise).
Mail: TypeAlias = tuple[Any, Reply | None, ActorRef | None, str | None, dict[str, str] | None, Any]
