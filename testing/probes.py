"""Probes: wait for something to happen, with a deadline, and say what did happen if it did not.

A test that sleeps and then looks is slow when the machine is idle and flaky when it is busy.
A probe waits on the event itself: it returns as soon as what it waits for has happened (or
had already happened: past events count, so starting to wait late is no race), and after its
deadline raises :class:`ProbeTimeout`, an ``AssertionError`` whose message lists what was seen
instead, so a failing test explains itself.

Deadlines are trio time: under pytest-trio's ``autojump_clock`` a probe that waits 30 s of
virtual time costs nothing real, and a probe never passes because the machine was slow.

- :class:`Recorder`: the one primitive, a bounded list of events that can be waited on. The
  other probes, the fakes of :mod:`.harness` and the cluster kit all record into one.
- :class:`MessageProbe`: a node middleware recording every message an actor of the node
  handles (tells, asks, deliveries of published messages), as :class:`Delivery` records.
- :func:`dead_letters`: the node's dead letters, recorded for the duration of a block.
- :func:`terminations` and :func:`wait_terminated`: the :class:`~trimicro.actors.Terminated`
  of actors.
- :func:`wait_member` and :func:`wait_converged`: membership changes of a cluster node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import trio

from trimicro.actors import Actor, ActorRef, Call, DeadLetter, Next, Node, Terminated
from trimicro.actors.middleware import Side
from trimicro.cluster import Cluster

__all__ = [
    "DEFAULT_TIMEOUT",
    "Delivery",
    "MessageProbe",
    "ProbeTimeout",
    "Recorder",
    "dead_letters",
    "terminations",
    "wait_converged",
    "wait_member",
    "wait_terminated",
]

T = TypeVar("T")

#: How long a probe waits unless told (trio seconds: virtual under a ``MockClock``).
DEFAULT_TIMEOUT = 10.0

#: How many of the latest events a :class:`ProbeTimeout` message shows.
SHOWN = 20


class ProbeTimeout(AssertionError):
    """What a probe waited for did not happen in time. ``seen`` holds what did happen (the
    latest events, oldest first), and the message shows the last :data:`SHOWN` of them.

    An ``AssertionError`` so that pytest reports it as a failed expectation, not a crash.
    """

    def __init__(self, what: str, timeout: float, seen: Sequence[object]) -> None:
        self.what = what
        self.timeout = timeout
        self.seen = list(seen)
        shown = "\n  ".join(repr(x) for x in self.seen[-SHOWN:]) or "(nothing)"
        more = f" (the last {SHOWN})" if len(self.seen) > SHOWN else ""
        super().__init__(f"no {what} within {timeout:g} s; seen {len(self.seen)}{more}:\n  {shown}")


class Recorder(Generic[T]):
    """Events of one kind, in order, that a test can wait on.

    ``append`` is synchronous (middleware, callbacks and other tasks record without awaiting)
    and wakes every waiter. At most ``limit`` events are kept (the oldest go first, counted in
    ``dropped``), so a probe left on a busy node holds bounded memory.
    """

    def __init__(self, what: str = "event", *, limit: int = 10_000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.what = what
        self.limit = limit
        self.dropped = 0
        self._items: list[T] = []
        self._base = 0  # how many events came before ``_items[0]`` (dropped or cleared)
        self._changed = trio.Event()

    def append(self, item: T) -> None:
        """Record ``item`` and wake the waiters."""
        self._items.append(item)
        if len(self._items) > self.limit:
            del self._items[0]
            self.dropped += 1
            self._base += 1
        self._changed.set()
        self._changed = trio.Event()

    @property
    def items(self) -> list[T]:
        """The events kept, oldest first (a copy)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def clear(self) -> None:
        """Forget what was recorded: later waits see only what comes next."""
        self._base += len(self._items)
        self._items.clear()

    def matching(self, match: Callable[[T], bool] | None = None) -> list[T]:
        """The events kept that ``match`` accepts (all of them without one)."""
        return [x for x in self._items if match is None or match(x)]

    async def wait_for(
        self,
        match: Callable[[T], bool] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        what: str | None = None,
    ) -> T:
        """The first event ``match`` accepts (any event without one), recorded already or
        within ``timeout`` seconds; else :class:`ProbeTimeout` listing what was recorded.
        ``what`` names the awaited event in that message."""
        [found] = await self.wait_count(1, match, timeout=timeout, what=what)
        return found

    async def wait_count(
        self,
        count: int,
        match: Callable[[T], bool] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        what: str | None = None,
    ) -> list[T]:
        """The first ``count`` events ``match`` accepts, waiting up to ``timeout`` seconds for
        them to be recorded; else :class:`ProbeTimeout`."""
        found: list[T] = []
        scanned = self._base  # events are looked at once each, however long the wait
        with trio.move_on_after(timeout):
            while True:
                for item in self._items[max(0, scanned - self._base) :]:
                    if match is None or match(item):
                        found.append(item)
                scanned = self._base + len(self._items)
                if len(found) >= count:
                    return found[:count]
                await self._changed.wait()
        wanted = what or (self.what if count == 1 else f"{count} x {self.what}")
        raise ProbeTimeout(wanted, timeout, self._items)


@attrs.define(eq=False)
class Delivery:
    """One message an actor handled, as :class:`MessageProbe` saw it.

    ``kind`` is ``"ask"``, ``"tell"``, ``"stream"`` or ``"subscribe"`` (a published message
    delivered to a subscriber). ``endpoint`` is the endpoint that handled it (``"Counter.add"``),
    whether the sender named it or the handler was chosen by the message's type (``None`` only
    when no handler function is known). ``done`` is set when the handler has returned or
    raised; ``result`` and ``error`` are then what it did.
    """

    target: ActorRef
    kind: str
    endpoint: str | None
    message: Any
    sender: ActorRef | None
    result: Any = None
    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event, repr=False)

    @property
    def path(self) -> str:
        """The path of the actor that handled it (``"/user/counter"``)."""
        return self.target.path

    async def finished(self, timeout: float = DEFAULT_TIMEOUT) -> Delivery:
        """Wait until the handler has finished (it has returned or raised)."""
        with trio.move_on_after(timeout):
            await self.done.wait()
            return self
        raise ProbeTimeout(f"end of the handler of {self!r}", timeout, [self])


def _to(target: ActorRef | str | None) -> Callable[[Delivery], bool]:
    if target is None:
        return lambda d: True
    if isinstance(target, ActorRef):
        return lambda d: d.target == target
    # A name as spawned ("counter", "parent/child") or a full path ("/user/counter").
    path = target if target.startswith("/") else f"/user/{target}"
    return lambda d: d.path == path


def _endpoint(call: Call) -> str | None:
    """The endpoint a server-side call runs: the one the sender named, else the handler's own
    name (a message routed by its type names none), so a probe matches either way."""
    if call.endpoint is not None:
        return call.endpoint
    name = getattr(call.handler, "__name__", None)
    if name is None or call.actor is None:
        return None
    cls = type(call.actor)
    return f"{getattr(cls, 'service_name', None) or cls.__name__}.{name}"


class MessageProbe:
    """A node middleware recording every message its actors handle (``start_node(
    middleware=[probe])``, ``start_cluster(middleware=[probe])``, or given by the kit's nodes).

    It sees the server side only: what reached a handler, after the body of an endpoint call
    was structured into the handler's type. Messages refused before a handler (no handler, an
    unknown endpoint) are dead letters or errors instead: see :func:`dead_letters`.

    Like any middleware, it makes the node run every handler in a worker task (never inline
    in the caller's): the order of events is the same, the scheduling a little different.
    """

    def __init__(self, *, limit: int = 10_000) -> None:
        #: Every :class:`Delivery`, in the order the handlers started.
        self.deliveries: Recorder[Delivery] = Recorder("message", limit=limit)

    async def __call__(self, call: Call, call_next: Next) -> Any:
        if call.side is not Side.SERVER:
            return await call_next(call)
        # A delivery of a published message names its topic as the target: record the actor.
        target = call.target if isinstance(call.target, ActorRef) else call.actor.context.ref
        delivery = Delivery(target, call.kind.value, _endpoint(call), call.message, call.sender)
        self.deliveries.append(delivery)
        try:
            delivery.result = await call_next(call)
            return delivery.result
        except BaseException as exc:
            delivery.error = exc
            raise
        finally:
            delivery.done.set()

    def to(self, target: ActorRef | str | None = None) -> list[Delivery]:
        """What ``target`` has handled so far: a ref, a name as spawned (``"counter"``), a
        full path (``"/user/counter"``), or ``None`` for every actor."""
        return self.deliveries.matching(_to(target))

    async def wait_for(
        self,
        target: ActorRef | str | None = None,
        match: Callable[[Any], bool] | None = None,
        *,
        endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Delivery:
        """The first message to ``target`` (any actor without one), to ``endpoint`` if given,
        whose body ``match`` accepts, handled already or within ``timeout`` seconds."""
        to = _to(target)

        def accept(d: Delivery) -> bool:
            if not to(d) or (endpoint is not None and d.endpoint != endpoint):
                return False
            return match is None or bool(match(d.message))

        name = target if isinstance(target, str) or target is None else target.path
        what = f"message to {name or 'any actor'}" + (f" at {endpoint}" if endpoint else "")
        return await self.deliveries.wait_for(accept, timeout=timeout, what=what)


@asynccontextmanager
async def dead_letters(node: Node, *, buffer: int = 1000) -> AsyncIterator[Recorder[DeadLetter]]:
    """Record ``node``'s dead letters while the block runs::

    async with dead_letters(node) as letters:
        await tell(gone, Ping())
        letter = await letters.wait_for(lambda d: d.reason == "stopped")
    """
    recorder: Recorder[DeadLetter] = Recorder("dead letter", limit=buffer)
    async with node.dead_letters.subscribe(buffer) as letters, trio.open_nursery() as nursery:

        async def pump() -> None:
            async for letter in letters:
                recorder.append(letter)

        nursery.start_soon(pump)
        # Whoever subscribes then sends must not miss a letter: the subscription is live now.
        yield recorder
        nursery.cancel_scope.cancel()


class _Watcher(Actor):
    """Watches actors and records their Terminated (the death-watch path users rely on)."""

    def __init__(self, refs: Sequence[ActorRef], into: Recorder[Terminated]) -> None:
        self.watched = refs
        self.into = into

    async def started(self) -> None:
        for ref in self.watched:
            self.context.watch(ref)

    async def terminated(self, msg: Terminated) -> None:
        self.into.append(msg)


@asynccontextmanager
async def terminations(node: Node, *refs: ActorRef) -> AsyncIterator[Recorder[Terminated]]:
    """Watch ``refs`` from ``node`` while the block runs; each one's
    :class:`~trimicro.actors.Terminated` is recorded as it stops, its ``reason`` saying why::

        async with terminations(node, worker) as stopped:
            await node.stop(worker, reason="done")
            assert (await stopped.wait_for()).reason == "done"

    Watch before causing the stop: an actor that had already stopped reports only
    ``"already stopped"``.
    """
    names = ", ".join(r.path for r in refs)
    seen: Recorder[Terminated] = Recorder(f"Terminated of {names}")
    watcher = await node.spawn(_Watcher, refs, seen)
    try:
        yield seen
    finally:
        with trio.CancelScope(shield=True):
            await node.stop(watcher)


async def wait_terminated(node: Node, ref: ActorRef, *, timeout: float = DEFAULT_TIMEOUT) -> Terminated:
    """The :class:`~trimicro.actors.Terminated` of ``ref`` as a watcher on ``node`` receives it:
    once ``ref`` stops, or at once if it has (with the reason ``"already stopped"``; use
    :func:`terminations` to see the reason of a stop the test causes)."""
    async with terminations(node, ref) as seen:
        return await seen.wait_for(timeout=timeout)


def _states(cluster: Cluster) -> dict[str, str]:
    return {m["id"]: m["state"] for m in cluster.membership.view()}


async def wait_member(
    cluster: Cluster, node_id: str, state: str | Iterable[str], *, timeout: float = DEFAULT_TIMEOUT
) -> str:
    """Wait until ``cluster`` believes member ``node_id`` is in ``state`` (``"alive"``,
    ``"suspect"``, ``"dead"``, ``"left"``, or several of them); returns the state it found.
    ``"absent"`` waits until the node does not know the member at all. On timeout the error
    shows every member's state as this node saw it."""
    wanted = {state} if isinstance(state, str) else set(state)
    if cluster.membership is None:
        raise ValueError(f"node {cluster.id} runs without membership (start_cluster(membership=False))")
    with trio.move_on_after(timeout):
        while True:
            found = _states(cluster).get(node_id, "absent")
            if found in wanted:
                return found
            await cluster.membership.wait_changed()
    what = f"member {node_id} in state {'/'.join(sorted(wanted))} as {cluster.id} sees it"
    raise ProbeTimeout(what, timeout, [_states(cluster)])


async def wait_converged(
    clusters: Sequence[Cluster], *, links: bool = True, timeout: float = DEFAULT_TIMEOUT
) -> None:
    """Wait until every node of ``clusters`` sees every other alive (and, with ``links``, has
    a link to it): the point from which calls between them need no discovery."""
    ids = {c.id for c in clusters}
    with trio.move_on_after(timeout):
        for c in clusters:
            for other in ids - {c.id}:
                await wait_member(c, other, "alive", timeout=float("inf"))
                peer = c.node.remote.peer(other) if links else None
                while peer is not None and peer.link is None:
                    await peer.wait_changed()
        return
    raise ProbeTimeout(f"convergence of {sorted(ids)}", timeout, [{c.id: _states(c)} for c in clusters])
