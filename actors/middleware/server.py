"""The server side: an actor class's handlers wrapped in the node's and the class's middleware.

Every way a message reaches a handler (a worker draining the mailbox, a direct ask, a request
from another node run by the link's reader, a stream handler's task) looks the handler up in
the cell's :class:`~trimicro.actors.actor.HandlerTable`. So wrapping the handlers of the table
covers them all, local and remote, and the runtime's paths stay as they are. A node builds
the wrapped table once per actor class (:meth:`~trimicro.actors.node.Node.handlers_for`); the
wrapped table has no inline handlers, since a middleware may suspend.

A message type whose class sets ``__trimicro_kind__ = Kind.SUBSCRIBE`` and has a ``topic``
(the cluster broker's ``Message``) is a pub/sub delivery: its call's kind is ``subscribe`` and
its target the topic.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence
from typing import Any

from ..actor import Handler, HandlerTable
from ..cell import current_item
from . import Call, Kind, Middleware, Next, Side, compose

__all__ = ["wrap_handlers"]

_INF = float("inf")


def wrap_handlers(table: HandlerTable, middleware: Sequence[Middleware]) -> HandlerTable:
    """A copy of ``table`` whose handlers run inside ``middleware`` (first outermost)."""
    chain = compose(middleware)
    return table.wrapped(lambda fn, stream: _wrap(fn, chain, stream))


def _wrap(fn: Handler, chain: Next, stream: bool) -> Handler:
    @functools.wraps(fn)
    async def handler(instance: Any, message: Any) -> Any:
        item = current_item.get()
        reply = sender = endpoint = None
        headers: dict[str, str] = {}
        if item is not None:
            reply, sender, endpoint = item[1], item[2], item[3]
            if item[4]:
                headers = dict(item[4])  # a middleware may change its copy, not the sender's
        deadline = None if reply is None else reply.deadline
        if deadline == _INF:
            deadline = None
        kind: Kind
        target: Any
        if stream:
            kind = Kind.STREAM
        else:
            kind = getattr(type(message), "__trimicro_kind__", None) or (
                Kind.TELL if reply is None else Kind.ASK
            )
        target = message.topic if kind is Kind.SUBSCRIBE else instance._trimicro_cell.ref
        call = Call(
            kind=kind,
            side=Side.SERVER,
            target=target,
            endpoint=endpoint,
            message=message,
            headers=headers,
            deadline=deadline,
            sender=sender,
            actor=instance,
            handler=fn,
            end=_serve,
            via=item,
        )
        return await chain(call)

    return handler


def _serve(call: Call) -> Awaitable[Any]:
    """The handler, seeing the headers as the middleware left them (``context.headers``, and
    what propagates on the calls it makes)."""
    handler = call.handler
    assert handler is not None
    item = call.via
    if item is not None and call.headers != (item[4] or {}):
        return _serve_with(call, handler, (*item[:4], call.headers or None, *item[5:]))
    return handler(call.actor, call.message)


async def _serve_with(call: Call, handler: Handler, item: tuple[Any, ...]) -> Any:
    token = current_item.set(item)
    try:
        return await handler(call.actor, call.message)
    finally:
        current_item.reset(token)
