"""The server side: an actor class's handlers wrapped in the node's and the class's middleware.

Every way a message reaches a handler (a worker draining the mailbox, a direct ask, a request
from another node run by the link's reader, a stream handler's task) looks the handler up in
the cell's :class:`~trimicro.actors.actor.HandlerTable`. So wrapping the handlers of the table
covers them all, local and remote, and the runtime's paths stay as they are. A node builds
the wrapped table once per actor class (:meth:`~trimicro.actors.node.Node.handlers_for`); its
handlers are inline (see :attr:`~trimicro.actors.actor.HandlerTable.inline`) only where the
handler is and every middleware :func:`~trimicro.actors.middleware.passes_through`.

A message type whose class sets ``__trimicro_kind__ = Kind.SUBSCRIBE`` and has a ``topic``
(the cluster broker's ``Message``) is a pub/sub delivery: its call's kind is ``subscribe`` and
its target the topic.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Sequence
from typing import Any

from ..actor import Handler, HandlerTable
from ..mail import Mail
from ..status import get_item, reset_item, set_item
from . import Call, Kind, Middleware, Next, Side, compose, is_passing_through

__all__ = ["wrap_handlers"]

_INF = float("inf")
_UNSEEN: Any = object()
#: Message types whose kind one handler remembers (a handler taking maps sees few types).
_MAX_KINDS = 64
# Enum members as module constants: a member lookup on the class costs ten times a global's.
_ASK, _TELL, _STREAM, _SUBSCRIBE, _SERVER = Kind.ASK, Kind.TELL, Kind.STREAM, Kind.SUBSCRIBE, Side.SERVER


def wrap_handlers(table: HandlerTable, middleware: Sequence[Middleware]) -> HandlerTable:
    """A copy of ``table`` whose handlers run inside ``middleware`` (first outermost)."""
    chain = compose(middleware, _serve)  # the handler, straight: every call is served the same way
    keep_inline = all(is_passing_through(mw) for mw in middleware)
    return table.wrapped(lambda fn, stream: _wrap(fn, chain, stream), keep_inline)


def _wrap(fn: Handler, chain: Next, stream: bool) -> Handler:
    #: The declared kind (``__trimicro_kind__``) of each message type seen, ``None`` for none:
    #: a getattr that misses raises inside, and most messages declare nothing.
    kinds: dict[type, Kind | None] = {}

    @functools.wraps(fn)
    async def handler(instance: Any, message: Any) -> Any:
        item = get_item()
        reply = sender = endpoint = None
        headers: dict[str, str] = {}
        if item is not None:
            reply, sender, endpoint = item.reply, item.sender, item.endpoint
            inbound = item.headers
            if inbound:
                headers = dict(inbound)  # a middleware may change its copy, not the sender's
        deadline = None if reply is None else reply.deadline
        if deadline == _INF:
            deadline = None
        kind: Kind
        if stream:
            kind = _STREAM
        else:
            t = type(message)
            declared = kinds.get(t, _UNSEEN)
            if declared is _UNSEEN:
                declared = getattr(t, "__trimicro_kind__", None)
                if len(kinds) < _MAX_KINDS:
                    kinds[t] = declared
            kind = declared or (_TELL if reply is None else _ASK)
        target = message.topic if kind is _SUBSCRIBE else instance._trimicro_cell.ref
        # Positional (the order of Call's fields): this is on every served call's path.
        call = Call(
            kind, _SERVER, target, endpoint, message, headers, None, deadline, sender, instance, fn, None,
            True, _serve, item,
        )  # fmt: skip
        return await chain(call)

    return handler


def _serve(call: Call) -> Awaitable[Any]:
    """The handler, seeing the headers as the middleware left them (``context.headers``, and
    what propagates on the calls it makes)."""
    handler = call.handler
    assert handler is not None
    item: Mail | None = call.via
    if item is not None and call.headers != (item.headers or {}):
        changed = Mail.of(
            item.msg, item.reply, item.sender, item.endpoint, call.headers or None, item.principal
        )
        return _serve_with(call, handler, changed)
    return handler(call.actor, call.message)


async def _serve_with(call: Call, handler: Handler, item: Mail) -> Any:
    token = set_item(item)
    try:
        return await handler(call.actor, call.message)
    finally:
        reset_item(token)
