"""Actor addresses as values.

An :class:`ActorRef` names an actor by node id, path and incarnation (``uid``). It is hashable,
comparable and serialisable, and has the same shape whether the actor is local or remote.
The runtime *binds* a ref to whatever delivers its messages (a local cell or a route to another
node); the binding is not part of the value, so two refs to the same actor are equal whether or
not either is bound, and a ref decoded from the wire is bound by the node that decoded it.

:class:`Binding` is that "whatever": the one interface a local cell, a stopped actor's ref and
the route to an actor on another node all implement, so ``tell``/``ask`` are the same calls
wherever the actor lives. It is declared here, beside the ref that holds one, because the ref
is the lowest layer's value and the implementations all live above it (in the actor layer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, Protocol

import attrs

__all__ = ["ActorRef", "Binding", "BindingNode", "ref_binder"]


class BindingNode(Protocol):
    """What a caller needs from the node a binding delivers through."""

    @property
    def ask_timeout(self) -> float:
        """The default timeout of an ``ask`` (seconds)."""
        ...

    @property
    def client_chain(self) -> Callable[[Any], Awaitable[Any]] | None:
        """The node's client middleware composed (the actor layer's ``Next``, taking its
        ``Call``); ``None`` when the node has none, which is what the calls' fast paths check."""
        ...


class Binding(Protocol):
    """What delivers a ref's messages: the actor's cell, a stopped actor's stand-in, or the
    route to an actor on another node. The actor layer's ``tell``/``try_tell``/``ask``/
    ``open_stream`` and death watch call these; none raises for an undeliverable tell (it
    becomes a dead letter), while ``ask`` and ``open_stream`` raise the typed error the caller
    should see.

    ``headers`` are the call's metadata, already merged with what propagates from the message
    being handled; ``sender`` is the calling actor's ref (``None`` outside an actor).
    """

    @property
    def node(self) -> BindingNode:
        """The node that delivers through this binding (its defaults apply to the call)."""
        ...

    async def tell(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None = None,
        /,
    ) -> None:
        """Queue a one-way message, waiting only while there is no room (backpressure)."""
        ...

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None, /) -> bool:
        """Queue without waiting; ``False`` (and a dead letter) when it could not be."""
        ...

    async def ask(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None,
        timeout: float,
        reply_headers: dict[str, str] | None = None,
        /,
    ) -> Any:
        """Send a request and return its answer, or raise the handler's typed error."""
        ...

    async def open_stream(
        self,
        endpoint: str,
        request: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        window: int,
        timeout: float,
        /,
    ) -> Any:
        """Open a stream with the actor's ``endpoint`` handler; the actor layer's ``Stream``
        (typed ``Any`` here: streams live above this layer)."""
        ...

    def system(self, msg: Any, /) -> bool:
        """Deliver a runtime notice (``Terminated``) even past a full mailbox."""
        ...

    def add_watcher(self, watcher: ActorRef, /) -> None:
        """Tell ``watcher`` (with ``Terminated``) when the actor stops; at once if it has."""
        ...

    def remove_watcher(self, watcher: ActorRef, /) -> None:
        """Undo :meth:`add_watcher`."""
        ...


@attrs.frozen(slots=True, init=False, unsafe_hash=False)
class ActorRef:
    """The address of one actor incarnation.

    ``uid`` distinguishes incarnations that reuse a path: a ref to a stopped actor does not reach
    a new actor later spawned under the same name. ``uid == 0`` means "whoever holds this path".

    Immutable (attrs frozen), with a hand-written ``__init__`` that sets the slots directly and
    a hash computed on first use: every spawn and every decoded message builds refs, and the
    generated frozen ``__init__`` (one ``object.__setattr__`` per field) cost three times as much.
    """

    node: str
    path: str
    uid: int = 0
    _binding: Binding | None = attrs.field(default=None, eq=False, repr=False, alias="binding")
    _hash: int | None = attrs.field(default=None, eq=False, repr=False, init=False)

    def __init__(self, node: str, path: str, uid: int = 0, binding: Binding | None = None) -> None:
        _set_node(self, node)
        _set_path(self, path)
        _set_uid(self, uid)
        _set_binding(self, binding)
        _set_hash(self, None)

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((self.node, self.path, self.uid))
            _set_hash(self, h)
        return h

    def __reduce__(self) -> tuple[Any, ...]:
        # Not the slots' state: a hash cached in one process is wrong in another.
        return ActorRef, (self.node, self.path, self.uid, self._binding)

    @property
    def name(self) -> str:
        """The last path segment."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def binding(self) -> Binding | None:
        """What delivers messages to this ref (set by the runtime), or ``None``."""
        return self._binding

    def bind(self, binding: Binding) -> ActorRef:
        """A copy of this ref delivered through ``binding``."""
        return ActorRef(self.node, self.path, self.uid, binding=binding)

    def to_fields(self) -> list[Any]:
        """The wire form: ``[node, path, uid]``."""
        return [self.node, self.path, self.uid]

    @classmethod
    def from_fields(cls, fields: Any) -> ActorRef:
        """Rebuild from :meth:`to_fields`; refuses anything else with ``ValueError``."""
        if (
            not isinstance(fields, (list, tuple))
            or len(fields) != 3
            or not isinstance(fields[0], str)
            or not isinstance(fields[1], str)
            or not isinstance(fields[2], int)
            or isinstance(fields[2], bool)
        ):
            raise ValueError(f"an actor ref is [node: str, path: str, uid: int], not {fields!r}")
        return cls(fields[0], fields[1], fields[2])

    def __str__(self) -> str:
        return f"{self.node}{self.path}#{self.uid}"


# The slots' own setters: a frozen class refuses ``setattr``, and these are the cheapest way past.
_set_node = ActorRef.__dict__["node"].__set__
_set_path = ActorRef.__dict__["path"].__set__
_set_uid = ActorRef.__dict__["uid"].__set__
_set_binding = ActorRef.__dict__["_binding"].__set__
_set_hash = ActorRef.__dict__["_hash"].__set__


#: How refs decoded in the current context get their binding. A node's connection reader sets it
#: once for its task, so every ref inside a received message (at any depth, through any codec)
#: arrives usable; unset (``None``), decoded refs stay unbound values.
ref_binder: ContextVar[Callable[[ActorRef], ActorRef] | None] = ContextVar(
    "trimicro_ref_binder", default=None
)
