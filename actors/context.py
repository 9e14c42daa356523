"""An actor's view of the runtime: itself, its children, timers, death watch, the current call."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from trimicro.mailbox.mailboxes import MailboxSpec
from trimicro.mailbox.refs import ActorRef

from .mail import Mail, Reply
from .ports import CellPort
from .status import STOPPING, current_item
from .supervision import ChildSpec, Restart
from .timers import Timer

if TYPE_CHECKING:
    # The one import of this module that closes a cycle (node -> actor -> context -> node), kept
    # on purpose: ``context.node`` is public API and gives users the full :class:`Node`, which
    # no Protocol of what the runtime needs would (see the actors contract in pyproject.toml).
    from .node import Node

__all__ = ["Context"]


def _reply_of(item: Mail | None) -> Reply | None:
    """The reply slot of the item being handled (``None`` for a tell or outside a handler)."""
    if item is None:
        return None
    reply = item.reply
    return reply


class Context:
    """Given to every actor as ``self.context``; valid across restarts of the same actor."""

    __slots__ = ("_cell",)

    def __init__(self, cell: CellPort) -> None:
        self._cell = cell

    @property
    def ref(self) -> ActorRef:
        """This actor's own ref."""
        return self._cell.ref

    @property
    def node(self) -> Node:
        """The node this actor runs on (the cell sees it through :class:`~.ports.NodePort`; it
        is always a :class:`Node`)."""
        return cast("Node", self._cell.node)

    @property
    def parent(self) -> ActorRef | None:
        parent = self._cell.parent
        return None if parent is None else parent.ref

    @property
    def children(self) -> list[ActorRef]:
        """Live children in start order."""
        return [c.ref for c in self._cell.children.values()]

    @property
    def sender(self) -> ActorRef | None:
        """The sender of the message being handled (``None`` outside an actor)."""
        item = current_item.get()
        if item is None:
            return None
        sender = item.sender
        return sender

    @property
    def headers(self) -> dict[str, str]:
        """Metadata sent with the message being handled. Calls made while handling it carry it
        onwards, save hop-by-hop keys (see :mod:`trimicro.actors.metadata`)."""
        item = current_item.get()
        if item is None:
            return {}
        headers = item.headers
        return {} if headers is None else dict(headers)

    @property
    def account(self) -> Any:
        """Who is calling: the verified principal of the request being handled, as the node's
        guard admitted it (an ``Account`` under ``trimicro.cluster.auth``); ``None`` for local
        messages and when no guard is installed."""
        item = current_item.get()
        if item is None:
            return None
        principal = item.principal
        return principal

    async def spawn(
        self,
        factory: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        restart: Restart = Restart.TRANSIENT,
        shutdown: float = 5.0,
        mailbox: MailboxSpec | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Start a child supervised by this actor (stopped before it, restarted by its strategy)."""
        node = self._cell.node
        spec = node.child_spec(factory, name, args, kwargs, restart, shutdown, mailbox)
        return await node.spawn_cell(self._cell, spec)

    async def spawn_spec(self, spec: ChildSpec) -> ActorRef:
        return await self._cell.node.spawn_cell(self._cell, spec)

    def stop(self, ref: ActorRef | None = None) -> None:
        """Stop this actor (or a child) after the current message; returns at once.

        An actor stopping itself is a *normal exit*: a ``PERMANENT`` child is restarted.
        """
        cell = self._cell if ref is None else ref.binding
        # ``type(self._cell)`` is the local cell class (Cell), known here without importing it.
        if not isinstance(cell, type(self._cell)):
            raise ValueError(f"{ref} is not a local actor")
        node = self._cell.node
        if cell is self._cell and cell.parent is not None:
            node.spawn_system(cell.parent.child_exited, cell)
        else:
            node.spawn_system(cell.stop, None)

    @property
    def reply_headers(self) -> dict[str, str]:
        """Metadata sent back with this request's answer (empty and unused for a tell)."""
        reply = _reply_of(current_item.get())
        if reply is None:
            return {}
        if reply.headers is None:
            reply.headers = {}
        headers: dict[str, str] = reply.headers
        return headers

    @property
    def deadline(self) -> float | None:
        """The current request's deadline (trio clock) when the caller sent one, else ``None``.

        Requests from other nodes carry the caller's remaining budget; asks made while handling
        one default to what is left of it.
        """
        reply = _reply_of(current_item.get())
        deadline = None if reply is None else reply.deadline
        return None if deadline is None or deadline == float("inf") else deadline

    def watch(self, ref: ActorRef) -> None:
        """Receive :class:`~trimicro.actors.Terminated` when ``ref`` stops (at once if it has).

        Works for actors on other nodes too; if their node becomes unreachable, ``Terminated``
        arrives with the reason ``"node unreachable"``, and if that node refuses the watch (its
        auth rules, or too many watches), with ``"watch refused: <code> <detail>"``. A local
        actor that already has ``cell.MAX_WATCHERS`` watchers refuses with
        :class:`~trimicro.actors.TooManyRequests`.
        """
        binding = ref.binding
        if binding is None:
            raise ValueError(f"{ref} is not bound to a node")
        binding.add_watcher(self._cell.ref)

    def unwatch(self, ref: ActorRef) -> None:
        binding = ref.binding
        if binding is not None:
            binding.remove_watcher(self._cell.ref)

    def send_after(self, delay: float, message: Any, *, key: Any = None) -> Timer:
        """Deliver ``message`` to this actor after ``delay`` seconds (cancelled if it stops)."""
        return self._timer(delay, None, message, key)

    def every(self, interval: float, message: Any, *, key: Any = None, delay: float | None = None) -> Timer:
        """Deliver ``message`` every ``interval`` seconds until cancelled or the actor stops.

        A tick that meets a full mailbox is dropped to dead letters, not queued up.
        """
        return self._timer(interval if delay is None else delay, interval, message, key)

    def cancel_timer(self, key: Any) -> None:
        """Cancel this actor's timers started with ``key``."""
        for timer in list(self._cell.timers()):
            if timer.key == key:
                timer.cancel()

    def _timer(self, delay: float, interval: float | None, message: Any, key: Any) -> Timer:
        cell = self._cell
        if key is not None:
            self.cancel_timer(key)

        def fire() -> bool:
            return cell.try_tell(message, cell.ref, None) or cell.status < STOPPING

        timer = cell.node.timers.schedule(delay, fire, interval=interval, key=key, on_cancel=cell.drop_timer)
        cell.add_timer(timer)
        return timer
