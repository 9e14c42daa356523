"""An asyncio event loop stepped by trio, in trio's own thread: how trimicro runs nats-py.

nats-py is an asyncio client; trimicro runs on trio. The loop here is a plain
``asyncio.SelectorEventLoop`` that never runs by itself: trio steps it (:meth:`HostedLoop.pump`:
run it until nothing is ready). Its selector (an epoll or kqueue descriptor, itself pollable) is
watched with trio's own I/O wait, by one task at a time, its *owner*:

* a caller waiting for its answer (:meth:`Waiter.wait`) owns it if nobody does; when the
  descriptor is ready it pumps the loop itself, so the server's answer wakes the very task
  that waits for it: one trio task step per round trip, as a plain asyncio program wakes its
  loop once. Other callers meanwhile wait to be rescheduled by whichever pump finishes their
  call, and the first of them inherits the descriptor when the owner is done;
* otherwise (no call in flight: deliveries, watchers, pings) a driver task owns it.

Work that trio tasks queue on the loop (a request) is run by a trio instrument just before trio
waits for I/O (:meth:`HostedLoop.mark`): once per scheduler batch, so the requests of every task
of the batch leave in one write, with no task to wake. A second task sleeps until the loop's
next timer. No other thread is involved.

Why not a thread of its own (the previous design) or trio-asyncio (``docs/performance.md``,
"NATS: bridging asyncio to trio", ``benchmarks/bench_nats_bridge.py``): a round trip through a
thread costs two cross-thread wake-ups and two hand-offs of the GIL, about 100 µs without any
I/O on this 2-core machine and 250-400 µs under load; one-at-a-time requests ran at 0.34-0.64x
raw nats-py. trio-asyncio also steps a loop inside trio, but sends every callback through a
trio channel and replaces the process's event-loop policy; this module does neither.

What it relies on of asyncio beyond the documented API, stable since Python 3.4 and checked
by ``tests/test_nats_bridge.py``: ``BaseEventLoop._run_once`` (one iteration), its ``_ready``
queue and ``_scheduled`` timer heap, and the loop's async-generator hooks (set while it runs,
as ``run_forever`` does, so an asyncio generator is finalised by asyncio, not by trio). The
selector given to the loop never blocks: waiting is trio's job.

Another thread may still hand work to the loop with ``loop.call_soon_threadsafe`` (asyncio's
executor does, for DNS): it writes the loop's self-pipe, which makes the selector ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import logging
import math
import selectors
import sys
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import outcome
import trio

from trimicro.mailbox.errors import ServiceUnavailable

__all__ = ["HostedLoop", "Waiter"]

log = logging.getLogger("trimicro.nats")

#: Loop iterations one :meth:`HostedLoop.pump` runs at most before letting trio run others.
PUMP_LIMIT = 64
_DRIVER = "driver"  # the owner of the descriptor when no caller owns it
_LEAD = object()  # what a waiter is rescheduled with when it inherits the descriptor


class _NeverBlocks(selectors.DefaultSelector):
    """The loop's selector: it only polls (trio waits on its descriptor instead), and not at
    all while a caller owning the descriptor waits on it (that caller's answer must wake it)."""

    poll = True

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if not self.poll:
            return []
        return super().select(0)


class HostedLoop:
    """An asyncio loop in trio's thread (see the module docstring).

    :meth:`start` (in trio) starts the driver, the timer and the instrument; :meth:`pump` runs
    what is ready now; :meth:`mark` makes the loop run before trio next waits for I/O (after work
    was queued on it with ``call_soon`` or ``create_task``); :meth:`after` runs a plain function
    in trio once the current pump is over; :meth:`stop` stops all and closes the loop.
    ``woke`` is set by whatever, during a pump, makes a trio task runnable.
    """

    def __init__(self) -> None:
        self._selector = _NeverBlocks()
        self.loop: Any = asyncio.SelectorEventLoop(self._selector)
        self._fd: int = self._selector.fileno()
        self._scope = trio.CancelScope()
        self._pumping = False
        self._marked = False
        self.woke = False
        self._instrument = _BeforeWait(self)
        self._after: list[Callable[[], None]] = []
        self._timer: trio.CancelScope | None = None
        self._timer_when = math.inf  # the timer's deadline, on the loop's clock
        self._started = False
        self._owner: object = None  # _DRIVER, a Waiter, or None (nobody watches the descriptor)
        self._followers: collections.deque[Waiter] = collections.deque()
        self._driver: trio.lowlevel.Task | None = None
        self._driver_idle = False  # parked until the descriptor is its again
        self._finished = 0  # calls whose waiting task a pump rescheduled
        #: (when, sequence, waiter) of each waiter with a deadline, on the loop's clock: a heap of
        #: tuples compares in C, where asyncio's timers compare in Python (a third of a round
        #: trip's calls went to those comparisons); an entry whose waiter is done stays until it
        #: reaches the top, or the heap is rebuilt without such entries once they are most of it.
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._sequence = 0
        self._unowned = 0  # scheduler batches in a row that ended with nobody owning it

    def start(self) -> None:
        """Start the driver and the timer as system tasks of the current trio run."""
        if self._started:
            return
        self._started = True
        trio.lowlevel.add_instrument(self._instrument)
        trio.lowlevel.spawn_system_task(self._run, name="trimicro-nats-loop")

    @property
    def closed(self) -> bool:
        return bool(self.loop.is_closed())

    def pump(self) -> None:
        """Run the loop until nothing is ready (at most :data:`PUMP_LIMIT` iterations), then
        the functions :meth:`after` queued. A pump inside a pump does nothing."""
        loop = self.loop
        if self._pumping or loop.is_closed():
            return
        self._pumping = True
        self._marked = False
        hooks = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(loop._asyncgen_firstiter_hook, loop._asyncgen_finalizer_hook)
        asyncio.events._set_running_loop(loop)
        # trio-asyncio, once imported, answers "which loop runs?" in a trio task from a context
        # variable of its own: say it there too.
        trio_asyncio = sys.modules.get("trio_asyncio._loop")
        faked = None
        if trio_asyncio is not None and trio.lowlevel.in_trio_task():
            faked = trio_asyncio.current_loop.set(loop)
        try:
            for _ in range(PUMP_LIMIT):
                loop._run_once()
                if not loop._ready:
                    break
        finally:
            if faked is not None and trio_asyncio is not None:
                trio_asyncio.current_loop.reset(faked)
            asyncio.events._set_running_loop(None)
            sys.set_asyncgen_hooks(*hooks)
            self._pumping = False
        self._rearm()
        while self._after:
            batch, self._after = self._after, []
            self.woke = True
            for fn in batch:
                try:
                    fn()
                except Exception:  # one hand-over's failure must not stop the loop
                    log.exception("nats: a hand-over to trio failed")

    def _next_when(self) -> float:
        """When the next timer of the loop or the next deadline is due, on the loop's clock."""
        scheduled, deadlines = self.loop._scheduled, self._deadlines
        when = scheduled[0]._when if scheduled else math.inf
        return min(when, deadlines[0][0]) if deadlines else when

    def _rearm(self) -> None:
        when = self._next_when()
        if when < self._timer_when and self._timer is not None:
            self._timer_when = when
            self._timer.deadline = self._trio_time(when)

    def add_deadline(self, waiter: Waiter, seconds: float) -> None:
        """Call ``waiter.expire()`` on the loop in ``seconds`` unless it is done by then."""
        deadlines = self._deadlines
        if len(deadlines) > 1024 and len(deadlines) > 2 * self._live_deadlines():
            deadlines[:] = [d for d in deadlines if not d[2].done]
            heapq.heapify(deadlines)
        self._sequence += 1
        heapq.heappush(deadlines, (self.loop.time() + seconds, self._sequence, waiter))

    def _live_deadlines(self) -> int:
        return sum(1 for d in self._deadlines if not d[2].done)

    def _expire_due(self) -> None:
        deadlines, now = self._deadlines, self.loop.time()
        while deadlines and deadlines[0][0] <= now:
            waiter = heapq.heappop(deadlines)[2]
            if not waiter.done:
                waiter.expire()

    def run_now(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` at once in this trio task, as the loop would (the loop set as the running
        one); what is left of it if it waits goes on as a task of the loop."""
        loop = self.loop
        asyncio.events._set_running_loop(loop)
        trio_asyncio = sys.modules.get("trio_asyncio._loop")
        faked = trio_asyncio.current_loop.set(loop) if trio_asyncio is not None else None
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        finally:
            if faked is not None and trio_asyncio is not None:
                trio_asyncio.current_loop.reset(faked)
            asyncio.events._set_running_loop(None)
        loop.create_task(_rest(coro, yielded))
        self._marked = True

    def mark(self) -> None:
        """Run the loop before trio next waits for I/O: trio queued work on it."""
        self._marked = True

    def after(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` in trio at the end of the current pump (or soon, outside of one)."""
        if self._pumping:
            self._after.append(fn)
        else:
            trio.lowlevel.current_trio_token().run_sync_soon(fn)

    def _trio_time(self, when: float) -> float:
        now: float = self.loop.time()
        return trio.current_time() + max(0.0, when - now)

    # ---- who watches the descriptor ----------------------------------------------------------

    def _pass_on(self) -> None:
        """The descriptor's owner is done: the first waiter still waiting inherits it (else
        nobody owns it; the instrument gives it back to the driver before trio sleeps)."""
        self._owner = None
        while self._followers:
            waiter = self._followers.popleft()
            if waiter.parked:
                waiter.parked = False
                self._owner = waiter
                trio.lowlevel.reschedule(waiter.task, outcome.Value(_LEAD))
                self.woke = True
                return

    def _wake_driver(self) -> bool:
        """Give the descriptor back to the driver if nobody owns it; True if it was woken."""
        if self._owner is None and self._driver_idle and self._driver is not None:
            self._owner = _DRIVER
            self._driver_idle = False
            trio.lowlevel.reschedule(self._driver)
            return True
        return False

    async def _run(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timers)
                await self._drive()

    async def _drive(self) -> None:
        self._driver = trio.lowlevel.current_task()
        while not self.loop.is_closed():
            finished = self._finished
            self.pump()
            if self.loop._ready:  # the limit was reached: let trio run others first
                await trio.lowlevel.checkpoint()
                continue
            if self._owner is _DRIVER or self._owner is None:
                self._pass_on()  # a waiter (if any) takes the descriptor from the driver
            # Calls just ended: their tasks are likely to call again, and the first to do so
            # takes the descriptor (the instrument gives it back to the driver otherwise).
            if self._owner is not None or self._finished != finished:
                self._driver_idle = True
                await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.SUCCEEDED)
                continue
            self._owner = _DRIVER
            try:
                await trio.lowlevel.wait_readable(self._fd)
            finally:
                if self._owner is _DRIVER:
                    self._owner = None

    async def _timers(self) -> None:
        while not self.loop.is_closed():
            self._timer_when = self._next_when()
            with trio.CancelScope(deadline=self._trio_time(self._timer_when)) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            self._expire_due()
            self.pump()

    def stop(self) -> None:
        """Stop the driver and the timer, then close the loop (what it still held is dropped)."""
        self._scope.cancel()  # the driver's wait on the descriptor ends here, before it closes
        if self._started and not self.loop.is_closed():
            trio.lowlevel.notify_closing(self._fd)  # a waiting caller hears of it
        if self._started:
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(self._instrument)
        if not self.loop.is_closed():
            self.loop.close()


class Waiter:
    """A trio task waiting for something the loop will finish (:meth:`finish`, on the loop).

    :meth:`wait` returns the value (or raises the error) given to :meth:`finish`. It owns the
    loop's descriptor while it waits if nobody does (see the module docstring); ``abort`` is
    called (in trio) if the waiting task is cancelled before the end, ``expire`` (on the loop)
    at the deadline given by :meth:`HostedLoop.add_deadline`.
    """

    __slots__ = ("abort", "done", "expire", "hosted", "parked", "result", "task")

    def __init__(self, hosted: HostedLoop, abort: Callable[[], None], expire: Callable[[], None]) -> None:
        self.hosted = hosted
        self.abort = abort
        self.expire = expire
        self.task = trio.lowlevel.current_task()
        self.parked = False  # rescheduled by finish() (else finish() keeps the result here)
        self.result: outcome.Outcome[Any] | None = None
        self.done = False

    def finish(self, result: outcome.Outcome[Any]) -> None:
        if self.done:
            return
        self.done = True
        hosted = self.hosted
        if self.parked:
            self.parked = False
            trio.lowlevel.reschedule(self.task, result)
            hosted.woke = True
            hosted._finished += 1
            return
        self.result = result
        if hosted._owner is self and not hosted._selector.poll:
            # It waits on the descriptor, and this pump is not its own (a timer ended the call):
            # make the descriptor ready.
            hosted.loop.call_soon_threadsafe(_nothing)

    async def wait(self) -> Any:
        hosted = self.hosted
        if hosted._owner is not None:
            self.parked = True
            hosted._followers.append(self)
            value = await trio.lowlevel.wait_task_rescheduled(self._aborted)
            if value is not _LEAD:
                return value
        else:
            hosted._owner = self
        hosted._unowned = 0
        try:
            while self.result is None:
                hosted._selector.poll = False
                try:
                    await trio.lowlevel.wait_readable(hosted._fd)
                except trio.ClosedResourceError:
                    raise ServiceUnavailable("nats: the connection's loop was closed", id="nats") from None
                finally:
                    hosted._selector.poll = True
                hosted.pump()
        finally:
            hosted._pass_on()
            if self.result is None:
                self.abort()
        return self.result.unwrap()

    def _aborted(self, _: Any) -> trio.lowlevel.Abort:
        self.parked = False
        with contextlib.suppress(ValueError):
            self.hosted._followers.remove(self)
        self.abort()
        return trio.lowlevel.Abort.SUCCEEDED


class _BeforeWait(trio.abc.Instrument):
    """Runs the loop once per scheduler batch, just before trio waits for I/O, if tasks of the
    batch queued work on it; and gives the descriptor back to the driver if nobody owns it
    (outside every task). Where nothing was queued, its cost is a few attribute reads."""

    def __init__(self, hosted: HostedLoop) -> None:
        self.hosted = hosted

    def before_io_wait(self, timeout: float) -> None:
        hosted = self.hosted
        hosted.woke = False
        if hosted._marked:
            try:
                hosted.pump()
            except Exception:  # trio would remove a failing instrument: keep it, say why
                log.exception("nats: running the loop failed")
        # Nobody watches the descriptor: give it back to the driver before trio sleeps, or after
        # two batches (a task that ended a call takes it by then if it calls again).
        if hosted._owner is None:
            hosted._unowned += 1
            if (timeout > 0 or hosted._unowned > 2) and hosted._wake_driver():
                hosted._unowned = 0
                hosted.woke = True
        # trio chose how long to wait before calling this: a task woken here must not wait for
        # the next I/O event or timer, so end the wait at once.
        if hosted.woke and timeout > 0:
            trio.lowlevel.current_trio_token().run_sync_soon(_nothing)


def _nothing() -> None:
    pass


async def _rest(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    """The rest of a coroutine :meth:`HostedLoop.run_now` started, as a task of the loop: each
    value it yields goes to the task, each value the task sends goes back to it."""
    return await _forward(coro, yielded)


@types.coroutine
def _forward(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # a cancellation of the task: into the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value
