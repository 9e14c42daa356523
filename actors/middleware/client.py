"""The client side: ``ask``, ``tell``, ``try_tell`` and ``open_stream`` through a middleware chain.

:mod:`trimicro.actors.api` takes these paths only when the call or the node has middleware; the
ends below are the binding calls the plain paths make (the same for local and remote refs,
since a ref's binding is the local cell or the route to another node).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from trimicro.mailbox.refs import ActorRef

from . import Call, Kind, Middleware, Next, Side, compose, run_sync

__all__ = ["ask", "client_chain", "open_stream", "tell", "try_tell"]

# Enum members as module constants: a member lookup on the class costs ten times a global's.
_ASK, _TELL, _CLIENT = Kind.ASK, Kind.TELL, Side.CLIENT


def client_chain(node_chain: Next | None, middleware: Sequence[Middleware] | None) -> Next:
    """The call's middleware (outermost) around the node's chain."""
    if middleware:
        return compose(middleware, node_chain)
    return compose(()) if node_chain is None else node_chain


def _ask(call: Call) -> Awaitable[Any]:
    return call.via.ask(  # type: ignore[no-any-return]
        call.message, call.sender, call.headers or None, call.endpoint, call.timeout, call.reply_headers
    )


def _tell(call: Call) -> Awaitable[None]:
    return call.via.tell(call.message, call.sender, call.headers or None, call.endpoint)  # type: ignore[no-any-return]


async def _try_tell(call: Call) -> bool:
    return bool(call.via.try_tell(call.message, call.sender, call.headers or None))


def _call(
    kind: Kind,
    ref: ActorRef,
    binding: Any,
    message: Any,
    sender: ActorRef | None,
    headers: dict[str, str] | None,
    end: Next,
    **fields: Any,
) -> Call:
    """A client call; the headers are copied, so a middleware never changes the caller's dict."""
    return Call(
        kind, _CLIENT, ref, message=message, headers=dict(headers) if headers else {}, sender=sender, end=end,
        via=binding, **fields,
    )  # fmt: skip


def ask(
    chain: Next,
    ref: ActorRef,
    binding: Any,
    message: Any,
    sender: ActorRef | None,
    headers: dict[str, str] | None,
    endpoint: str | None,
    timeout: float,
    reply_headers: dict[str, str] | None,
) -> Awaitable[Any]:
    """The chain's awaitable (a plain function, not a coroutine of its own: one frame fewer)."""
    # Positional (the order of Call's fields): this is on every ask's path.
    call = Call(
        _ASK, _CLIENT, ref, endpoint, message, dict(headers) if headers else {}, timeout, None, sender, None,
        None, reply_headers, True, _ask, binding,
    )  # fmt: skip
    return chain(call)


def tell(
    chain: Next,
    ref: ActorRef,
    binding: Any,
    message: Any,
    sender: ActorRef | None,
    headers: dict[str, str] | None,
    endpoint: str | None,
) -> Awaitable[None]:
    call = Call(
        _TELL, _CLIENT, ref, endpoint, message, dict(headers) if headers else {}, None, None, sender, None,
        None, None, True, _tell, binding,
    )  # fmt: skip
    return chain(call)


def try_tell(
    chain: Next,
    ref: ActorRef,
    binding: Any,
    message: Any,
    sender: ActorRef | None,
    headers: dict[str, str] | None,
) -> bool:
    return bool(
        run_sync(chain, _call(Kind.TELL, ref, binding, message, sender, headers, _try_tell, wait=False))
    )


async def open_stream(
    chain: Next,
    ref: ActorRef,
    binding: Any,
    endpoint: str,
    request: Any,
    sender: ActorRef | None,
    headers: dict[str, str] | None,
    window: int,
    timeout: float,
) -> Any:
    def _open(call: Call) -> Awaitable[Any]:
        return call.via.open_stream(  # type: ignore[no-any-return]
            call.endpoint, call.message, call.sender, call.headers or None, window, call.timeout
        )

    call = _call(
        Kind.STREAM, ref, binding, request, sender, headers, _open, endpoint=endpoint, timeout=timeout
    )
    return await chain(call)
