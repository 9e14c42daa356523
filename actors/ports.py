"""What a cell and its :class:`~.context.Context` need of their node, and what a context needs
of its cell, as Protocols.

The runtime imports point one way: the node builds cells, so :mod:`.node` imports :mod:`.cell`
(and :mod:`.actor`, whose ``Actor.context`` returns a :class:`~.context.Context`). A cell still
calls into its node (the dispatcher, dead letters, deadlines, system tasks, spawning), and a
context into its cell. Naming those needs here, in a module that imports none of them, is what
lets :mod:`.lifecycle`, :mod:`.processing`, :mod:`.cell` and :mod:`.context` be typed without
importing their owners (no import cycle, not even for annotations). The concrete
:class:`~trimicro.actors.node.Node` and :class:`~trimicro.actors.cell.Cell` satisfy them
structurally; mypy checks that where a cell or a context is built.

Annotations only: a call through a Protocol-typed attribute is the same attribute lookup and
call as through the concrete class, so the per-message paths cost what they did.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from trimicro.mailbox.mailboxes import MailboxSpec
from trimicro.mailbox.refs import ActorRef, BindingNode

from .deadletters import DeadLetters
from .dispatcher import Dispatcher
from .metrics import NodeMetrics
from .supervision import ChildSpec, Restart, SupervisorStrategy
from .timers import TimeoutWheel, Timer, TimerService

__all__ = ["CellPort", "NodePort", "RelativePort"]


class NodePort(BindingNode, Protocol):
    """What a cell (and its context) needs of its node; a cell is a ref's binding, so this
    includes what a caller needs of a binding's node (:class:`~trimicro.mailbox.refs.BindingNode`)."""

    @property
    def id(self) -> str: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def timeouts(self) -> TimeoutWheel: ...
    @property
    def timers(self) -> TimerService: ...
    @property
    def dead_letters(self) -> DeadLetters: ...
    @property
    def metrics(self) -> NodeMetrics: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def root_strategy(self) -> SupervisorStrategy: ...
    @property
    def propagate(self) -> Callable[[str], bool]: ...
    @property
    def extensions(self) -> Mapping[str, Any]:
        """Per-node state of higher layers (the cluster finds itself here from an actor)."""
        ...

    def spend(self) -> bool: ...

    def dead_letter(
        self, recipient: ActorRef | None, msg: Any, reason: str, sender: ActorRef | None
    ) -> None: ...

    def spawn_system(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    # The cell types are above this module: a parameter taking a cell is ``Any`` here, and
    # ``handlers_for`` returns the :class:`~.actor.HandlerTable` of an actor class.
    def handlers_for(self, cls: Any) -> Any: ...

    def unregister(self, cell: Any) -> None: ...

    def resolve(self, ref: ActorRef) -> ActorRef: ...

    def child_spec(
        self,
        factory: Callable[..., Any],
        name: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        restart: Restart,
        shutdown: float,
        mailbox: MailboxSpec | None,
    ) -> ChildSpec: ...

    async def spawn_cell(self, parent: Any, spec: ChildSpec) -> ActorRef: ...


class RelativePort(Protocol):
    """A context's cell's parent or child, as the context sees it."""

    @property
    def ref(self) -> ActorRef: ...

    async def child_exited(self, child: Any) -> None: ...


class CellPort(Protocol):
    """What a :class:`~.context.Context` needs of its cell: who it is, its family, its timers,
    and the calls it schedules on its node (``stop``, a parent's ``child_exited``)."""

    @property
    def ref(self) -> ActorRef: ...
    @property
    def node(self) -> NodePort: ...
    @property
    def parent(self) -> RelativePort | None: ...
    @property
    def children(self) -> Mapping[str, RelativePort]: ...
    @property
    def status(self) -> int: ...

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None) -> bool: ...

    def timers(self) -> Iterable[Timer]: ...

    def add_timer(self, timer: Timer) -> None: ...

    def drop_timer(self, timer: Timer) -> None: ...

    async def stop(self, reason: str | None = None) -> None: ...

    async def child_exited(self, child: Any) -> None: ...
