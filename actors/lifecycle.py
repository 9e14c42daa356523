"""The lifecycle half of a cell: one actor's state, start and stop, supervision, timers, watchers.

A cell outlives restarts (the instance is replaced, the ref and mailbox stay). This module holds
what a cell *is* (its slots, statuses and limits) and what happens to it over time; handling
messages (:mod:`.processing`) and taking them in (:mod:`.cell`) build on it, one class each in a
straight line (``Cell -> CellProcessing -> CellLifecycle``), so that a method call costs what it
did in one class (attribute lookups go through the type's method cache, whatever the depth).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import ParkingLot

from trimicro.mailbox.errors import MicroError, ServiceUnavailable, TooManyRequests
from trimicro.mailbox.logs import get_logger
from trimicro.mailbox.mailboxes import Mailbox, Unbuilt
from trimicro.mailbox.refs import ActorRef

from .actor import Actor, HandlerTable
from .mail import Mail
from .messages import Terminated
from .status import RUNNING, STARTING, STOPPED, STOPPING, SUSPENDED
from .supervision import ChildSpec, Restart, RestartIntensity, Strategy, SupervisorStrategy

if TYPE_CHECKING:
    from .context import Context
    from .ports import NodePort
    from .timers import Timer

log = get_logger(__package__)

#: Messages a worker handles before yielding to other tasks (fairness without a yield per message).
BATCH = 128
#: Watchers one actor may have at once (local ones and those of other nodes together): watches
#: arrive from peers, and every set fed by peers has a bound.
MAX_WATCHERS = 65536
#: Watchers of other nodes (all peers together) one actor may have at once: below
#: :data:`MAX_WATCHERS`, so peers filling an actor's watchers (one peer may hold up to
#: ``remote.watch.MAX_REMOTE_WATCHES`` watches, on any actors) never leave its own node's
#: ``context.watch`` without room.
MAX_REMOTE_WATCHERS = 16384

#: The cell whose handler runs in the current task (the implicit sender of tell/ask). The item
#: it is serving is :data:`.status.current_item`.
current_cell: ContextVar[CellLifecycle | None] = ContextVar("trimicro_current_cell", default=None)

# Its methods, bound once for the modules that call them per message (see :mod:`.status` for
# why: a method call on an imported name builds a bound method at every call on CPython 3.11).
get_cell, set_cell, reset_cell = current_cell.get, current_cell.set, current_cell.reset


class Escalated(Exception):
    """A supervisor gave up on a child (restart intensity exceeded) and fails in turn."""

    def __init__(self, child: ActorRef, cause: BaseException) -> None:
        super().__init__(f"{child.path} failed too often; last failure: {cause!r}")
        self.child = child
        self.cause = cause


class _NormalExit(Exception):
    """The reason given to a PERMANENT child restarted after it stopped itself."""


class Stopped:
    """The binding of a stopped actor's own ref (``cell.ref`` once it has stopped): it answers
    as the stopped cell did (mail to dead letters, an ask 503, a watcher told at once) without
    pointing back at the cell, so that the cell leaves no reference cycle behind."""

    __slots__ = ("node", "ref")

    def __init__(self, node: NodePort, ref: ActorRef) -> None:
        self.node = node
        self.ref = ActorRef(ref.node, ref.path, ref.uid)  # unbound: no cycle through it either

    def _refusal(self) -> MicroError:
        """What an ask or a stream gets."""
        return ServiceUnavailable(f"actor {self.ref.path} is not running", id=self.ref.path)

    async def tell(self, msg: Any, sender: ActorRef | None, *_: Any) -> None:
        await trio.lowlevel.checkpoint()
        self.node.dead_letter(self.ref, msg, "stopped", sender)

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None) -> bool:
        self.node.dead_letter(self.ref, msg, "stopped", sender)
        return False

    async def ask(self, msg: Any, sender: ActorRef | None, *_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        self.node.dead_letter(self.ref, msg, "stopped", sender)
        raise self._refusal()

    async def open_stream(self, *_: Any) -> Any:
        await trio.lowlevel.checkpoint()
        raise self._refusal()

    def system(self, msg: Any) -> bool:
        self.node.dead_letter(self.ref, msg, "stopped", None)
        return False

    def add_watcher(self, watcher: ActorRef) -> None:
        binding = watcher.binding
        if binding is not None:
            binding.system(Terminated(self.ref, "already stopped"))

    def remove_watcher(self, watcher: ActorRef) -> None:
        pass


class CellLifecycle:
    """One actor's state, its lifecycle (start, stop, restart), its supervision of its
    children, its timers and its watchers. :class:`~.processing.CellProcessing` adds running
    handlers on it, :class:`~.cell.Cell` delivery; the slots are all declared here."""

    __slots__ = (
        "__dict__",  # only for the rarely used state below, set on first use
        "__weakref__",
        "active",
        "children",
        "handlers",
        "instance",
        "mailbox",
        "max_concurrency",
        "node",
        "parent",
        "path",
        "ref",
        "spec",
        "status",
    )

    # State most actors never use, as class-level defaults: an instance gets its own value
    # (in its ``__dict__``) only when it first needs one, so a spawn sets ten attributes fewer
    # and an idle actor is smaller.
    _context: Context | None = None
    _room: ParkingLot | None = None
    _scopes: set[trio.CancelScope] | None = None
    _stopped: trio.Event | None = None
    _workers_idle: trio.Event | None = None
    _sup_lock: trio.Lock | None = None
    _intensity: RestartIntensity | None = None
    _timers: set[Timer] | None = None
    _watchers: set[ActorRef] | None = None
    #: How many of ``_watchers`` are actors of other nodes (see :data:`MAX_REMOTE_WATCHERS`).
    _remote_watchers: int = 0
    _streams: set[trio.CancelScope] | None = None

    # The slots, for the type checker (set by ``Cell.__init__``: the assembled cell is the ref's
    # binding, so it is built there).
    node: NodePort
    parent: CellLifecycle | None
    spec: ChildSpec
    path: str
    ref: ActorRef
    mailbox: Mailbox[Mail]
    status: int
    #: Workers running this actor now (at most ``max_concurrency``).
    active: int
    max_concurrency: int
    instance: Actor | None
    handlers: HandlerTable | None
    children: dict[str, CellLifecycle]

    def __repr__(self) -> str:
        return f"<Cell {self.path} status={self.status}>"

    async def run_batch(self, scope: trio.CancelScope) -> None:
        """Drain the mailbox on a dispatcher worker: :class:`~.processing.CellProcessing`."""
        raise NotImplementedError

    def failed(self, error: BaseException) -> None:
        """Suspend and hand the failure to the supervisor (in a system task, not this worker)."""
        if self.status >= STOPPING:
            return
        log.warning("actor %s failed: %r", self.path, error, exc_info=error)
        self.node.metrics.failures += 1
        self.status = SUSPENDED
        parent = self.parent
        if parent is None:  # the root guardian itself: nothing above to ask
            self.node.spawn_system(self.stop, repr(error))
        else:
            self.node.spawn_system(parent.child_failed, self, error)

    # ---- start and stop ---------------------------------------------------------------------------

    async def start_instance(self, failure: BaseException | None = None) -> None:
        """Build a fresh instance and run its hooks; the cell then processes its mailbox."""
        if self.build_instance(failure):
            await self.run_start_hooks(failure)

    def build_instance(self, failure: BaseException | None = None) -> bool:
        """Build a fresh instance; start it at once unless it has hooks to run (then ``True``:
        the caller awaits :meth:`run_start_hooks`). Synchronous, because spawn is hot and most
        actors keep the no-op hooks."""
        spec = self.spec
        self.status = STARTING
        instance = spec.factory(*spec.args, **spec.kwargs)
        if not isinstance(instance, Actor):
            raise TypeError(f"{spec.factory!r} did not build an Actor")
        instance._trimicro_cell = self
        self.instance = instance
        cls = type(instance)
        if self.handlers is None:  # built by a factory function: the class is known only now
            self.handlers = self.node.handlers_for(cls)
            self.max_concurrency = max(1, cls.max_concurrency)
        if cls.started is not Actor.started or (failure is not None and cls.restarted is not Actor.restarted):
            return True
        self._running()
        return False

    async def run_start_hooks(self, failure: BaseException | None) -> None:
        """Run ``restarted`` (after a failure) and ``started``, then let the mailbox flow."""
        instance = self.instance
        assert instance is not None
        if failure is not None and type(instance).restarted is Actor.restarted:
            failure = None  # the hook is the no-op default: nothing to call
        token = current_cell.set(self)
        try:
            if failure is not None:
                await instance.restarted(failure)
            await instance.started()
        finally:
            current_cell.reset(token)
        self._running()

    def _running(self) -> None:
        if self.status != STARTING:  # stopped (or failed) while starting
            return
        self.status = RUNNING
        mailbox = self.mailbox
        if type(mailbox) is Unbuilt:  # nothing was ever queued (and its len is a Python call)
            return
        while len(mailbox) > self.active and self.active < self.max_concurrency:
            self.node.dispatcher.activate(self)

    async def _quiesce(self, deadline: float) -> None:
        """Wait (until ``deadline``) for in-flight handlers, then cancel what is left."""
        if self.active:
            with trio.move_on_at(deadline):
                while self.active:
                    self._workers_idle = trio.Event()
                    await self._workers_idle.wait()
            self._workers_idle = None
            for scope in list(self._scopes or ()):
                scope.cancel()
            while self.active:  # cancelled handlers unwind at their next checkpoint
                self._workers_idle = trio.Event()
                with trio.move_on_after(1.0):
                    await self._workers_idle.wait()
                if self.active:
                    log.error("actor %s: %d handler(s) ignore cancellation", self.path, self.active)
                    break
            self._workers_idle = None

    async def _terminate_instance(self, deadline: float) -> None:
        """Stop children, in-flight work, timers, then run ``stopping`` (bounded by ``deadline``)."""
        await self.stop_children(None)
        await self._quiesce(deadline)
        for scope in list(self._streams or ()):  # open streams end with 503 for the other side
            scope.cancel()
        self.cancel_timers()
        instance = self.instance
        if instance is not None and type(instance).stopping is not Actor.stopping:
            token = current_cell.set(self)
            try:
                with trio.move_on_at(deadline) as scope:
                    await instance.stopping()
                if scope.cancelled_caught:
                    log.warning("actor %s: stopping() passed its shutdown deadline", self.path)
            except Exception:
                log.exception("actor %s: stopping() raised", self.path)
            finally:
                current_cell.reset(token)

    async def stop(self, reason: str | None = None) -> None:
        """Stop for good: children first (reverse start order), queued mail to dead letters."""
        if self.status >= STOPPING:
            if self.status == STOPPING:
                await self.stopped_event().wait()
            return
        self.status = STOPPING
        deadline = trio.current_time() + self.spec.shutdown
        try:
            await self._terminate_instance(deadline)
        finally:
            self._finish_stop(reason)

    def abandon_start(self) -> None:
        """The instance could not be built or started: the cell is gone again."""
        self.status = STOPPING
        self._finish_stop("failed to start")

    def _finish_stop(self, reason: str | None) -> None:
        mb = self.mailbox
        while len(mb):
            item = mb.pop()
            msg, reply, sender = item.msg, item.reply, item.sender
            if reply is not None:
                reply.fail(ServiceUnavailable(f"actor {self.path} stopped", id=self.path))
            elif not isinstance(msg, Terminated):
                self.node.dead_letter(self.ref, msg, "stopped", sender)
        self.status = STOPPED
        if self._room is not None:
            self._room.unpark_all()
        self.node.unregister(self)
        if self.parent is not None and self.parent.children.get(self.ref.name) is self:
            del self.parent.children[self.ref.name]
        for watcher in self._watchers or ():
            binding = watcher.binding  # a local cell, or a route to a watcher on another node
            if binding is not None:
                binding.system(Terminated(self.ref, reason))
        self._watchers = None
        self.instance = None
        self.stopped_event().set()
        # Leave no reference cycle behind (the cell's own ref is bound to the cell, and a
        # context points back at it): a stopped actor is then freed at once by reference
        # counting, not left for a full GC pass, which would walk every live object too.
        ref = self.ref
        self.ref = ActorRef(ref.node, ref.path, ref.uid, binding=Stopped(self.node, ref))
        if self._context is not None:
            self._context = None

    def stopped_event(self) -> trio.Event:
        if self._stopped is None:
            self._stopped = trio.Event()
        return self._stopped

    async def stop_children(self, reason: str | None) -> None:
        for child in reversed(list(self.children.values())):
            await child.stop(reason)

    # ---- supervision (this cell as a parent) -------------------------------------------------

    def strategy(self) -> SupervisorStrategy:
        if self.parent is None or self.instance is None:
            return self.node.root_strategy
        return type(self.instance).supervision

    async def child_failed(self, child: CellLifecycle, error: BaseException) -> None:
        """Apply this supervisor's strategy to a failed child (one failure at a time)."""
        if self._sup_lock is None:
            self._sup_lock = trio.Lock()
        async with self._sup_lock:
            if child.status != SUSPENDED or child.parent is not self or self.status >= STOPPING:
                return
            reason = f"{type(error).__name__}: {error}"
            if child.spec.restart is Restart.TEMPORARY:
                await child.stop(reason)
                return
            policy = self.strategy()
            if self._intensity is None:
                self._intensity = RestartIntensity(policy.max_restarts, policy.within)
            intensity = self._intensity
            if not intensity.record(trio.current_time()):
                if self.parent is None:
                    # The root never escalates: only the actor that keeps failing is stopped.
                    log.error("actor %s exceeded the root restart intensity; stopping it", child.path)
                    await child.stop(reason)
                    self._intensity = None
                    return
                log.error("supervisor %s: restart intensity exceeded; escalating", self.path)
                await self.stop_children(reason)
                self._intensity = None
                self.failed(Escalated(child.ref, error))
                return
            if policy.backoff is not None:
                await trio.sleep(policy.backoff.delay(intensity.consecutive, self.node.rng))
            siblings = list(self.children.values())
            if policy.strategy is Strategy.ONE_FOR_ONE or child not in siblings:
                affected = [child]
            elif policy.strategy is Strategy.ONE_FOR_ALL:
                affected = siblings
            else:
                affected = siblings[siblings.index(child) :]
            for cell in reversed(affected):
                if cell.status < STOPPING:
                    cell.status = SUSPENDED
                    await cell._terminate_instance(trio.current_time() + cell.spec.shutdown)
            for cell in affected:
                if cell.status == SUSPENDED:
                    await self._restart(cell, error)

    async def _restart(self, cell: CellLifecycle, error: BaseException) -> None:
        self.node.metrics.restarts += 1
        try:
            await cell.start_instance(error)
        except Exception as e:
            cell.failed(e)  # a failing restart is a failure too; intensity bounds the loop

    async def child_exited(self, child: CellLifecycle) -> None:
        """A child stopped itself: PERMANENT children are restarted (counted like failures)."""
        if child.spec.restart is not Restart.PERMANENT or self.status != RUNNING:
            await child.stop(None)
            return
        child.status = SUSPENDED
        await self.child_failed(child, _NormalExit(child.path))

    # ---- timers and watchers -----------------------------------------------------------------

    def add_timer(self, timer: Timer) -> None:
        if self._timers is None:
            self._timers = set()
        self._timers.add(timer)

    def drop_timer(self, timer: Timer) -> None:
        if self._timers is not None:
            self._timers.discard(timer)

    def cancel_timers(self) -> None:
        timers, self._timers = self._timers, None
        for timer in timers or ():
            timer.on_cancel = None
            timer.cancel()

    def timers(self) -> set[Timer]:
        return self._timers or set()

    def add_watcher(self, watcher: ActorRef) -> None:
        """Tell ``watcher`` when this actor stops (at once if it has); :class:`TooManyRequests`
        (429) if it already has :data:`MAX_WATCHERS` watchers, or :data:`MAX_REMOTE_WATCHERS`
        of other nodes and ``watcher`` is one more."""
        if self.status >= STOPPING:
            binding = watcher.binding
            if binding is not None:
                binding.system(Terminated(self.ref, "already stopped"))
            return
        watchers = self._watchers
        if watchers is None:
            watchers = self._watchers = set()
        elif watcher in watchers:
            return
        elif len(watchers) >= MAX_WATCHERS:
            raise TooManyRequests(f"actor {self.path} has {MAX_WATCHERS} watchers", id=self.path)
        if watcher.node != self.ref.node:
            if self._remote_watchers >= MAX_REMOTE_WATCHERS:
                raise TooManyRequests(
                    f"actor {self.path} has {MAX_REMOTE_WATCHERS} watchers on other nodes", id=self.path
                )
            self._remote_watchers += 1
        watchers.add(watcher)

    def remove_watcher(self, watcher: ActorRef) -> None:
        watchers = self._watchers
        if watchers is not None and watcher in watchers:
            watchers.remove(watcher)
            if watcher.node != self.ref.node:
                self._remote_watchers -= 1
            if not watchers:  # a set never shrinks its table: drop it (a flood's memory goes)
                self._watchers = None
