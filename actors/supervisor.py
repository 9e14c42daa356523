"""A ready-made supervisor actor: starts its children from specs, in order, and supervises them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from .actor import Actor
from .supervision import ChildSpec


class Supervisor(Actor):
    """Starts ``children`` (specs) in order when started; its ``supervision`` applies to them.

    Subclass and set ``children`` and ``supervision`` as class attributes, or pass ``children``
    to the constructor. On restart the old children are stopped and the specs started anew.
    """

    children: ClassVar[Sequence[ChildSpec]] = ()

    def __init__(self, children: Sequence[ChildSpec] | None = None) -> None:
        self._specs = tuple(self.children if children is None else children)

    async def started(self) -> None:
        for spec in self._specs:
            await self.context.spawn_spec(spec)
