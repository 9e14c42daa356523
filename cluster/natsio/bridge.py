"""How trimicro drives nats-py (an asyncio client) from trio: calls, and batched hand-overs.

The client runs on an asyncio loop stepped by trio in trio's own thread (:mod:`.hosted`, where
the choice is measured against a loop in a thread of its own and against trio-asyncio). On top
of it, three ways across, each bounded and each wait with a deadline:

* :meth:`Bridge.call` runs one coroutine on the loop and returns its result in trio. The
  coroutine starts when trio is about to wait (so the requests of concurrent callers leave in
  one write); its end reschedules the caller directly (no event, no future); the deadline is a
  timer of the loop (cheaper than a trio cancel scope per call) and a trio cancellation cancels
  the asyncio task.
* :class:`Outbox` carries fire-and-forget work (core NATS publishes) from trio to the loop in
  batches: one task step on the loop per batch, not per message; a full outbox makes the trio
  side wait (that is the back-pressure), with a deadline.
* :class:`Inbox` carries items from the loop to trio in batches (deliveries, watch updates):
  one hand-over per pump of the loop; a full inbox drops what does not fit and counts it (the
  owner decides what a drop means: at-most-once loses it, a watcher resynchronises).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import outcome
import trio

from trimicro.mailbox.errors import RequestTimeout, ServiceUnavailable
from trimicro.mailbox.logs import get_logger

from .hosted import HostedLoop, Waiter

__all__ = ["Bridge", "Inbox", "Outbox"]

log = get_logger(__package__)

T = TypeVar("T")
Item = TypeVar("Item")

#: How long :meth:`Bridge.close` waits for what the loop still runs to end (seconds).
CLOSE_DEADLINE = 10.0
#: An outbox hands its queue over by itself (in the putting task) once it holds this many.
OUTBOX_BATCH = 256


class Bridge:
    """The asyncio loop of one nats-py client, owned by whoever opened it.

    Open it in trio (:meth:`open`) and close it (:meth:`close`) when done; everything the loop
    still runs is cancelled then.
    """

    def __init__(self, name: str = "trimicro-nats") -> None:
        self.name = name
        self.hosted = HostedLoop()
        self.loop: asyncio.AbstractEventLoop = self.hosted.loop
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False

    @property
    def token(self) -> trio.lowlevel.TrioToken:
        if self._token is None:
            raise ServiceUnavailable(f"{self.name}: the bridge is not open", id="nats")
        return self._token

    def open(self) -> None:
        """Start stepping the loop; call it from the trio run that will use the bridge."""
        self._token = trio.lowlevel.current_trio_token()
        self.hosted.start()

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

        ``timeout`` (seconds) bounds the whole call: past it the asyncio task is cancelled and
        :class:`~trimicro.mailbox.errors.RequestTimeout` raised. A trio cancellation cancels
        the asyncio task too (and is not delayed by it).
        """
        if self._closed or not self.opened:
            raise ServiceUnavailable(f"{self.name} is {'closed' if self._closed else 'not open'}", id="nats")
        return await _Call[T](self, what, timeout).run(make)

    def soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run the plain function ``fn(*args)`` on the loop soon (never waits)."""
        if not self._closed:
            self.loop.call_soon(fn, *args)
            self.hosted.mark()

    async def close(self) -> None:
        """Cancel what the loop still runs, let it end (at most :data:`CLOSE_DEADLINE` s), and
        close the loop; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.opened and not self.hosted.closed:
            tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in tasks:
                task.cancel()

            async def finish() -> None:
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.loop.shutdown_asyncgens()
                await self.loop.shutdown_default_executor()

            with trio.move_on_after(CLOSE_DEADLINE):
                try:
                    await _Call[None](self, "close", CLOSE_DEADLINE).run(finish)
                except Exception as exc:  # closing: what did not end is dropped with the loop
                    log.debug("%s: close: %s", self.name, exc)
        self.hosted.stop()


class _Call(Generic[T]):
    """One :meth:`Bridge.call`: a task on the loop whose end finishes its trio caller's wait."""

    __slots__ = ("bridge", "expired", "given_up", "task", "timeout", "waiter", "what")

    def __init__(self, bridge: Bridge, what: str, timeout: float) -> None:
        self.bridge = bridge
        self.what = what
        self.timeout = timeout
        self.task: asyncio.Task[None] | None = None
        self.expired = False
        self.given_up = False
        self.waiter = Waiter(bridge.hosted, self._abort, self._expire)

    async def run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        hosted = self.bridge.hosted
        self.task = self.bridge.loop.create_task(self._on_loop(make))
        hosted.add_deadline(self.waiter, self.timeout)
        hosted.mark()  # it starts when this batch of trio tasks is over
        result: T = await self.waiter.wait()
        return result

    async def _on_loop(self, make: Callable[[], Coroutine[Any, Any, T]]) -> None:
        try:
            result: outcome.Outcome[T] = outcome.Value(await make())
        except asyncio.CancelledError:
            if self.given_up:
                raise
            if self.expired:
                error: Exception = RequestTimeout(f"{self.what}: no answer in {self.timeout:g} s", id="nats")
            else:
                error = ServiceUnavailable(f"{self.what}: cancelled (the connection is closing)", id="nats")
            result = outcome.Error(error)
        except Exception as exc:
            result = outcome.Error(exc)
        if not self.given_up:
            self.waiter.finish(result)

    def _expire(self) -> None:  # on the loop
        if self.task is not None and not self.task.done():
            self.expired = True
            self.task.cancel()

    def _abort(self) -> None:  # in trio: the caller was cancelled
        self.given_up = True
        if self.task is not None:
            self.bridge.soon(self.task.cancel)


class Outbox(Generic[Item]):
    """Items from trio to the loop, handed over in batches, in order, at most ``limit`` waiting.

    ``handle(batch)`` is a coroutine function run on the loop by one sender task, batch after
    batch (so the order of :meth:`put` is kept); items count against ``limit`` until their batch
    is handled, so a server that stops reading makes :meth:`put` wait (the back-pressure), each
    wait with a deadline. A batch leaves when the loop next runs, or at once in the putting
    task once :data:`OUTBOX_BATCH` items wait (a task that publishes in a loop without waiting
    for anything else then still sends as it goes).
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
        self._task: asyncio.Task[None] | None = None
        self._room = trio.Event()
        self._waiters = 0
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
            self._waiters += 1
            try:
                with trio.fail_after(timeout):
                    await room.wait()
            except trio.TooSlowError:
                raise ServiceUnavailable(
                    f"{self._bridge.name}: {self.limit} messages wait to be sent for {timeout:g} s "
                    "(is the server reachable?)",
                    id="nats",
                ) from None
            finally:
                self._waiters -= 1
        queue = self._queue
        queue.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._bridge.soon(self._kick)
        elif len(queue) >= OUTBOX_BATCH and not self._in_flight:
            self._bridge.hosted.pump()
            await trio.lowlevel.checkpoint()

    def _kick(self) -> None:  # on the loop
        if self._task is None or self._task.done():
            self._task = self._bridge.loop.create_task(self._send())

    async def _send(self) -> None:
        while self._queue:
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
                if self._waiters:
                    self._room.set()
                    self._bridge.hosted.woke = True
        self._scheduled = False


class Inbox(Generic[Item]):
    """Items from the loop to trio, handed over in batches, at most ``limit`` waiting.

    :meth:`push` runs on the loop; ``deliver(batch)`` runs in trio (a plain function) with
    everything pushed since the last batch, once per pump of the loop. What does not fit is
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
        self._queue: list[Item] = []
        self._scheduled = False
        self._lost = False
        self.dropped = 0

    def push(self, item: Item) -> None:
        if len(self._queue) >= self.limit:
            self.dropped += 1
            self._lost = True
            return
        self._queue.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._bridge.hosted.after(self._flush)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._scheduled = False
        lost, self._lost = self._lost, False
        if batch:
            self._deliver(batch)
        if lost and self._overflowed is not None:
            self._overflowed()
