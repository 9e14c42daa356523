"""A publish through client middleware, for every broker: the call's middleware (outermost), then
the node's chain (tracing's ``publish`` span, the application's middleware), then the broker.

A broker's ``publish`` runs the chain when there is one (:func:`runs_chain`) and is the chain's
end itself, called again with ``middleware=APPLIED``. Without any middleware a publish costs
nothing more than the check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from trimicro.actors import Call, Middleware, Node
from trimicro.actors.lowlevel import Kind, Side, compose, forward_auth

__all__ = ["APPLIED", "publish_through", "runs_chain"]

#: ``publish(middleware=APPLIED)``: the chain has run, publish now (the end of the chain).
APPLIED: Sequence[Middleware] = ()

#: A broker's publish, as the chain's end calls it (``headers=``, ``middleware=`` and the rest).
Publish = Callable[..., Awaitable[int]]


def runs_chain(node: Node, middleware: Sequence[Middleware] | None) -> bool:
    """Whether a publish with ``middleware`` goes through a chain (not yet run, and one exists)."""
    return middleware is not APPLIED and (middleware is not None or node.client_chain is not None)


async def publish_through(
    broker: Any,
    middleware: Sequence[Middleware] | None,
    topic: str,
    body: Any,
    headers: dict[str, str] | None,
    options: dict[str, Any],
) -> int:
    """``broker.publish(topic, body, headers=..., **options)`` through ``middleware`` and the
    client chain of ``broker.node``, as a call of kind ``publish`` whose target is the topic;
    ``headers`` carry what propagates from the request being handled (``forward_auth``)."""
    publish: Publish = broker.publish
    node: Node = broker.node

    def end(call: Call) -> Awaitable[int]:
        return publish(
            str(call.target), call.message, headers=call.headers or None, middleware=APPLIED, **options
        )

    chain = compose(middleware or (), node.client_chain)
    call = Call(
        kind=Kind.PUBLISH,
        side=Side.CLIENT,
        target=topic,
        message=body,
        headers=dict(forward_auth(headers) or {}),
        end=end,
    )
    delivered: int = await chain(call)
    return delivered
