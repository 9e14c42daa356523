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
from typing import Any

import trio

__all__ = ["Timer", "TimerService"]


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
