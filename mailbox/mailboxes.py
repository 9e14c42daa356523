"""Mailbox queues: bounded FIFO (the default), unbounded FIFO, and priority.

These are plain data structures with no I/O and no waiting: ``push`` says whether the item fit,
and the runtime decides what "full" means for the sender (wait for room, or report failure).
System messages (death-watch notices, timer ticks) bypass the user capacity so that a full
mailbox never loses them, but they are bounded too (``system_reserve``): no queue here grows
without limit unless you chose :class:`UnboundedMailbox`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import attrs

__all__ = [
    "BoundedMailbox",
    "Mailbox",
    "MailboxSpec",
    "PriorityMailbox",
    "UnboundedMailbox",
    "bounded",
    "priority",
    "unbounded",
]

T = TypeVar("T")

#: Room kept for system messages beyond a bounded mailbox's capacity.
DEFAULT_SYSTEM_RESERVE = 1024


class Mailbox(Protocol[T]):
    """What the runtime needs from a mailbox."""

    capacity: int | None

    def __len__(self) -> int: ...

    def push(self, item: T, system: bool = False) -> bool:
        """Append ``item``; ``False`` (and nothing stored) when there is no room."""
        ...

    def pop(self) -> T:
        """Remove and return the next item; ``IndexError`` when empty."""
        ...

    def has_room(self) -> bool:
        """Whether a user message would fit now."""
        ...

    def discard_first(self, match: Callable[[T], bool]) -> T | None:
        """Remove and return the oldest user item for which ``match`` is true (O(n)), or None."""
        ...


class BoundedMailbox(deque[T]):
    """FIFO with a capacity for user messages; the default, so that producers feel backpressure.

    The queue *is* a deque (a subclass, not a wrapper): ``len`` runs in C on the hot path and
    an idle actor holds one object fewer. Use :meth:`push` and :meth:`pop` (which takes from
    the front), not the deque's own methods, which know nothing of the capacity.
    """

    __slots__ = ("_system", "capacity", "system_reserve")

    def __init__(self, capacity: int, system_reserve: int = DEFAULT_SYSTEM_RESERVE) -> None:
        if capacity < 1:
            raise ValueError("a bounded mailbox needs capacity >= 1")
        # No ``deque.__init__``: ``deque.__new__`` made it empty and unbounded already, and a
        # spawn is hot.
        self.capacity: int | None = capacity
        self.system_reserve = system_reserve
        self._system = 0

    def has_room(self) -> bool:
        return len(self) - self._system < self.capacity  # type: ignore[operator]

    def push(self, item: T, system: bool = False) -> bool:
        if system:
            if self._system >= self.system_reserve:
                return False
            # Marked so pop can keep the system count right without a second queue.
            self.append(_System(item))  # type: ignore[arg-type]
            self._system += 1
            return True
        if len(self) - self._system >= self.capacity:  # type: ignore[operator]
            return False
        self.append(item)
        return True

    def pop(self) -> T:  # type: ignore[override]
        item: Any = self.popleft()
        if type(item) is _System:
            self._system -= 1
            item = item.item
        result: T = item  # not typing.cast: a function call on this hot path
        return result

    def discard_first(self, match: Callable[[T], bool]) -> T | None:
        return _discard_first(self, match)


class _System:
    __slots__ = ("item",)

    def __init__(self, item: object) -> None:
        self.item = item


class UnboundedMailbox(deque[T]):
    """FIFO without a capacity: for actors that must never push back (use with care).

    A deque subclass like :class:`BoundedMailbox`; :meth:`pop` takes from the front.
    """

    __slots__ = ("capacity",)

    def __init__(self) -> None:
        self.capacity: int | None = None  # (no ``deque.__init__``: see BoundedMailbox)

    def has_room(self) -> bool:
        return True

    def push(self, item: T, system: bool = False) -> bool:
        self.append(item)
        return True

    def pop(self) -> T:  # type: ignore[override]
        return self.popleft()

    def discard_first(self, match: Callable[[T], bool]) -> T | None:
        return _discard_first(self, match)


class PriorityMailbox(Generic[T]):
    """Lowest priority number first, FIFO among equals; system messages come before all others.

    ``key`` gives a user message's priority (default 0 for all). System messages get a
    priority below any user priority.
    """

    __slots__ = ("_heap", "_key", "_seq", "_system", "capacity", "system_reserve")

    def __init__(
        self,
        capacity: int,
        key: Callable[[T], int] | None = None,
        system_reserve: int = DEFAULT_SYSTEM_RESERVE,
    ) -> None:
        if capacity < 1:
            raise ValueError("a priority mailbox needs capacity >= 1")
        self.capacity: int | None = capacity
        self.system_reserve = system_reserve
        self._key = key
        self._heap: list[tuple[int, int, bool, T]] = []
        self._seq = itertools.count()
        self._system = 0

    def __len__(self) -> int:
        return len(self._heap)

    def has_room(self) -> bool:
        return len(self._heap) - self._system < self.capacity  # type: ignore[operator]

    def push(self, item: T, system: bool = False) -> bool:
        if system:
            if self._system >= self.system_reserve:
                return False
            self._system += 1
            heapq.heappush(self._heap, (-(2**62), next(self._seq), True, item))
            return True
        if len(self._heap) - self._system >= self.capacity:  # type: ignore[operator]
            return False
        prio = self._key(item) if self._key is not None else 0
        heapq.heappush(self._heap, (prio, next(self._seq), False, item))
        return True

    def pop(self) -> T:
        _, _, system, item = heapq.heappop(self._heap)
        if system:
            self._system -= 1
        return item

    def discard_first(self, match: Callable[[T], bool]) -> T | None:
        candidates = [e for e in self._heap if not e[2] and match(e[3])]
        if not candidates:
            return None
        oldest = min(candidates, key=lambda e: e[1])
        self._heap.remove(oldest)
        heapq.heapify(self._heap)
        return oldest[3]


def _discard_first(q: deque[T], match: Callable[[T], bool]) -> T | None:
    for i, item in enumerate(q):
        if type(item) is not _System and match(item):
            del q[i]
            return item
    return None


@attrs.frozen
class MailboxSpec:
    """How to build an actor's mailbox; a value so actor classes can declare it."""

    kind: str = "bounded"
    capacity: int = 1000
    key: Callable[[object], int] | None = None

    def build(self, message_of: Callable[[Any], object] | None = None) -> Mailbox[Any]:
        """A new mailbox; ``message_of`` extracts the message from a queued item for ``key``."""
        if self.kind == "bounded":
            return BoundedMailbox(self.capacity)
        if self.kind == "unbounded":
            return UnboundedMailbox()
        if self.kind == "priority":
            key = self.key
            if key is not None and message_of is not None:
                extract = message_of
                user_key = key

                def key(item: Any) -> int:
                    return user_key(extract(item))

            return PriorityMailbox(self.capacity, key)
        raise ValueError(f"unknown mailbox kind {self.kind!r}")


class Unbuilt:
    """An actor's mailbox before its first message: empty, and one shared by all the actors of
    a node with the same spec, so an actor that is never sent anything never allocates a queue
    (a deque costs more than the rest of an idle actor). The owner swaps in a real mailbox
    from :meth:`build` when the first item arrives; nothing can be pushed here."""

    __slots__ = ("_message_of", "capacity", "spec")

    def __init__(self, spec: MailboxSpec, message_of: Callable[[Any], object] | None = None) -> None:
        self.capacity = spec.build(message_of).capacity  # fails now, not at the first message
        self.spec = spec
        self._message_of = message_of

    def build(self) -> Mailbox[Any]:
        """A new, real mailbox of this spec."""
        return self.spec.build(self._message_of)

    def __len__(self) -> int:
        return 0

    def push(self, item: Any, system: bool = False) -> bool:
        raise RuntimeError("an unbuilt mailbox holds nothing: build() a real one first")

    def pop(self) -> Any:
        raise IndexError("pop from an empty mailbox")

    def has_room(self) -> bool:
        return True

    def discard_first(self, match: Callable[[Any], bool]) -> Any:
        return None


def bounded(capacity: int = 1000) -> MailboxSpec:
    """A bounded FIFO mailbox (the default, capacity 1000)."""
    return MailboxSpec("bounded", capacity)


def unbounded() -> MailboxSpec:
    """An unbounded FIFO mailbox."""
    return MailboxSpec("unbounded")


def priority(capacity: int = 1000, key: Callable[[object], int] | None = None) -> MailboxSpec:
    """A priority mailbox: system messages first, then by ``key(message)`` ascending."""
    return MailboxSpec("priority", capacity, key)
