"""The runtime side of one actor, assembled: the cell, and the delivery a local ref binds to.

An idle cell owns no task: a message arriving for an idle actor asks the node's dispatcher for a
worker, which drains the mailbox in a batch (:mod:`.processing`) and goes back to the pool. That
is why ``tell`` costs a deque append and not a scheduler round trip, and why 100k idle actors
cost memory, not tasks. State, lifecycle and supervision are in :mod:`.lifecycle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import ParkingLot, checkpoint

from trimicro.mailbox.errors import (
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
)
from trimicro.mailbox.mailboxes import Mailbox, Unbuilt
from trimicro.mailbox.refs import ActorRef

from .cancelpoint import cancel_pending
from .context import Context
from .lifecycle import (
    BATCH,
    MAX_REMOTE_WATCHERS,
    MAX_WATCHERS,
    CellLifecycle,
    Escalated,
    Stopped,
    current_cell,
    log,
    reset_cell,
    set_cell,
)
from .mail import Mail, Reply
from .processing import CellProcessing
from .status import (
    DEAD,
    FULL,
    OK,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    SUSPENDED,
    current_item,
    reset_item,
    set_item,
)
from .streams import DEFAULT_WINDOW, Stream, local_pair
from .supervision import ChildSpec

if TYPE_CHECKING:
    from .ports import NodePort

__all__ = [
    "BATCH",
    "DEAD",
    "FULL",
    "MAX_REMOTE_WATCHERS",
    "MAX_WATCHERS",
    "OK",
    "RUNNING",
    "STARTING",
    "STOPPED",
    "STOPPING",
    "SUSPENDED",
    "Cell",
    "Escalated",
    "Stopped",
    "current_cell",
    "current_item",
]


class Cell(CellProcessing):
    """One actor's runtime state. Also the *binding* of local refs: ``ref.binding.tell(...)``."""

    __slots__ = ()

    def __init__(
        self,
        node: NodePort,
        parent: CellLifecycle | None,
        spec: ChildSpec,
        path: str,
        uid: int,
        mailbox: Mailbox[Mail],
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
        self.instance = None
        self.handlers = None
        self.children = {}

    @property
    def context(self) -> Context:
        """The actor's :class:`Context`, built on first use (see ``Actor.context``)."""
        context = self._context
        if context is None:
            context = self._context = Context(self)
        return context

    # ---- delivery (the binding API used by tell / ask / try_tell) ---------------------------

    def offer(self, item: Mail, system: bool = False) -> int:
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
        if cancel_pending():
            await checkpoint()  # raises Cancelled
        item = Mail()  # Mail.of written out, as on every per-message path (see .mail)
        item.msg, item.reply, item.sender = msg, None, sender
        item.endpoint, item.headers, item.principal = endpoint, headers, None
        while True:
            result = self.offer(item)
            if result == OK:
                return
            if result == DEAD:
                node.dead_letter(self.ref, msg, "stopped", sender)
                return
            await self._wait_room()

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None) -> bool:
        result = self.offer(Mail.of(msg, sender=sender, headers=headers))
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
        item = Mail()  # Mail.of written out, as on every per-message path (see .mail)
        item.msg, item.reply, item.sender = msg, reply, sender
        item.endpoint, item.headers, item.principal = endpoint, headers, None
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

    async def _ask_when_room(self, item: Mail, reply: Reply, timeout: float) -> Any:
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
        if cancel_pending():
            await checkpoint()  # raises Cancelled
        if self.status != RUNNING or self.active or len(self.mailbox):  # changed while we yielded
            return await self.ask(msg, sender, headers, endpoint, timeout, reply_headers)
        reply = Reply()
        item = Mail()  # Mail.of written out, as on every per-message path (see .mail)
        item.msg, item.reply, item.sender = msg, reply, sender
        item.endpoint, item.headers, item.principal = endpoint, headers, None
        # A handler with no ``await`` completes in one step: nothing could time it out or
        # cancel it, so it runs without the cancel scope (about half of a direct ask's cost).
        table = self.handlers
        inline = table is not None and table.inline_for(msg, endpoint) is not None
        self.active += 1
        scope: trio.CancelScope | None = None
        token = set_cell(self)
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
            reset_cell(token)
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
        self.start_stream(fn, end, Mail.of(request, sender=sender, endpoint=endpoint, headers=headers))
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

    def start_stream(self, fn: Any, stream: Stream, item: Mail) -> None:
        """Run a stream handler in a task of its own, cancelled when this actor stops."""
        self.node.spawn_system(self._run_stream, fn, stream, item)

    async def _run_stream(self, fn: Any, stream: Stream, item: Mail) -> None:
        streams = self._streams
        if streams is None:
            streams = self._streams = set()
        service = self.handlers.service if self.handlers is not None else self.path
        token = set_cell(self)
        item_token = set_item(item)
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
            reset_item(item_token)
            reset_cell(token)

    def system(self, msg: Any) -> bool:
        """Deliver a runtime notice (e.g. Terminated) even when the mailbox is full of user mail."""
        result = self.offer(Mail.of(msg), system=True)
        if result != OK:
            self.node.dead_letter(self.ref, msg, "stopped" if result == DEAD else "full", None)
            return False
        return True

    async def put(self, item: Mail) -> int:
        """Queue a prepared item, waiting while the mailbox is full: ``OK`` or ``DEAD``."""
        while True:
            result = self.offer(item)
            if result != FULL:
                return result
            await self._wait_room()
