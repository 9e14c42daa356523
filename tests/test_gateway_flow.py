"""Flow control through the gateway with a slow consumer: a client that stops reading an SSE
stream or a WebSocket stops the service (the stream's credit), so nothing between them grows
without bound; reading again lets it go on, and every item arrives. A subscriber that stops
reading gets its slow-subscriber policy: the oldest messages go and the client is told how many
(``drop_oldest``, the default), the publisher waits (``block``, if the operator allows it), or the
subscription ends (``drop_subscriber``).
Not timing-based: the tests wait until every task of the run is blocked
(trio.testing.wait_all_tasks_blocked) and then count."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import trio
import wsproto
import wsproto.events as ws
from gateway_services import Shop
from trio.testing import wait_all_tasks_blocked

from trimicro.actors import DeadLetter
from trimicro.actors.streams import DEFAULT_WINDOW
from trimicro.cluster import Cluster, start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.gateway.subscriptions import FEED_MAILBOX
from trimicro.cluster.registry import MemoryRegistry

N, SIZE = 2000, 64 * 1024  # 128 MB if nothing held the service back
# What may sit between a stalled client and the service: the stream's window of items plus
# what the sockets' buffers took (a few MB on loopback), far below N.
BOUND = DEFAULT_WINDOW + (16 << 20) // SIZE
# For a subscriber: its buffer, the feeding actor's mailbox and the message in its hand, the
# event being sent, and the sockets' buffers.
QUEUE = 8
SUB_BOUND = QUEUE + FEED_MAILBOX + 2 + (16 << 20) // SIZE
PAD = "x" * SIZE


@asynccontextmanager
async def flooding_gateway(**options: Any) -> AsyncIterator[tuple[str, Shop, Cluster]]:
    """A gateway and the ``Shop`` service on one node, in this trio run; yields (url, shop, node)."""
    async with start_cluster(
        "gw", registry=MemoryRegistry(), store="", auth=False, membership=False
    ) as cluster:
        ref = await cluster.serve(Shop)
        opts = GatewayOptions(address="127.0.0.1:0", refresh=3600, queue=QUEUE, **options)
        async with open_gateway(cluster, opts) as gw:
            await gw.state.refresh()
            yield gw.url, ref.binding.instance, cluster


async def test_a_client_that_stops_reading_stops_the_service() -> None:
    async with flooding_gateway() as (url, shop, _), httpx.AsyncClient(base_url=url, timeout=30) as http:
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
    async with flooding_gateway() as (url, shop, _):
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


async def _events(lines: AsyncIterator[str], until: int) -> AsyncIterator[tuple[str, Any]]:
    """(event name, data) of an SSE stream, until the message numbered ``until`` or the end."""
    name = "message"
    async for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            yield name, data
            if name == "message" and data["body"]["i"] == until:
                return
            name = "message"


@asynccontextmanager
async def stalled_subscriber(
    policy: str, **options: Any
) -> AsyncIterator[tuple[Cluster, trio.MemoryReceiveChannel[DeadLetter], httpx.Response]]:
    """A gateway with ``options``, its node's dead letters, and an SSE subscription to
    ``flood.>`` under ``policy`` whose client reads nothing until the test does."""
    async with (
        flooding_gateway(**options) as (url, _, cluster),
        cluster.node.dead_letters.subscribe(buffer=N) as letters,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        http.stream("GET", f"/api/subscribe/flood.>?policy={policy}") as r,
    ):
        assert r.status_code == 200  # sent once the subscription is in place
        yield cluster, letters, r


async def publish(cluster: Cluster, i: int) -> int:
    return await cluster.publish("flood.x", {"i": i, "pad": PAD})


async def test_a_subscriber_that_stops_reading_holds_the_publisher_back() -> None:
    """``block`` (where the operator allows it): a publish waits once the subscriber's buffer,
    its actor's mailbox and the socket are full; reading on lets the publisher go on, and every
    message arrives."""
    async with stalled_subscriber("block", subscriber_policy="block") as (cluster, _, r):
        published = 0

        async def publisher() -> None:
            nonlocal published
            for i in range(N):
                assert await publish(cluster, i) == 1
                published += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            with trio.fail_after(30):
                await wait_all_tasks_blocked(cushion=0.05)
            stalled = published
            assert stalled < SUB_BOUND, stalled
            with trio.fail_after(60):
                got = [data["body"]["i"] async for _, data in _events(r.aiter_lines(), N - 1)]
        assert got == list(range(N)) and published == N


async def test_drop_oldest_keeps_the_newest_and_tells_the_client_how_many_went() -> None:
    """``drop_oldest``, the gateway's default: the publisher never waits for the client; the
    buffer keeps the newest, the client is told how many it missed, and each missed message is
    a dead letter."""
    async with stalled_subscriber("") as (cluster, letters, r):  # no policy asked: the default
        with trio.fail_after(60):  # every publish done while the client reads nothing
            assert [await publish(cluster, i) for i in range(N)] == [1] * N
            await wait_all_tasks_blocked(cushion=0.05)
        got: list[int] = []
        dropped = 0
        with trio.fail_after(60):
            async for name, data in _events(r.aiter_lines(), N - 1):
                if name == "dropped":
                    dropped += data["dropped"]
                else:
                    got.append(data["body"]["i"])
        assert got == sorted(set(got)) and got[-1] == N - 1  # in order, the newest kept
        assert len(got) < SUB_BOUND and dropped + len(got) == N
        reasons = [letters.receive_nowait().reason for _ in range(dropped)]
        assert set(reasons) == {"dropped-oldest"}


async def test_drop_subscriber_ends_the_subscription_of_a_client_that_stops_reading() -> None:
    """``drop_subscriber``: a full buffer takes the subscription out of the broker at once (later
    publishes reach nobody); the client reads what was buffered, in order, then a 429 ``error``
    event and the end of the stream; what it never got is dead letters."""
    async with stalled_subscriber("drop_subscriber") as (cluster, letters, r):
        with trio.fail_after(60):
            deliveries = [await publish(cluster, i) for i in range(N)]
            await wait_all_tasks_blocked(cushion=0.05)
        taken = deliveries.count(1)
        assert deliveries == [1] * taken + [0] * (N - taken) and taken < SUB_BOUND
        got: list[int] = []
        errors: list[Any] = []
        with trio.fail_after(60):
            async for name, data in _events(r.aiter_lines(), N):
                (errors.append(data) if name == "error" else got.append(data["body"]["i"]))
        assert got == list(range(len(got))) and [e["code"] for e in errors] == [429]
        lost = [letters.receive_nowait() for _ in range(taken - len(got))]
        assert {letter.reason for letter in lost} == {"dropped-subscriber"}
        assert [letter.message.body["i"] for letter in lost] == list(range(len(got), taken))
