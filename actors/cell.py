"""The runtime side of one actor: mailbox, status, children, watchers, timers, supervision.

A cell outlives restarts (the instance is replaced, the ref and mailbox stay). An idle cell owns
no task: a message arriving for an idle actor asks the node's dispatcher for a worker, which
drains the mailbox in a batch and goes back to the pool. That is why ``tell`` costs a deque
append and not a scheduler round trip, and why 100k idle actors cost memory, not tasks.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import Abort, ParkingLot, checkpoint, current_task, reschedule

from trimicro.mailbox.errors import (
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
)
from trimicro.mailbox.mailboxes import Mailbox, Unbuilt
from trimicro.mailbox.refs import ActorRef

from .actor import Actor, HandlerTable, _Unhandled
from .messages import Terminated
from .streams import DEFAULT_WINDOW, Stream, local_pair
from .supervision import ChildSpec, Restart, RestartIntensity, Strategy, SupervisorStrategy

if TYPE_CHECKING:
    from .context import Context
    from .node import Node
    from .timers import Timer

log = logging.getLogger("trimicro.actors")

# Cell status, ordered: a cell accepts messages while status < STOPPING.
STARTING, RUNNING, SUSPENDED, STOPPING, STOPPED = range(5)

# Results of Cell.offer.
OK, FULL, DEAD = range(3)

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

#: The cell whose handler runs in the current task (the implicit sender of tell/ask).
current_cell: ContextVar[Cell | None] = ContextVar("trimicro_current_cell", default=None)
#: The queued item (message, reply, sender, endpoint, headers) the current handler is serving.
current_item: ContextVar[tuple[Any, ...] | None] = ContextVar("trimicro_current_item", default=None)


class Escalated(Exception):
    """A supervisor gave up on a child (restart intensity exceeded) and fails in turn."""

    def __init__(self, child: ActorRef, cause: BaseException) -> None:
        super().__init__(f"{child.path} failed too often; last failure: {cause!r}")
        self.child = child
        self.cause = cause


class _NormalExit(Exception):
    """The reason given to a PERMANENT child restarted after it stopped itself."""


class Reply:
    """A one-shot reply slot for one ask. A slot is never reused: a late reply finds it abandoned."""

    __slots__ = (
        "abandoned",
        "deadline",
        "done",
        "error",
        "headers",
        "label",
        "scope",
        "slot",
        "task",
        "timeout",
        "value",
    )

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.done = False
        self.abandoned = False
        self.value: Any = None
        self.error: BaseException | None = None
        #: When set (requests from other nodes), the handler must finish by this trio time: it
        #: is skipped if still queued then, and cancelled through ``scope`` (the cancel scope of
        #: the worker running it) at the deadline or on the caller's CANCEL.
        self.deadline: float | None = None
        self.scope: trio.CancelScope | None = None
        #: Where this reply waits in the node's TimeoutWheel (``None`` when not registered).
        self.slot: int | None = None
        self.label = ""
        self.timeout = 0.0
        #: Metadata the handler sends back with its answer (``context.reply_headers``).
        self.headers: dict[str, str] | None = None

    def expire(self) -> None:
        """The asker's deadline passed: fail the wait with 408 (a late answer is then dropped)."""
        self.slot = None
        if not self.done:
            self.abandoned = True
            self.fail(RequestTimeout(f"no reply from {self.label} within {self.timeout:g}s", id=self.label))

    def resolve(self, value: Any) -> bool:
        """Deliver the answer; ``False`` if the asker already gave up (the reply is dropped)."""
        if self.done:
            return False
        self.value = value
        return self._finish()

    def fail(self, error: BaseException) -> bool:
        """Deliver an error instead of an answer; ``False`` as for :meth:`resolve`."""
        if self.done:
            return False
        self.error = error
        return self._finish()

    def _finish(self) -> bool:
        self.done = True
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)
        return not self.abandoned

    def _abort(self, raise_cancel: Any) -> Abort:
        self.task = None
        self.abandoned = True
        return Abort.SUCCEEDED

    async def wait(self) -> Any:
        if self.done:
            await checkpoint()
        else:
            self.task = current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self.error is not None:
            raise self.error
        return self.value


class Stopped:
    """The binding of a stopped actor's own ref (``cell.ref`` once it has stopped): it answers
    as the stopped cell did (mail to dead letters, an ask 503, a watcher told at once) without
    pointing back at the cell, so that the cell leaves no reference cycle behind."""

    __slots__ = ("node", "ref")

    def __init__(self, node: Node, ref: ActorRef) -> None:
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


class Cell:
    """One actor's runtime state. Also the *binding* of local refs: ``ref.binding.tell(...)``."""

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

    def __init__(
        self,
        node: Node,
        parent: Cell | None,
        spec: ChildSpec,
        path: str,
        uid: int,
        mailbox: Mailbox[Any],
    ) -> None:
        self.node = node
        self.parent = parent
        self.spec = spec
        self.path = path
        self.ref = ActorRef(node.id, path, uid, binding=self)
        self.mailbox = mailbox
        self.status = STARTING
        self.active = 0
        self.max_concurrency = 1
        self.instance: Actor | None = None
        self.handlers: HandlerTable | None = None
        self.children: dict[str, Cell] = {}

    def __repr__(self) -> str:
        return f"<Cell {self.path} status={self.status}>"

    @property
    def context(self) -> Context:
        """The actor's :class:`Context`, built on first use (see ``Actor.context``)."""
        context = self._context
        if context is None:
            from .context import Context  # a cycle at import time: context.py imports this

            context = self._context = Context(self)
        return context

    # ---- delivery (the binding API used by tell / ask / try_tell) ---------------------------

    def offer(self, item: tuple[Any, ...], system: bool = False) -> int:
        """Queue ``item`` without waiting: ``OK``, ``FULL`` or ``DEAD``."""
        if self.status >= STOPPING:
            return DEAD
        mailbox = self.mailbox
        if type(mailbox) is Unbuilt:  # the first message: now the actor needs a queue
            mailbox = self.mailbox = mailbox.build()
        if not mailbox.push(item, system):
            return FULL
        if self.status == RUNNING and self.active < self.max_concurrency:
            self.node.dispatcher.activate(self)
        return OK

    async def _wait_room(self) -> None:
        room = self._room
        if room is None:
            room = self._room = ParkingLot()
        await room.park()

    async def tell(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None = None,
    ) -> None:
        """Queue a one-way message; waits only while the mailbox is full (backpressure)."""
        node = self.node
        if node.spend():
            await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.checkpoint_if_cancelled()
        item = (msg, None, sender, endpoint, headers)
        while True:
            result = self.offer(item)
            if result == OK:
                return
            if result == DEAD:
                node.dead_letter(self.ref, msg, "stopped", sender)
                return
            await self._wait_room()

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None) -> bool:
        result = self.offer((msg, None, sender, None, headers))
        if result == OK:
            return True
        self.node.dead_letter(self.ref, msg, "stopped" if result == DEAD else "full", sender)
        return False

    async def ask(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None,
        timeout: float,
        reply_headers: dict[str, str] | None = None,
    ) -> Any:
        """Queue a request and wait for its reply; the timeout covers queueing and handling.

        When the actor is idle with an empty mailbox the handler runs directly in the caller's
        task: the same one-at-a-time guarantee (the actor counts as busy meanwhile), two
        scheduler passes fewer, and the caller's cancellation or timeout reaches the handler.
        """
        if self.status == RUNNING and self.active == 0 and not len(self.mailbox):
            return await self._ask_direct(msg, sender, headers, endpoint, timeout, reply_headers)
        node = self.node
        reply = Reply()
        item = (msg, reply, sender, endpoint, headers)
        result = self.offer(item)
        if result != OK:
            if result == DEAD:
                await checkpoint()
                raise ServiceUnavailable(f"actor {self.path} is not running", id=self.path)
            return await self._ask_when_room(item, reply, timeout)
        reply.label = self.path
        reply.timeout = timeout
        wheel = node.timeouts
        reply.slot = wheel.add(trio.current_time() + timeout, reply)
        try:
            value = await reply.wait()
            if reply_headers is not None and reply.headers:
                reply_headers.update(reply.headers)
            return value
        finally:
            if reply.slot is not None:
                wheel.remove(reply.slot, reply)
                reply.slot = None
            reply.abandoned = True

    async def _ask_when_room(self, item: tuple[Any, ...], reply: Reply, timeout: float) -> Any:
        """The slow path of ask: the mailbox is full, so wait for room within the timeout."""
        with trio.move_on_after(timeout) as scope:
            while True:
                result = self.offer(item)
                if result == OK:
                    break
                if result == DEAD:
                    await checkpoint()
                    raise ServiceUnavailable(f"actor {self.path} is not running", id=self.path)
                await self._wait_room()
            return await reply.wait()
        reply.abandoned = True
        if scope.cancelled_caught:
            raise RequestTimeout(f"no reply from {self.path} within {timeout:g}s", id=self.path)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ask_direct(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None,
        timeout: float,
        reply_headers: dict[str, str] | None = None,
    ) -> Any:
        node = self.node
        if node.spend():
            await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.status != RUNNING or self.active or len(self.mailbox):  # changed while we yielded
            return await self.ask(msg, sender, headers, endpoint, timeout, reply_headers)
        reply = Reply()
        item = (msg, reply, sender, endpoint, headers)
        # A handler with no ``await`` completes in one step: nothing could time it out or
        # cancel it, so it runs without the cancel scope (about half of a direct ask's cost).
        table = self.handlers
        inline = table is not None and table.inline_for(msg, endpoint) is not None
        self.active += 1
        scope: trio.CancelScope | None = None
        token = current_cell.set(self)
        try:
            if inline:
                await self._handle_one(item)
            else:
                scopes = self._scopes
                if scopes is None:
                    scopes = self._scopes = set()
                scope = trio.CancelScope(deadline=trio.current_time() + timeout)
                with scope:
                    scopes.add(scope)
                    await self._handle_one(item)
        finally:
            if scope is not None and self._scopes is not None:
                self._scopes.discard(scope)
            current_cell.reset(token)
            self.active -= 1
            if self.active == 0 and self._workers_idle is not None:
                self._workers_idle.set()
            if self.status == RUNNING and len(self.mailbox):
                self.node.dispatcher.activate(self)
        if scope is not None and scope.cancelled_caught:
            if self.status >= SUSPENDED:
                raise ServiceUnavailable(f"actor {self.path} stopped while handling", id=self.path)
            raise RequestTimeout(f"no reply from {self.path} within {timeout:g}s", id=self.path)
        if reply.error is not None:
            raise reply.error
        if reply_headers is not None and reply.headers:
            reply_headers.update(reply.headers)
        return reply.value

    async def open_stream(
        self,
        endpoint: str,
        request: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        window: int,
        timeout: float,
    ) -> Stream:
        """Open a stream with a local stream handler: two linked ends, the handler in its own task."""
        await trio.lowlevel.checkpoint()
        fn = self.stream_handler(endpoint)
        opener, end = local_pair(window, DEFAULT_WINDOW, request, headers)
        opener.peer, end.peer = self.ref, sender
        opener.on_credit(end.window)
        end.on_credit(opener.window)
        self.start_stream(fn, end, (request, None, sender, endpoint, headers))
        return opener

    def stream_handler(self, endpoint: str) -> Any:
        """The stream handler for ``endpoint``, or the typed error an opener should get."""
        if self.status >= STOPPING:
            raise ServiceUnavailable(f"actor {self.path} is not running", id=self.path)
        table = self.handlers
        fn = None if table is None else table.by_stream.get(endpoint)
        if fn is None:
            raise NotFound(f"{self.path} has no stream endpoint {endpoint}", id=self.path)
        return fn

    def start_stream(self, fn: Any, stream: Stream, item: tuple[Any, ...]) -> None:
        """Run a stream handler in a task of its own, cancelled when this actor stops."""
        self.node.spawn_system(self._run_stream, fn, stream, item)

    async def _run_stream(self, fn: Any, stream: Stream, item: tuple[Any, ...]) -> None:
        streams = self._streams
        if streams is None:
            streams = self._streams = set()
        service = self.handlers.service if self.handlers is not None else self.path
        token = current_cell.set(self)
        item_token = current_item.set(item)
        try:
            with trio.CancelScope() as scope:
                streams.add(scope)
                stream.handler_scope = scope
                try:
                    await fn(self.instance, stream)
                except MicroError as e:
                    if not e.id:
                        e.id = service
                    stream.fail(e)
                    return
                except trio.Cancelled:
                    stream.fail(ServiceUnavailable(f"actor {self.path} stopped", id=service))
                    raise
                except Exception as e:
                    log.warning("stream handler of %s failed: %r", self.path, e, exc_info=e)
                    stream.fail(InternalServerError(f"{type(e).__name__}: {e}", id=service))
                    return
                stream.close_send()
                await stream.aclose()  # done: an opener still sending is told to stop
        finally:
            streams.discard(scope)
            current_item.reset(item_token)
            current_cell.reset(token)

    def system(self, msg: Any) -> bool:
        """Deliver a runtime notice (e.g. Terminated) even when the mailbox is full of user mail."""
        result = self.offer((msg, None, None, None, None), system=True)
        if result != OK:
            self.node.dead_letter(self.ref, msg, "stopped" if result == DEAD else "full", None)
            return False
        return True

    # ---- processing --------------------------------------------------------------------------

    async def run_batch(self, scope: trio.CancelScope) -> None:
        """Drain the mailbox (called by a dispatcher worker that counted itself in ``active``).

        ``scope`` is the worker's cancel scope: cancelling it (this actor stopping, or a remote
        request's deadline or CANCEL) cancels the handler running now; the worker then starts
        a fresh scope. A scope per worker, not per batch: trio cancel scopes are not free.
        """
        token = current_cell.set(self)
        scopes = self._scopes
        if scopes is None:
            scopes = self._scopes = set()
        scopes.add(scope)
        mb = self.mailbox
        handle = self._handle_one
        table = self.handlers
        by_type = table.by_type if table is not None else {}
        by_endpoint = table.by_endpoint if table is not None else {}
        service = table.service if table is not None else self.path
        set_item = current_item.set
        # Each item is set as it starts and the batch restores the context once at its end,
        # not after every item (ContextVar.reset cost as much as the set).
        batch_token = set_item(None)
        n = 0
        try:
            while self.status == RUNNING and len(mb):
                item = mb.pop()
                room = self._room
                if room:
                    room.unpark()
                reply = item[1]
                if reply is not None and reply.deadline is not None:
                    ok = await self._handle_bounded(item, reply, scope)
                    if scope.cancel_called:
                        # Its deadline or CANCEL came as it finished: the worker's scope must not
                        # reach the next item. Stop here; a fresh worker serves the rest.
                        break
                else:
                    endpoint = item[3]
                    fn: Any
                    convert: Any = None
                    if endpoint is None:
                        fn = by_type.get(type(item[0]))
                    else:
                        entry = by_endpoint.get(endpoint)
                        fn, convert = (None, None) if entry is None else entry
                    if fn is None:  # the rarer cases (a subclass, the fallback, no handler)
                        ok = await handle(item)
                    else:
                        # _handle_one written out for the common cases (a handler chosen by
                        # the message's type or a known endpoint): one coroutine fewer each.
                        set_item(item)
                        try:
                            msg = item[0]
                            result = await fn(self.instance, msg if convert is None else convert(msg))
                        except trio.Cancelled:
                            if reply is not None:
                                reply.fail(self._cancelled_error(reply, service))
                            raise
                        except Exception as e:
                            ok = self._handler_raised(item, e)
                        else:
                            ok = True
                            if reply is not None and not reply.resolve(result):
                                self.node.dead_letter(self.ref, result, "late-reply", item[2])
                if not ok:
                    break
                n += 1
                if n == BATCH:
                    n = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            current_item.reset(batch_token)
            scopes.discard(scope)
            self.active -= 1
            current_cell.reset(token)
            if self.active == 0 and self._workers_idle is not None:
                self._workers_idle.set()
            # One request was cancelled (deadline or CANCEL) while others wait: serve the rest
            # (the dispatcher gives the next batch a fresh scope).
            cancelled = scope.cancel_called and self.status == RUNNING and len(mb) > 0
            if cancelled and self.active < self.max_concurrency:
                self.node.dispatcher.activate(self)

    async def put(self, item: tuple[Any, ...]) -> int:
        """Queue a prepared item, waiting while the mailbox is full: ``OK`` or ``DEAD``."""
        while True:
            result = self.offer(item)
            if result != FULL:
                return result
            await self._wait_room()

    async def _handle_bounded(self, item: tuple[Any, ...], reply: Reply, scope: trio.CancelScope) -> bool:
        """A request with a deadline (from another node): cancelled at the deadline or on CANCEL.

        The deadline sits in the node's TimeoutWheel; while the handler runs, ``reply.scope`` is
        this worker's scope, which the expiry or the CANCEL cancels.
        """
        if reply.abandoned or reply.done:  # cancelled or expired while queued
            forget = getattr(reply, "forget_deadline", None)
            if forget is not None:
                forget()
            return True
        reply.scope = scope
        try:
            return await self._handle_one(item)
        finally:
            reply.scope = None

    def _cancelled_error(self, reply: Reply, service: str) -> MicroError:
        # A stopping actor cancels the same worker scope a deadline or CANCEL does: ask which.
        scope = reply.scope
        if scope is not None and scope.cancel_called and self.status < SUSPENDED:
            return RequestTimeout(f"{self.path}: deadline passed or caller cancelled", id=service)
        return ServiceUnavailable(f"{self.path} stopped while handling", id=service)

    async def _handle_one(self, item: tuple[Any, ...]) -> bool:
        """Run the handler for one queued item and settle its reply; ``False`` when the actor
        failed (it is now suspended) and its batch must stop."""
        msg, reply, endpoint = item[0], item[1], item[3]
        table = self.handlers
        assert table is not None
        token = current_item.set(item)
        try:
            if endpoint is None:
                fn = table.by_type.get(type(msg)) or table.for_type(type(msg))
                if fn is None:
                    raise _Unhandled(msg)
                result = await fn(self.instance, msg)
            else:
                entry = table.by_endpoint.get(endpoint)
                if entry is None:
                    raise NotFound(f"{self.path} has no endpoint {endpoint}", id=table.service)
                fn, convert = entry
                result = await fn(self.instance, msg if convert is None else convert(msg))
        except trio.Cancelled:
            if reply is not None:
                reply.fail(self._cancelled_error(reply, table.service))
            raise
        except Exception as e:
            return self._handler_raised(item, e)
        finally:
            current_item.reset(token)
        if reply is not None and not reply.resolve(result):
            self.node.dead_letter(self.ref, result, "late-reply", item[2])
        return True

    def handle_now(self, item: tuple[Any, ...]) -> bool:
        """Handle ``item`` right here, synchronously, when that changes nothing observable: the
        actor is running, idle, with an empty mailbox, and the handler never suspends
        (``HandlerTable.inline``), so it would run to its end in one step on a worker anyway.
        ``False`` (nothing done) otherwise: queue it. Saves a request from another node the
        hop to a worker task (the link's reader runs it and queues the reply).
        """
        if self.status != RUNNING or self.active or len(self.mailbox):
            return False
        table = self.handlers
        found = None if table is None else table.inline_for(item[0], item[3])
        if found is None:
            return False
        fn, convert = found
        msg = item[0]
        self.active += 1
        cell_token = current_cell.set(self)
        item_token = current_item.set(item)
        try:
            coro: Any = fn(self.instance, msg if convert is None else convert(msg))
            try:
                coro.send(None)
            except StopIteration as done:
                result = done.value
            else:  # cannot happen (no await in its code); refuse rather than lose track of it
                coro.close()
                raise RuntimeError(f"handler {fn!r} suspended")
        except Exception as e:
            self._handler_raised(item, e)
        else:
            reply = item[1]
            if reply is not None and not reply.resolve(result):
                self.node.dead_letter(self.ref, result, "late-reply", item[2])
        finally:
            current_item.reset(item_token)
            current_cell.reset(cell_token)
            self.active -= 1
            if self.active == 0 and self._workers_idle is not None:
                self._workers_idle.set()
            if self.status == RUNNING and len(self.mailbox):
                self.node.dispatcher.activate(self)
        return True

    def _handler_raised(self, item: tuple[Any, ...], e: Exception) -> bool:
        """Settle an item whose handler raised: a typed error answers the asker and the actor
        carries on (``True``); any other exception answers 500 and fails the actor."""
        msg, reply, sender = item[0], item[1], item[2]
        table = self.handlers
        service = table.service if table is not None else self.path
        if isinstance(e, MicroError):
            if not e.id:
                e.id = service
            if reply is not None:
                if not reply.fail(e):
                    self.node.dead_letter(self.ref, e, "late-reply", sender)
            else:
                self.node.dead_letter(self.ref, msg, "failed", sender)
            return True
        if isinstance(e, _Unhandled):
            self.node.dead_letter(self.ref, msg, "unhandled", sender)
            if reply is not None:
                reply.fail(NotFound(f"{self.path} has no handler for {type(msg).__name__}", id=service))
            return True
        if reply is not None:
            reply.fail(InternalServerError(f"{type(e).__name__}: {e}", id=service))
        else:
            self.node.dead_letter(self.ref, msg, "failed", sender)
        self.failed(e)
        return False

    def failed(self, error: BaseException) -> None:
        """Suspend and hand the failure to the supervisor (in a system task, not this worker)."""
        if self.status >= STOPPING:
            return
        log.warning("actor %s failed: %r", self.path, error, exc_info=error)
        self.status = SUSPENDED
        parent = self.parent
        if parent is None:  # the root guardian itself: nothing above to ask
            self.node.spawn_system(self.stop, repr(error))
        else:
            self.node.spawn_system(parent.child_failed, self, error)

    # ---- lifecycle ---------------------------------------------------------------------------

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
            item = mb.pop()  # 5 fields, or 6 with the caller's principal (from another node)
            msg, reply, sender = item[0], item[1], item[2]
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

    async def child_failed(self, child: Cell, error: BaseException) -> None:
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

    async def _restart(self, cell: Cell, error: BaseException) -> None:
        try:
            await cell.start_instance(error)
        except Exception as e:
            cell.failed(e)  # a failing restart is a failure too; intensity bounds the loop

    async def child_exited(self, child: Cell) -> None:
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
