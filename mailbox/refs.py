"""Actor addresses as values.

An :class:`ActorRef` names an actor by node id, path and incarnation (``uid``). It is hashable,
comparable and serialisable, and has the same shape whether the actor is local or remote.
The runtime *binds* a ref to whatever delivers its messages (a local cell or a route to another
node); the binding is not part of the value, so two refs to the same actor are equal whether or
not either is bound, and a ref decoded from the wire is bound by the node that decoded it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import attrs

__all__ = ["ActorRef", "ref_binder"]


@attrs.frozen(slots=True, cache_hash=True)
class ActorRef:
    """The address of one actor incarnation.

    ``uid`` distinguishes incarnations that reuse a path: a ref to a stopped actor does not reach
    a new actor later spawned under the same name. ``uid == 0`` means "whoever holds this path".
    """

    node: str
    path: str
    uid: int = 0
    _binding: Any = attrs.field(default=None, eq=False, hash=False, repr=False, alias="binding")

    @property
    def name(self) -> str:
        """The last path segment."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def binding(self) -> Any:
        """What delivers messages to this ref (set by the runtime), or ``None``."""
        return self._binding

    def bind(self, binding: Any) -> ActorRef:
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


#: How refs decoded in the current context get their binding. A node's connection reader sets it
#: once for its task, so every ref inside a received message (at any depth, through any codec)
#: arrives usable; unset (``None``), decoded refs stay unbound values.
ref_binder: ContextVar[Callable[[ActorRef], ActorRef] | None] = ContextVar(
    "trimicro_ref_binder", default=None
)
