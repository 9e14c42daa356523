"""Flow control through the gateway with a slow consumer: a client that stops reading an SSE
stream or a WebSocket stops the service (the stream's credit), so nothing between them grows
without bound; reading again lets it go on, and every item arrives. Not timing-based: the test
waits until every task of the run is blocked (trio.testing.wait_all_tasks_blocked) and then
counts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

import httpx
import trio
import wsproto
import wsproto.events as ws
from gateway_services import Shop
from trio.testing import wait_all_tasks_blocked

from trimicro.actors.streams import DEFAULT_WINDOW
from trimicro.cluster import start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.registry import MemoryRegistry

N, SIZE = 2000, 64 * 1024  # 128 MB if nothing held the service back
# What may sit between a stalled client and the service: the stream's window of items plus
# what the sockets' buffers took (a few MB on loopback), far below N.
BOUND = DEFAULT_WINDOW + (16 << 20) // SIZE


@asynccontextmanager
async def flooding_gateway() -> AsyncIterator[tuple[str, Shop]]:
    """A gateway and the ``Shop`` service on one node, in this trio run; yields (url, shop)."""
    async with start_cluster(
        "gw", registry=MemoryRegistry(), store="", auth=False, membership=False
    ) as cluster:
        ref = await cluster.serve(Shop)
        opts = GatewayOptions(address="127.0.0.1:0", refresh=3600)
        async with open_gateway(cluster, opts) as gw:
            await gw.state.refresh()
            yield gw.url, ref.binding.instance


async def test_a_client_that_stops_reading_stops_the_service() -> None:
    async with flooding_gateway() as (url, shop), httpx.AsyncClient(base_url=url, timeout=30) as http:
        headers = {"accept": "text/event-stream"}
        body = {"n": N, "size": SIZE}
        async with http.stream("POST", "/api/shop/flood", json=body, headers=headers) as r:
            assert r.status_code == 200
            with trio.fail_after(30):
                await wait_all_tasks_blocked(cushion=0.05)
            # Blocked with the client reading nothing: the service is held back.
            stalled = shop.flooded
            assert stalled < BOUND, stalled
            got = 0
            with trio.fail_after(60):
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: null":
                        got += 1
            assert got == N and shop.flooded == N


async def test_a_websocket_that_stops_reading_stops_the_service() -> None:
    """The same over a WebSocket: the bridge's ``send_text`` waits on the client's TCP window,
    so it takes no item from the stream, whose credit stops the service."""
    async with flooding_gateway() as (url, shop):
        host, port = url.removeprefix("http://").split(":")
        request = quote(json.dumps({"n": N, "size": SIZE}))
        conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        got = 0

        def take(data: bytes | None) -> bool:
            """Feed bytes to the client; whether the server has closed the socket (code 1000)."""
            nonlocal got
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, ws.TextMessage) and event.message_finished:
                    got += 1
                elif isinstance(event, ws.CloseConnection):
                    assert event.code == 1000, event
                    return True
            return False

        async with await trio.open_tcp_stream(host, int(port)) as sock:
            await sock.send_all(conn.send(ws.Request(host=host, target=f"/api/shop/flood?request={request}")))
            with trio.fail_after(30):
                while conn.state is not wsproto.connection.ConnectionState.OPEN:
                    assert not take(await sock.receive_some())
                # Reading nothing more: everything in this run waits, the service included.
                await wait_all_tasks_blocked(cushion=0.05)
            stalled = shop.flooded
            assert stalled < BOUND, stalled
            with trio.fail_after(60):
                while not take(await sock.receive_some() or None):
                    pass
        assert got == N and shop.flooded == N
