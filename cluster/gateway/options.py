"""The gateway's options: where it listens and the bounds that keep one client from hurting others."""

from __future__ import annotations

import attrs

from ..broker import Policy

__all__ = ["GatewayOptions"]


@attrs.frozen
class GatewayOptions:
    """How ``trimicro api`` serves HTTP.

    Every wait has a deadline and every queue a bound, so a slow or hostile client costs a known
    amount of memory and time: a request body larger than ``max_body`` is refused with 413, a
    call waits at most ``max_timeout`` seconds whatever its ``Timeout`` header asks, and an SSE
    or WebSocket bridge holds at most ``queue`` items between the cluster and the socket (the
    stream's credit and the socket's own back-pressure slow the service down instead).
    """

    #: ``host:port``; loopback unless the operator names another interface on purpose.
    address: str = "127.0.0.1:8080"
    #: Largest request body (and WebSocket message) accepted, in bytes.
    max_body: int = 1 << 20
    #: A call's deadline when the request has no ``Timeout`` header, in seconds.
    default_timeout: float = 10.0
    #: Longest deadline a ``Timeout`` header may ask for, in seconds.
    max_timeout: float = 60.0
    #: Items buffered per SSE subscription or stream bridge.
    queue: int = 64
    #: What a subscriber that reads too slowly costs unless it asks for another (``?policy=``):
    #: ``"drop_oldest"`` (it misses the oldest messages and is told how many), ``"block"``
    #: (publishers wait for it) or ``"drop_subscriber"``, the broker's slow-subscriber policies
    #: (see :mod:`trimicro.cluster.gateway.subscriptions` for why ``"drop_oldest"`` by default).
    subscriber_policy: Policy = "drop_oldest"
    #: Longest a stream or subscription bridge stays open, in seconds (``None``: while the client stays).
    max_stream: float | None = 3600.0
    #: How often the gateway re-reads the registry for its OpenAPI document and dashboard, in seconds.
    refresh: float = 2.0
    #: Errors and dead letters the dashboard keeps.
    recent: int = 50
