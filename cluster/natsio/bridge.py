"""A dedicated asyncio thread behind trio: how trimicro drives nats-py (an asyncio client).

nats-py runs on an asyncio event loop; trimicro runs on trio. Two ways were measured (see
``docs/performance.md``, "NATS: bridging asyncio to trio", and ``benchmarks/bench_nats_bridge.py``):
trio-asyncio (the asyncio loop runs *inside* trio's, on the same thread) and a dedicated
asyncio loop in its own thread, talked to through thread-safe hand-offs. The thread won:
publishing through it (batched hand-offs) runs at 0.7-1.3x raw nats-py where trio-asyncio's
``aio_as_trio`` per message manages 0.01-0.02x; round trips are a draw within the noise of
this loaded 2-core machine (0.7-1.9x trio-asyncio's rate over several runs and probes).
trio-asyncio also replaces asyncio's event-loop policy for the whole process on import. This
module is that thread.

Three hand-offs, each bounded and each wait with a deadline:

* :meth:`Bridge.call` runs one coroutine on the loop and waits for its result in trio
  (``loop.call_soon_threadsafe`` one way, ``TrioToken.run_sync_soon`` back); the trio side's
  cancellation (or the ``timeout``) cancels the asyncio task.
* :class:`Outbox` carries fire-and-forget work (core NATS publishes) from trio to the loop in
  batches: one wake-up of the loop per batch, not per message; a full outbox makes the trio
  side wait (that is the back-pressure), with a deadline.
* :class:`Inbox` carries items from the loop to trio in batches (deliveries, watch updates):
  one wake-up of trio per batch; a full inbox drops what does not fit and counts it (the
  owner decides what a drop means: at-most-once loses it, a watcher resynchronises).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

from trimicro.mailbox.errors import RequestTimeout, ServiceUnavailable
from trimicro.mailbox.logs import get_logger

__all__ = ["Bridge", "Inbox", "Outbox"]

log = get_logger(__package__)

T = TypeVar("T")
Item = TypeVar("Item")

#: How long :meth:`Bridge.close` waits for the loop's thread to finish (seconds).
CLOSE_DEADLINE = 10.0


class Bridge:
    """One asyncio event loop in a daemon thread, owned by whoever opened it.

    Open it in trio (:meth:`open`: it records the trio token the hand-offs call back through)
    and close it (:meth:`close`) when done; everything the loop still runs is cancelled then.
    """

    def __init__(self, name: str = "trimicro-nats") -> None:
        self.name = name
        # Not new_event_loop(): a policy installed in the process (trio-asyncio's refuses inside
        # a trio run) must not decide the loop of this thread.
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    @property
    def token(self) -> trio.lowlevel.TrioToken:
        if self._token is None:
            raise ServiceUnavailable(f"{self.name}: the bridge is not open", id="nats")
        return self._token

    def open(self) -> None:
        """Start the loop's thread; call it from the trio run that will use the bridge."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    @property
    def opened(self) -> bool:
        return self._token is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(
        self, make: Callable[[], Coroutine[Any, Any, T]], *, timeout: float, what: str = "nats call"
    ) -> T:
        """Run ``make()`` on the loop; its result, or its exception, in trio.

        ``timeout`` (seconds) bounds the whole round trip: past it the asyncio task is cancelled
        and :class:`~trimicro.mailbox.errors.RequestTimeout` raised. A trio cancellation cancels
        the asyncio task too (and is not delayed by it).

        One hand-off each way and nothing more (``loop.call_soon_threadsafe`` there, the task's
        done callback waking trio with ``TrioToken.run_sync_soon`` back): measured 10-25 % faster
        per round trip than ``asyncio.run_coroutine_threadsafe``, whose concurrent future adds
        a lock and a second callback chain.
        """
        if self._closed:
            raise ServiceUnavailable(f"{self.name} is closed", id="nats")
        call = _Call(self, make)
        try:
            self.loop.call_soon_threadsafe(call.start)
        except RuntimeError:  # the loop closed under us
            raise ServiceUnavailable(f"{self.name} is closed", id="nats") from None
        try:
            with trio.fail_after(timeout):
                await call.done.wait()
        except trio.TooSlowError:
            call.cancel()
            raise RequestTimeout(f"{what}: no answer in {timeout:g} s", id="nats") from None
        except BaseException:
            call.cancel()
            raise
        task = call.task
        if task is None or task.cancelled():
            raise ServiceUnavailable(f"{what}: cancelled (the connection is closing)", id="nats")
        return task.result()

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the plain function ``fn(*args)`` on the loop soon (never waits)."""
        if not self._closed:
            self.loop.call_soon_threadsafe(fn, *args)

    async def close(self) -> None:
        """Stop the loop (cancelling what it runs) and wait for its thread, at most
        :data:`CLOSE_DEADLINE` seconds."""
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        with trio.move_on_after(CLOSE_DEADLINE):
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)


class _Call(Generic[T]):
    """One :meth:`Bridge.call`: started on the loop, finished in trio."""

    __slots__ = ("bridge", "cancelled", "done", "make", "task", "token")

    def __init__(self, bridge: Bridge, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self.bridge = bridge
        self.make = make
        self.token = bridge.token
        self.done = trio.Event()
        self.task: asyncio.Task[T] | None = None
        self.cancelled = False

    def start(self) -> None:  # on the loop
        if self.cancelled:
            return
        self.task = self.bridge.loop.create_task(self.make())
        self.task.add_done_callback(self._finished)

    def _finished(self, _: object) -> None:  # on the loop
        with contextlib.suppress(trio.RunFinishedError):  # the run ended: nobody waits
            self.token.run_sync_soon(self.done.set)

    def cancel(self) -> None:  # in trio
        self.cancelled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self.bridge.loop.call_soon_threadsafe(self._cancel_task)

    def _cancel_task(self) -> None:  # on the loop
        if self.task is not None:
            self.task.cancel()


class Outbox(Generic[Item]):
    """Items from trio to the loop, handed over in batches, in order, at most ``limit`` waiting.

    ``handle(batch)`` is a coroutine function run on the loop by one sender task, batch after
    batch (so the order of :meth:`put` is kept); items count against ``limit`` until their batch
    is handled, so a server that stops reading makes :meth:`put` wait (the back-pressure), each
    wait with a deadline.
    """

    def __init__(
        self, bridge: Bridge, handle: Callable[[list[Item]], Coroutine[Any, Any, None]], *, limit: int = 65536
    ) -> None:
        self._bridge = bridge
        self._handle = handle
        self.limit = limit
        self._queue: collections.deque[Item] = collections.deque()
        self._in_flight = 0
        self._scheduled = False
        self._lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self._room = trio.Event()
        #: Items whose batch the handler failed (dropped: at most once).
        self.failed = 0

    async def put(self, item: Item, *, timeout: float) -> None:
        """Queue ``item``; wait (at most ``timeout`` s) while ``limit`` items are not yet sent."""
        while len(self._queue) + self._in_flight >= self.limit:
            # One event shared by every waiter, replaced only once it has fired: a fresh one
            # per waiter would leave the earlier waiters on events nobody sets any more.
            room = self._room
            if room.is_set():
                room = self._room = trio.Event()
            try:
                with trio.fail_after(timeout):
                    await room.wait()
            except trio.TooSlowError:
                raise ServiceUnavailable(
                    f"{self._bridge.name}: {self.limit} messages wait to be sent for {timeout:g} s "
                    "(is the server reachable?)",
                    id="nats",
                ) from None
        with self._lock:
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._bridge.soon(self._kick)

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = self._bridge.loop.create_task(self._send())

    async def _send(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._scheduled = False
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._in_flight = len(batch)
            try:
                await self._handle(batch)
            except Exception as exc:  # the connection refused the batch (its buffer is full)
                self.failed += len(batch)
                log.warning("%s: %d messages not sent: %s", self._bridge.name, len(batch), exc)
            finally:
                self._in_flight = 0
                with contextlib.suppress(trio.RunFinishedError, ServiceUnavailable):
                    self._bridge.token.run_sync_soon(self._signal)

    def _signal(self) -> None:
        self._room.set()


class Inbox(Generic[Item]):
    """Items from the loop to trio, handed over in batches, at most ``limit`` waiting.

    :meth:`push` runs on the loop; ``deliver(batch)`` runs in trio (a plain function, in the
    trio run's own thread) with everything pushed since the last batch. What does not fit is
    dropped and counted in :attr:`dropped`; ``overflowed`` (if given) is called in trio once
    per batch that dropped something.
    """

    def __init__(
        self,
        bridge: Bridge,
        deliver: Callable[[list[Item]], None],
        *,
        limit: int = 65536,
        overflowed: Callable[[], None] | None = None,
    ) -> None:
        self._bridge = bridge
        self._deliver = deliver
        self.limit = limit
        self._overflowed = overflowed
        self._queue: collections.deque[Item] = collections.deque()
        self._scheduled = False
        self._lost = False
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, item: Item) -> None:
        with self._lock:
            if len(self._queue) >= self.limit:
                self.dropped += 1
                self._lost = True
                return
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(trio.RunFinishedError, ServiceUnavailable):
            self._bridge.token.run_sync_soon(self._flush)

    def _flush(self) -> None:
        with self._lock:
            batch = list(self._queue)
            self._queue.clear()
            self._scheduled = False
            lost, self._lost = self._lost, False
        if batch:
            self._deliver(batch)
        if lost and self._overflowed is not None:
            self._overflowed()
