"""The HTTP gateway against services in this process: calls, errors, negotiation, bounds,
streams over SSE and WebSocket, pub/sub, health and the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import cbor2
import httpx
import msgpack
import pytest
import trio
import wsproto
import wsproto.events as ws
from gateway_services import Order, Receipt, Shop
from openapi_spec_validator import validate

from trimicro.actors import BadRequest
from trimicro.cluster import start_cluster
from trimicro.cluster.gateway import Gateway, GatewayOptions, open_gateway
from trimicro.cluster.gateway.headers import call_headers
from trimicro.cluster.gateway.subscriptions import choose_policy
from trimicro.cluster.registry import MemoryRegistry
from trimicro.mailbox.codec import TypeRegistry

ERROR_KEYS = {"id", "code", "detail", "status"}


@asynccontextmanager
async def gateway(**options: Any) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient, Any]]:
    async with start_cluster("gw", registry=MemoryRegistry(), store="", auth=False) as cluster:
        ref = await cluster.serve(Shop)
        opts = GatewayOptions(address="127.0.0.1:0", refresh=0.2, **options)
        async with open_gateway(cluster, opts) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
            yield gw, http, ref.binding.instance


async def test_call_both_spellings_and_errors_as_go_micro_json() -> None:
    async with gateway() as (_, http, _):
        for path in ("/api/shop/Shop.buy", "/api/shop/buy", "/api/shop/Shop/buy"):
            r = await http.post(path, json={"item": "tea", "qty": 2})
            assert (r.status_code, r.json()) == (200, {"item": "tea", "qty": 2}), path
        r = await http.post("/api/shop/buy", json={"item": "tea", "qty": "x"})
        assert r.status_code == 400 and r.json()["code"] == 400
        assert "body.qty" in r.json()["detail"]
        assert set(r.json()) == {"id", "code", "detail", "status"}
        # JSON Schema's "integer", which the document gives qty, admits 2.0: so does the service.
        r = await http.post("/api/shop/buy", json={"item": "tea", "qty": 2.0})
        assert (r.status_code, r.json()) == (200, {"item": "tea", "qty": 2})
        assert (await http.post("/api/shop/buy", json={"item": "tea", "qty": 2.5})).status_code == 400
        r = await http.post("/api/shop/buy", json={"item": "tea", "qty": 0})
        assert r.status_code == 400 and "'qty' must be > 0" in r.json()["detail"]  # Order's validator
        assert (await http.post("/api/nosuch/X.y", json={})).status_code == 404
        assert (await http.post("/api/shop/Shop.nosuch", json={})).status_code == 404
        r = await http.post(
            "/api/shop/buy", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        # Paths no route takes, and a method a route lacks: Go Micro's error JSON as well.
        for method, path, status in (
            ("GET", "/nowhere", 404),
            ("POST", "/api/shop/Shop.buy%0A", 404),  # the whole path names the endpoint, or none
            ("GET", "/api/shop/Shop.buy", 405),
        ):
            r = await http.request(method, path)
            assert r.status_code == status and r.headers["content-type"].startswith("application/json")
            assert r.json()["code"] == status and set(r.json()) == {"id", "code", "detail", "status"}


async def test_msgpack_and_cbor_by_content_type_and_accept() -> None:
    async with gateway() as (_, http, _):
        body = msgpack.packb({"item": "tea", "qty": 1})
        r = await http.post("/api/shop/buy", content=body, headers={"content-type": "application/msgpack"})
        assert r.headers["content-type"] == "application/msgpack"
        assert msgpack.unpackb(r.content) == {"item": "tea", "qty": 1}
        r = await http.post(
            "/api/shop/buy", json={"item": "tea", "qty": 1}, headers={"accept": "application/cbor"}
        )
        assert r.headers["content-type"] == "application/cbor"
        assert cbor2.loads(r.content) == {"item": "tea", "qty": 1}
        # Map keys are strings only (integers' hashes are not randomised: colliding keys would
        # make decoding quadratic on the node's one thread), and CBOR is checked before decoding.
        colliding = {k * (2**61 - 1): 0 for k in range(1, 200)}
        for content_type, body in (
            ("application/cbor", cbor2.dumps(colliding)),
            ("application/msgpack", msgpack.packb({k % 2**63: 0 for k in colliding})),
        ):
            r = await http.post("/api/shop/buy", content=body, headers={"content-type": content_type})
            assert r.status_code == 400 and "map key" in r.json()["detail"], (content_type, r.text)


async def test_bodies_are_bounded_and_timeout_header_is_the_deadline() -> None:
    async with gateway(max_body=1024) as (_, http, _):
        r = await http.post("/api/shop/buy", content=b"x" * 2048)
        assert r.status_code == 413 and r.json()["code"] == 413
        r = await http.post("/api/shop/slow", json={"seconds": 5}, headers={"timeout": "0.2"})
        assert r.status_code == 408
        for bad in ("soon", "0", "1e3", "-1", "inf"):  # what the document's pattern refuses
            r = await http.post("/api/shop/slow", json={"seconds": 0}, headers={"timeout": bad})
            assert r.status_code == 400, bad
        r = await http.post("/api/shop/slow", json={"seconds": 0}, headers={"timeout": ""})
        assert r.status_code == 200  # empty: the default deadline


async def test_headers_follow_the_metadata_rule() -> None:
    async with gateway() as (_, http, _):
        r = await http.post(
            "/api/shop/headers",
            json={},
            headers={"authorization": "Bearer t0k", "x-tenant": "acme", "cookie": "s=1", "timeout": "5"},
        )
        seen = r.json()
        assert seen["authorization"] == "Bearer t0k" and seen["x-tenant"] == "acme"
        assert not {"cookie", "timeout", "content-type", "user-agent", "host"} & set(seen)
    many = [(f"x-{i}", "v") for i in range(100)]
    assert len(call_headers(many) or {}) == 32


async def test_client_disconnect_cancels_the_call() -> None:
    async with gateway() as (_, http, shop):
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/api/shop/slow", json={"seconds": 30}, timeout=0.3)
        with trio.fail_after(10):
            await shop.cancelled.wait()


async def test_stream_as_server_sent_events() -> None:
    async with gateway() as (_, http, _):
        events = []
        headers = {"accept": "text/event-stream"}
        async with http.stream("POST", "/api/shop/count", json={"n": 3}, headers=headers) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert events == [0, 1, 2, None]
        r = await http.post("/api/shop/count", json={"n": 1})
        assert r.status_code == 400  # a stream needs SSE or a WebSocket


async def test_a_stream_that_fails_midway_ends_with_an_error_event() -> None:
    """The status line has gone out when the service fails: the failure is a last ``error``
    event carrying Go Micro's error fields, and the stream ends (the bridge does not crash)."""
    async with gateway() as (_, http, _):
        events: list[tuple[str, Any]] = []
        name = "message"
        headers = {"accept": "text/event-stream"}
        async with http.stream("POST", "/api/shop/count", json=["not", "a", "map"], headers=headers) as r:
            assert r.status_code == 200
            with trio.fail_after(10):
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        events.append((name, json.loads(line[6:])))
        assert [(n, set(d), d["code"]) for n, d in events] == [("error", ERROR_KEYS, 500)]


async def _websocket(url: str, path: str) -> tuple[trio.SocketStream, wsproto.WSConnection]:
    host, port = url.removeprefix("http://").split(":")
    sock = await trio.open_tcp_stream(host, int(port))
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await sock.send_all(conn.send(ws.Request(host=host, target=path)))
    return sock, conn


async def _ws_events(sock: trio.SocketStream, conn: wsproto.WSConnection) -> AsyncIterator[Any]:
    while True:
        data = await sock.receive_some()
        conn.receive_data(data or None)
        for event in conn.events():
            yield event
        if not data:
            return


async def test_bidirectional_stream_over_websocket() -> None:
    async with gateway() as (gw, _, _):
        sock, conn = await _websocket(gw.url, "/api/shop/count?request=" + quote(json.dumps({"n": 1})))
        got: list[Any] = []
        with trio.fail_after(10):
            async for event in _ws_events(sock, conn):
                if isinstance(event, ws.AcceptConnection):
                    await sock.send_all(conn.send(ws.Message(data='"hi"')) + conn.send(ws.Message(data="")))
                elif isinstance(event, ws.TextMessage):
                    got.append(json.loads(event.data))
                elif isinstance(event, ws.CloseConnection):
                    assert event.code == 1000
                    break
        await sock.aclose()
        assert got == [0, {"echo": "hi"}]


async def test_a_binary_websocket_frame_is_answered_with_error_json() -> None:
    async with gateway() as (gw, _, _):
        sock, conn = await _websocket(gw.url, "/api/shop/count?request=" + quote(json.dumps({"n": 1})))
        errors: list[Any] = []
        with trio.fail_after(10):
            async for event in _ws_events(sock, conn):
                if isinstance(event, ws.AcceptConnection):
                    await sock.send_all(conn.send(ws.Message(data=b"\x00binary")))
                elif isinstance(event, ws.TextMessage):
                    value = json.loads(event.data)
                    if isinstance(value, dict) and "error" in value:
                        errors.append(value["error"])
                elif isinstance(event, ws.CloseConnection):
                    break
        await sock.aclose()
        assert [e["code"] for e in errors] == [400] and "text frames" in errors[0]["detail"]


async def test_publish_and_subscribe_over_sse() -> None:
    async with gateway() as (_, http, _):
        got: list[Any] = []
        async with trio.open_nursery() as nursery, http.stream("GET", "/api/subscribe/orders.>") as r:
            assert r.status_code == 200

            async def publish() -> None:
                while not got:
                    await http.post("/api/publish/orders.new", json={"id": 7})
                    await trio.sleep(0.05)  # repeats until the subscription is in place (no sync point)

            nursery.start_soon(publish)
            with trio.fail_after(10):
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        got.append(json.loads(line[6:]))
                        break
            nursery.cancel_scope.cancel()
        assert got[0]["topic"] == "orders.new" and got[0]["body"] == {"id": 7}


async def test_a_topic_the_broker_refuses_is_400_and_never_published() -> None:
    """The topic is the whole path, judged by the broker's subject syntax: whitespace (a newline
    at the end, which a ``$`` in the route's pattern would have cut off silently, or inside,
    which ``.`` would not have matched), control and format characters (which the broker's
    syntax, whitespace aside, lets through), empty tokens, wildcards."""
    async with gateway() as (gw, http, _):
        bad = (
            *("orders.new%0A", "orders%0Anew", "orders%20new", "1%0E%0A%C3%B6%C2%BF", "a..b", "orders.*"),
            *("orders.%00", "orders%0Enew", "orders.%7F", "a%E2%80%AEb", ".a", "a.", ""),  # no whitespace
        )
        async with gw.state.cluster.pubsub.messages("orders.>") as seen:
            for topic in bad:
                r = await http.post(f"/api/publish/{topic}", json={"id": 1})
                assert r.status_code == 400 and r.headers["content-type"] == "application/json", topic
                assert set(r.json()) == ERROR_KEYS and r.json()["code"] == 400
            r = await http.post("/api/publish/orders.new", json={"id": 2})
            assert r.json() == {"topic": "orders.new", "deliveries": 1}
            with trio.fail_after(10):
                first = await seen.receive()
        assert (first.topic, first.body) == ("orders.new", {"id": 2})  # none of the bad ones got out
        for path in (
            *("/api/subscribe/orders.%0A", "/api/subscribe/orders.%0E", "/api/subscribe/orders..>"),
            *("/api/subscribe/%E2%80%8Borders.>", "/api/subscribe/orders.>?policy=sometimes"),
            "/api/subscribe/orders.>?policy=block",  # not on a gateway whose default drops
        ):
            r = await http.get(path)
            assert r.status_code == 400 and r.json()["code"] == 400, path
    # The operator's default decides whether a client may hold publishers back at all.
    assert choose_policy(None, "block") == "block" and choose_policy("drop_oldest", "block") == "drop_oldest"
    assert choose_policy(None, "drop_subscriber") == "drop_subscriber"
    with pytest.raises(BadRequest):
        choose_policy("block", "drop_oldest")


async def test_health_and_a_valid_openapi_document() -> None:
    async with gateway() as (gw, http, _):
        assert (await http.get("/health/live")).status_code == 200
        await gw.state.refresh()  # the first registry answer makes it ready
        assert (await http.get("/health/ready")).status_code == 200
        doc = (await http.get("/openapi.json")).json()
        validate(doc)
        op = doc["paths"]["/api/shop/Shop.buy"]["post"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        # The service's node describes Order, its validator included (a registry name alone
        # would say only "integer").
        assert schema["properties"]["qty"] == {"type": "integer", "exclusiveMinimum": 0}
        assert schema["required"] == ["item", "qty"]
        assert "200" in op["responses"] and "400" in op["responses"]
        stream = doc["paths"]["/api/shop/Shop.count"]["post"]
        assert "text/event-stream" in stream["responses"]["200"]["content"]
        page = await http.get("/docs")
        assert page.status_code == 200 and "openapi.json" in page.text


async def test_openapi_carries_full_schemas_fetched_from_the_service_node() -> None:
    """The service runs on another node: the registry names only ``Cart``; the gateway asks the
    node for the full schema (nested attrs classes with their fields) and documents it."""
    registry = MemoryRegistry()

    def types() -> TypeRegistry:  # an attrs reply crosses nodes only as a registered type
        reg = TypeRegistry()
        for cls in (Order, Receipt):
            reg.register(cls)
        return reg

    async with (
        start_cluster("svc", registry=registry, store="", auth=False, types=types()) as svc,
        start_cluster("gw", registry=registry, store="", auth=False, types=types()) as gw_node,
    ):
        await svc.serve(Shop)
        opts = GatewayOptions(address="127.0.0.1:0", refresh=0.2)
        async with open_gateway(gw_node, opts) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
            doc = (await http.get("/openapi.json")).json()
            validate(doc)
            op = doc["paths"]["/api/shop/Shop.checkout"]["post"]
            request = op["requestBody"]["content"]["application/json"]["schema"]
            order = request["properties"]["orders"]["items"]
            assert order["properties"]["qty"] == {"type": "integer", "exclusiveMinimum": 0}
            assert order["required"] == ["item", "qty"] and order["additionalProperties"] is False
            assert request["required"] == ["orders"]  # coupon has a default
            response = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert response["properties"]["lines"]["items"]["title"] == "Order"
            r = await http.post("/api/shop/checkout", json={"orders": [{"item": "tea", "qty": 2}]})
            assert r.status_code == 200, r.text
            assert r.json() == {"total": 2, "lines": [{"item": "tea", "qty": 2, "note": None}]}, r.text


class GatedRegistry(MemoryRegistry):
    """A registry whose listing waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def list_services(self, *args: Any, **kwargs: Any) -> Any:
        await self.gate.wait()
        return await super().list_services(*args, **kwargs)


async def test_ready_only_once_the_registry_has_answered() -> None:
    registry = GatedRegistry()
    async with (
        start_cluster("gw", registry=registry, store="", auth=False) as cluster,
        open_gateway(cluster, GatewayOptions(address="127.0.0.1:0")) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=10) as http,
    ):
        assert (await http.get("/health/live")).status_code == 200
        r = await http.get("/health/ready")
        assert (r.status_code, r.json()["status"]) == (503, "starting")
        registry.gate.set()
        with trio.fail_after(10):
            await gw.state.refresh()  # the registry's first answer
        r = await http.get("/health/ready")
        assert (r.status_code, r.json()["status"]) == (200, "ready"), r.json()
