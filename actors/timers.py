"""Timers owned by actors, driven by one task per node.

An idle actor must not cost a task, so timers are entries in one heap served by a single node
task that sleeps until the earliest deadline (moving its own cancel-scope deadline when an
earlier timer arrives). Time is trio's clock, so tests drive timers with ``MockClock``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any, Protocol

import trio

__all__ = ["Expirable", "TimeoutWheel", "Timer", "TimerService"]

from trimicro.mailbox.logs import get_logger

log = get_logger(__package__)


class Timer:
    """One scheduled delivery; ``cancel()`` is idempotent and O(1) (lazy removal from the heap)."""

    __slots__ = ("cancelled", "deadline", "fire", "interval", "key", "on_cancel")

    def __init__(
        self,
        deadline: float,
        interval: float | None,
        fire: Callable[[], bool],
        key: Any = None,
        on_cancel: Callable[[Timer], None] | None = None,
    ) -> None:
        self.deadline = deadline
        self.interval = interval
        self.fire = fire
        self.key = key
        self.cancelled = False
        self.on_cancel = on_cancel

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            if self.on_cancel is not None:
                self.on_cancel(self)


class TimerService:
    """The node's timer heap; ``run`` is started once in the node's system nursery."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(
        self,
        delay: float,
        fire: Callable[[], bool],
        *,
        interval: float | None = None,
        key: Any = None,
        on_cancel: Callable[[Timer], None] | None = None,
    ) -> Timer:
        """Call ``fire`` after ``delay`` seconds (then every ``interval``, while it returns True)."""
        if delay < 0 or (interval is not None and interval <= 0):
            raise ValueError("timer delays must be >= 0 and intervals > 0")
        timer = Timer(trio.current_time() + delay, interval, fire, key, on_cancel)
        self._push(timer)
        return timer

    def _push(self, timer: Timer) -> None:
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
        sleep = self._sleep
        if sleep is not None and timer.deadline < sleep.deadline:
            sleep.deadline = timer.deadline

    async def run(self) -> None:
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, timer = heapq.heappop(heap)
                if timer.cancelled:
                    continue
                keep = timer.fire()
                if timer.interval is not None and keep and not timer.cancelled:
                    # A late tick does not cause a burst: the next one is one interval from now.
                    timer.deadline = max(timer.deadline + timer.interval, now)
                    heapq.heappush(heap, (timer.deadline, next(self._seq), timer))
                elif not timer.cancelled:
                    timer.cancelled = True
                    if timer.on_cancel is not None:
                        timer.on_cancel(timer)
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._sleep = scope
                await trio.sleep_forever()
            self._sleep = None


class Expirable(Protocol):
    def expire(self) -> None: ...


class TimeoutWheel:
    """Coarse deadlines for many short waits (every ask has one): O(1) to add and to remove.

    A trio cancel scope with a deadline costs about as much as a whole local ask, and nearly
    every ask finishes long before its deadline, so asks register here instead: entries are
    grouped in buckets of ``resolution`` seconds, one node task wakes at each due bucket and
    calls ``expire()`` on what is still in it. An entry never expires early, and at most
    ``resolution`` late.
    """

    def __init__(self, resolution: float = 0.005) -> None:
        self.resolution = resolution
        self._buckets: dict[int, dict[Expirable, None]] = {}
        self._heap: list[int] = []
        self._sleep: trio.CancelScope | None = None

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, deadline: float, entry: Expirable) -> int:
        """Expire ``entry`` once ``deadline`` (trio time) has passed; returns its slot for remove."""
        slot = math.ceil(deadline / self.resolution)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._heap, slot)
            sleep = self._sleep
            if sleep is not None and slot * self.resolution < sleep.deadline:
                sleep.deadline = slot * self.resolution
        bucket[entry] = None
        return slot

    def remove(self, slot: int, entry: Expirable) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(entry, None)

    async def run(self) -> None:
        heap = self._heap
        buckets = self._buckets
        resolution = self.resolution
        while True:
            now = trio.current_time()
            while heap and heap[0] * resolution <= now:
                bucket = buckets.pop(heapq.heappop(heap), None)
                for entry in list(bucket or ()):
                    try:
                        entry.expire()
                    except Exception:
                        log.exception("timeout handler %r failed", entry)
            # Buckets emptied since (their asks answered: nearly all) are no reason to wake:
            # sleep until the first that still holds something (else a node would wake every
            # ``resolution`` for as long as its asks' deadlines span, for nothing).
            while heap and not buckets.get(heap[0]):
                buckets.pop(heapq.heappop(heap), None)
            with trio.CancelScope(deadline=heap[0] * resolution if heap else math.inf) as scope:
                self._sleep = scope
                await trio.sleep_forever()
            self._sleep = None
