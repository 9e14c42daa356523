"""The processing half of a cell: a dispatcher worker drains an actor's mailbox here.

:meth:`CellProcessing.run_batch` is the hot loop of the runtime: it picks each message's handler
by type or endpoint and runs it inline, settles its reply, and yields to the scheduler every
:data:`~.lifecycle.BATCH` messages. Requests from other nodes carry a deadline and run under
the worker's cancel scope; a handler that raises answers its asker with a typed error, and
anything untyped fails the actor (its supervisor decides).
"""

from __future__ import annotations

from typing import Any

import trio

from trimicro.mailbox.errors import (
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
)

from .actor import _Unhandled
from .lifecycle import (
    BATCH,
    CellLifecycle,
    reset_cell,
    set_cell,
)
from .mail import Mail, Reply
from .status import RUNNING, SUSPENDED, reset_item, set_item

__all__ = ["CellProcessing"]


class CellProcessing(CellLifecycle):
    """A cell that runs its actor's handlers (the slots are :class:`CellLifecycle`'s)."""

    __slots__ = ()

    # ---- processing --------------------------------------------------------------------------

    async def run_batch(self, scope: trio.CancelScope) -> None:
        """Drain the mailbox (called by a dispatcher worker that counted itself in ``active``).

        ``scope`` is the worker's cancel scope: cancelling it (this actor stopping, or a remote
        request's deadline or CANCEL) cancels the handler running now; the worker then starts
        a fresh scope. A scope per worker, not per batch: trio cancel scopes are not free.
        """
        token = set_cell(self)
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
                reply = item.reply
                if reply is not None and reply.deadline is not None:
                    ok = await self._handle_bounded(item, reply, scope)
                    if scope.cancel_called:
                        # Its deadline or CANCEL came as it finished: the worker's scope must not
                        # reach the next item. Stop here; a fresh worker serves the rest.
                        break
                else:
                    fn: Any
                    convert: Any = None
                    msg = item.msg
                    endpoint = item.endpoint
                    if endpoint is None:
                        fn = by_type.get(type(msg))
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
                                self.node.dead_letter(self.ref, result, "late-reply", item.sender)
                if not ok:
                    break
                n += 1
                if n == BATCH:
                    n = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            reset_item(batch_token)
            scopes.discard(scope)
            self.active -= 1
            reset_cell(token)
            if self.active == 0 and self._workers_idle is not None:
                self._workers_idle.set()
            # One request was cancelled (deadline or CANCEL) while others wait: serve the rest
            # (the dispatcher gives the next batch a fresh scope).
            cancelled = scope.cancel_called and self.status == RUNNING and len(mb) > 0
            if cancelled and self.active < self.max_concurrency:
                self.node.dispatcher.activate(self)

    async def _handle_bounded(self, item: Mail, reply: Reply, scope: trio.CancelScope) -> bool:
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

    async def _handle_one(self, item: Mail) -> bool:
        """Run the handler for one queued item and settle its reply; ``False`` when the actor
        failed (it is now suspended) and its batch must stop."""
        msg, reply, endpoint = item.msg, item.reply, item.endpoint
        table = self.handlers
        assert table is not None
        token = set_item(item)
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
            reset_item(token)
        if reply is not None and not reply.resolve(result):
            self.node.dead_letter(self.ref, result, "late-reply", item.sender)
        return True

    def handle_now(self, item: Mail) -> bool:
        """Handle ``item`` right here, synchronously, when that changes nothing observable: the
        actor is running, idle, with an empty mailbox, and the handler never suspends
        (``HandlerTable.inline``), so it would run to its end in one step on a worker anyway.
        ``False`` (nothing done) otherwise: queue it. Saves a request from another node the
        hop to a worker task (the link's reader runs it and queues the reply).
        """
        if self.status != RUNNING or self.active or len(self.mailbox):
            return False
        msg, reply = item.msg, item.reply
        table = self.handlers
        found = None if table is None else table.inline_for(msg, item.endpoint)
        if found is None:
            return False
        fn, convert = found
        self.active += 1
        cell_token = set_cell(self)
        item_token = set_item(item)
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
            if reply is not None and not reply.resolve(result):
                self.node.dead_letter(self.ref, result, "late-reply", item.sender)
        finally:
            reset_item(item_token)
            reset_cell(cell_token)
            self.active -= 1
            if self.active == 0 and self._workers_idle is not None:
                self._workers_idle.set()
            if self.status == RUNNING and len(self.mailbox):
                self.node.dispatcher.activate(self)
        return True

    def _handler_raised(self, item: Mail, e: Exception) -> bool:
        """Settle an item whose handler raised: a typed error answers the asker and the actor
        carries on (``True``); any other exception answers 500 and fails the actor."""
        msg, reply, sender = item.msg, item.reply, item.sender
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
