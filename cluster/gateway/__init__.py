"""The HTTP API gateway: services, streams and pub/sub of a cluster for any HTTP client.

``trimicro api`` runs a cluster member node plus an HTTP server on trio (hypercorn + Starlette)
that turns ``POST /api/{service}/{Endpoint.method}`` into a call through the node's selector,
as Go Micro's ``micro api`` does, and serves an OpenAPI 3.1 document of every endpoint it finds
in the registry, a docs page and a live dashboard (all assets in the package: no internet
needed). See docs/gateway.md.

- :class:`GatewayOptions`: address (loopback by default) and the bounds on bodies, deadlines
  and queues.
- :func:`run_gateway`: serve until cancelled (``await nursery.start(run_gateway, cluster)``).
- :func:`open_gateway`: the same as an ``async with`` block yielding the gateway's URL.
- :func:`build_app`: the ASGI app alone, for another trio ASGI server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from .app import build_app
from .options import GatewayOptions
from .server import run_gateway
from .state import GatewayState

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["Gateway", "GatewayOptions", "GatewayState", "build_app", "open_gateway", "run_gateway"]


@attrs.frozen
class Gateway:
    """A running gateway: where it listens and what it knows."""

    url: str
    state: GatewayState


@asynccontextmanager
async def open_gateway(cluster: Cluster, options: GatewayOptions | None = None) -> AsyncIterator[Gateway]:
    """Serve the gateway for the duration of the block."""
    async with trio.open_nursery() as nursery:
        url, state = await nursery.start(run_gateway, cluster, options)
        yield Gateway(url, state)
        nursery.cancel_scope.cancel()
