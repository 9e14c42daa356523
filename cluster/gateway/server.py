"""The gateway's HTTP server: hypercorn's trio worker running the Starlette app.

Chosen by measurement (benchmarks/bench_gateway.py, docs/gateway.md): hypercorn is the ASGI
server that runs on trio itself (uvicorn and granian need asyncio or their own loop), so the
gateway shares the node's event loop and calls services without crossing threads; Starlette on
it answered a constant at about the rate of a bare ASGI callable on the same server, so its
routing costs little and it brings WebSockets, streaming and request parsing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from .app import build_app
from .options import GatewayOptions
from .state import GatewayState

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["hypercorn_config", "run_gateway"]


def hypercorn_config(options: GatewayOptions) -> Config:
    config = Config()
    config.bind = [options.address]
    config.accesslog = None
    config.errorlog = "-"
    config.websocket_max_message_size = options.max_body
    config.h11_max_incomplete_size = 64 * 1024  # request line and headers
    config.graceful_timeout = 2.0
    return config


async def run_gateway(
    cluster: Cluster,
    options: GatewayOptions | None = None,
    *,
    task_status: trio.TaskStatus[tuple[str, GatewayState]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the gateway for ``cluster`` until cancelled; started reports ``(url, state)``."""
    options = options or GatewayOptions()
    state = GatewayState(cluster, options)
    app = build_app(cluster, state)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(state.follow)
        binds = await nursery.start(serve, app, hypercorn_config(options))
        task_status.started((binds[0], state))
