"""Flow control through the gateway with a slow consumer: a client that stops reading an SSE
stream stops the service (the stream's credit), so nothing between them grows without bound;
reading again lets it go on, and every item arrives. Not timing-based: the test waits until
every task of the run is blocked (trio.testing.wait_all_tasks_blocked) and then counts."""

from __future__ import annotations

import httpx
import trio
from gateway_services import Shop
from trio.testing import wait_all_tasks_blocked

from trimicro.actors.streams import DEFAULT_WINDOW
from trimicro.cluster import start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.registry import MemoryRegistry

N, SIZE = 2000, 64 * 1024  # 128 MB if nothing held the service back


async def test_a_client_that_stops_reading_stops_the_service() -> None:
    async with start_cluster(
        "gw", registry=MemoryRegistry(), store="", auth=False, membership=False
    ) as cluster:
        ref = await cluster.serve(Shop)
        shop = ref.binding.instance
        opts = GatewayOptions(address="127.0.0.1:0", refresh=3600)
        async with open_gateway(cluster, opts) as gw, httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            await gw.state.refresh()
            headers = {"accept": "text/event-stream"}
            body = {"n": N, "size": SIZE}
            async with http.stream("POST", "/api/shop/flood", json=body, headers=headers) as r:
                assert r.status_code == 200
                with trio.fail_after(30):
                    await wait_all_tasks_blocked(cushion=0.05)
                # Blocked with the client reading nothing: the service is held at the stream's
                # window plus what the sockets' buffers took (a few MB on loopback), far below N.
                stalled = shop.flooded
                assert stalled < DEFAULT_WINDOW + (16 << 20) // SIZE, stalled
                got = 0
                with trio.fail_after(60):
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and line != "data: null":
                            got += 1
                assert got == N and shop.flooded == N
