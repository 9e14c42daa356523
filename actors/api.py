"""``tell``, ``try_tell``, ``ask`` and ``open_stream``: the same calls for every ref, local or
remote.

A ref carries its binding (the local cell, or later a route to another node), so these are
plain functions with no global lookup. Called from inside an actor, the actor is the sender.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from trimicro.mailbox.errors import NotFound
from trimicro.mailbox.refs import ActorRef

from .lifecycle import get_cell
from .metadata import forward_auth, propagate
from .middleware import Middleware, client
from .status import get_item
from .streams import DEFAULT_WINDOW, Stream

__all__ = ["ask", "open_stream", "tell", "try_tell"]


def _binding(ref: ActorRef) -> Any:
    binding = ref.binding
    if binding is None:
        cell = get_cell()
        if cell is None:
            raise NotFound(f"{ref} is not bound to a node; use node.resolve(ref)", id=ref.path)
        binding = cell.node.resolve(ref).binding  # inside an actor: resolve through its node
    return binding


def _sender() -> ActorRef | None:
    cell = get_cell()
    return None if cell is None else cell.ref


async def tell(
    ref: ActorRef,
    message: Any,
    *,
    endpoint: str | None = None,
    headers: dict[str, str] | None = None,
    middleware: Sequence[Middleware] | None = None,
) -> None:
    """Send one-way. Waits only while the target's bounded mailbox is full (backpressure).

    A message to a stopped actor goes to dead letters. When the message fits, ``tell`` yields to
    the scheduler only once every 128 calls, so a producer sends in batches: that is what makes
    it fast, while other tasks still get to run. ``middleware`` runs around this call, outside
    the node's (see :mod:`trimicro.actors.middleware`).
    """
    binding = ref.binding
    if binding is None:
        binding = _binding(ref)
    cell = get_cell()
    item = get_item()
    if item is not None:
        inbound = item.headers
        if inbound:  # serving a message with metadata: it travels on
            headers = propagate(inbound, headers)
    if middleware is not None or binding.node.client_chain is not None:
        chain = client.client_chain(binding.node.client_chain, middleware)
        sender = None if cell is None else cell.ref
        await client.tell(chain, ref, binding, message, sender, headers, endpoint)
    elif endpoint is None:
        await binding.tell(message, None if cell is None else cell.ref, headers)
    else:
        await binding.tell(message, None if cell is None else cell.ref, headers, endpoint)


def try_tell(
    ref: ActorRef,
    message: Any,
    *,
    headers: dict[str, str] | None = None,
    middleware: Sequence[Middleware] | None = None,
) -> bool:
    """Send one-way without waiting; ``False`` (and a dead letter) if it could not be queued.

    Middleware (this call's, then the node's) runs synchronously here: one that suspends
    raises :class:`RuntimeError` (see :mod:`trimicro.actors.middleware`).
    """
    binding = _binding(ref)
    if middleware is not None or binding.node.client_chain is not None:
        chain = client.client_chain(binding.node.client_chain, middleware)
        return client.try_tell(chain, ref, binding, message, _sender(), forward_auth(headers))
    return bool(binding.try_tell(message, _sender(), forward_auth(headers)))


async def ask(
    ref: ActorRef,
    message: Any = None,
    *,
    endpoint: str | None = None,
    timeout: float | None = None,
    headers: dict[str, str] | None = None,
    reply_headers: dict[str, str] | None = None,
    middleware: Sequence[Middleware] | None = None,
) -> Any:
    """Send a request and return the reply, or raise the handler's typed error.

    ``endpoint`` (``"Service.method"``) selects the handler by name, with ``message`` as its
    body (a map is turned into the handler's attrs type). ``headers`` reach the handler as
    ``context.headers``; pass a dict as ``reply_headers`` to receive what the handler puts in
    ``context.reply_headers``, locally or from another node. Called while handling a message,
    the call also carries that message's headers onwards, save hop-by-hop ones; ``headers``
    given here win (see :mod:`trimicro.actors.metadata`). ``timeout`` defaults to the node's
    ``ask_timeout``; on expiry :class:`~trimicro.mailbox.errors.RequestTimeout` is raised.

    What happens to the handler when the asker gives up (timeout or cancellation): if the actor
    was idle, its handler ran directly in the asker's task and is cancelled with it (no work is
    left running for nobody); if the request was queued, the handler runs on a worker and its
    late reply is dropped to dead letters (``late-reply``), never delivered to another call.

    ``middleware`` runs around this call, outside the node's (see
    :mod:`trimicro.actors.middleware`).
    """
    binding = _binding(ref)
    node = binding.node
    item = get_item()
    if item is None:
        if timeout is None:
            timeout = node.ask_timeout
    else:
        reply, inbound = item.reply, item.headers
        if timeout is None:
            timeout = node.ask_timeout
            if reply is not None and reply.deadline is not None:
                # Serving a request with a deadline: a nested call gets what is left of it.
                timeout = min(timeout, max(0.0, reply.deadline - trio.current_time()))
        if inbound:  # serving a message with metadata: it travels on
            headers = propagate(inbound, headers)
    if middleware is not None or node.client_chain is not None:
        chain = client.client_chain(node.client_chain, middleware)
        return await client.ask(
            chain, ref, binding, message, _sender(), headers, endpoint, timeout, reply_headers
        )
    if reply_headers is None:
        return await binding.ask(message, _sender(), headers, endpoint, timeout)
    return await binding.ask(message, _sender(), headers, endpoint, timeout, reply_headers)


async def _open_through(
    middleware: Sequence[Middleware] | None,
    ref: ActorRef,
    binding: Any,
    endpoint: str,
    request: Any,
    headers: dict[str, str] | None,
    window: int,
    timeout: float,
) -> Any:
    """``open_stream`` through middleware."""
    chain = client.client_chain(binding.node.client_chain, middleware)
    return await client.open_stream(
        chain, ref, binding, endpoint, request, _sender(), headers, window, timeout
    )


@asynccontextmanager
async def open_stream(
    ref: ActorRef,
    endpoint: str,
    request: Any = None,
    *,
    window: int = DEFAULT_WINDOW,
    headers: dict[str, str] | None = None,
    timeout: float | None = None,
    middleware: Sequence[Any] | None = None,
) -> AsyncIterator[Stream]:
    """Open a stream with the handler ``endpoint`` of the actor ``ref`` (local or remote).

    Returns once the handler has accepted it (or raises its typed error: 404 for an unknown
    stream endpoint, 503 for a stopped actor). ``window`` is how many items this side buffers;
    ``timeout`` bounds only the opening. Leaving the block closes the stream: if it is not over,
    the handler sees it cancelled. ``middleware`` runs around the opening, outside the node's
    (see :mod:`trimicro.actors.middleware`).
    """
    binding = _binding(ref)
    node = binding.node
    if timeout is None:
        timeout = node.ask_timeout
    headers = forward_auth(headers)  # metadata of the message being handled travels on
    stream: Stream
    if middleware is not None or node.client_chain is not None:
        stream = await _open_through(middleware, ref, binding, endpoint, request, headers, window, timeout)
    else:
        stream = await binding.open_stream(endpoint, request, _sender(), headers, window, timeout)
    try:
        yield stream
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
