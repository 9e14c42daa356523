"""Metrics: what a node counts (always, and per endpoint when on), the snapshot, the Prometheus
exposition parsed with prometheus_client's parser, the OpenTelemetry instruments, /metrics over
HTTP, and a real `trimicro run --metrics` process scraped after real calls."""

from __future__ import annotations

import contextlib
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from procs import python_process
from prometheus_client.parser import text_string_to_metric_families

from trimicro.actors import Actor, BadRequest, Call, Forbidden, Next, NotFound, ask, start_node, tell
from trimicro.actors.actor import handler_table
from trimicro.actors.metrics import MAX_LABELS, EndpointRecorder, bump, node_snapshot
from trimicro.actors.middleware import Side
from trimicro.cluster import start_cluster
from trimicro.cluster.metrics import CATALOG, cluster_snapshot
from trimicro.cluster.metrics.http import parse_address, serve_metrics
from trimicro.cluster.metrics.prometheus import Exposition
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport import TcpTransport


class Shop(Actor):
    service_name = "Shop"

    def __init__(self) -> None:
        self.sold = 0

    async def buy(self, body: dict[str, Any]) -> dict[str, Any]:
        item = body.get("item")
        if item == "none":
            raise NotFound("no such item")
        if item == "crash":
            raise RuntimeError("a bug")
        if not item:
            raise BadRequest("item is required")
        self.sold += 1
        return {"ok": item}

    async def count(self, n: int) -> int:
        return self.sold + n


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` of ``family`` whose labels include ``labels``."""
    found = [s.value for s in fams[family].samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) == 1, (family, name, labels, fams[family].samples)
    return float(found[0])


async def _buy(ref: Any, item: str) -> None:
    with contextlib.suppress(BadRequest, NotFound):
        await ask(ref, {"item": item}, endpoint="Shop.buy")


# ---- the node's counters -----------------------------------------------------------------------


async def test_endpoint_counts_errors_by_code_and_latency() -> None:
    async with start_node(metrics=True) as node:
        ref = await node.spawn(Shop, name="shop")
        for item in ["a", "b", "c", "", "none", "none"]:
            await _buy(ref, item)
        assert await ask(ref, 1) == 4  # chosen by type: the same endpoint table
        snap = node_snapshot(node)
    by_name = {e["endpoint"]: e for e in snap["endpoints"]}
    assert set(by_name) == {"Shop.buy", "Shop.count"}
    buy = by_name["Shop.buy"]
    assert buy["requests"] == 6
    assert buy["errors"] == {"400": 1, "404": 2}
    assert sum(buy["buckets"]) == 6 and buy["sum"] > 0
    assert len(buy["buckets"]) == len(snap["bounds"]) + 1
    assert by_name["Shop.count"]["requests"] == 1 and by_name["Shop.count"]["errors"] == {}


async def test_an_untyped_exception_counts_as_500_and_a_failure_and_a_restart() -> None:
    restarted = trio.Event()

    class Restarting(Shop):
        service_name = "Shop"

        async def restarted(self, error: BaseException) -> None:
            restarted.set()  # the supervisor restarts it in a task of its own

    async with start_node(metrics=True) as node:
        ref = await node.spawn(Restarting, name="shop")
        with pytest.raises(Exception, match="a bug"):
            await ask(ref, {"item": "crash"}, endpoint="Shop.buy")
        with trio.fail_after(10):
            await restarted.wait()
        snap = node_snapshot(node)
    buy = next(e for e in snap["endpoints"] if e["endpoint"] == "Shop.buy")
    assert (buy["requests"], buy["errors"]) == (1, {"500": 1})
    assert (snap["failures"], snap["restarts"]) == (1, 1)


async def test_what_the_nodes_middleware_raises_counts_for_the_endpoint() -> None:
    """The recorder is outside the node's middleware: a refusal there is the endpoint's error."""

    async def deny(call: Call, call_next: Next) -> Any:
        if call.side is Side.SERVER:
            raise Forbidden("not here")
        return await call_next(call)

    async with start_node(metrics=True, middleware=[deny]) as node:
        ref = await node.spawn(Shop, name="shop")
        with pytest.raises(Forbidden):
            await ask(ref, 1)
        snap = node_snapshot(node)
    count = next(e for e in snap["endpoints"] if e["endpoint"] == "Shop.count")
    assert (count["requests"], count["errors"]) == (1, {"403": 1})


async def test_backlog_high_water_mark_is_what_waited_behind_a_served_message() -> None:
    async with start_node(metrics=True) as node:
        ref = await node.spawn(Shop, name="shop")
        for _ in range(50):  # queued without a yield in between (tell yields every 128)
            await tell(ref, 1)
        await ask(ref, 0)  # behind them: 51 in the mailbox when the first was taken
        snap = node_snapshot(node)
    count = next(e for e in snap["endpoints"] if e["endpoint"] == "Shop.count")
    assert count["backlog_max"] == 50
    service = next(s for s in snap["mailboxes"]["services"] if s["service"] == "Shop")
    assert (service["max"], service["queued"], service["deepest"]) == (50, 0, 0)


async def test_a_stuck_mailbox_is_seen_at_the_snapshot() -> None:
    """Messages nobody takes are no served message's backlog: the snapshot sees them itself."""
    gate = trio.Event()

    class Slow(Actor):
        async def wait(self, n: int) -> None:
            await gate.wait()

    async with start_node() as node:  # metrics off: the depths are read all the same
        ref = await node.spawn(Slow, name="slow")
        for _ in range(5):
            await tell(ref, 1)
        await trio.testing.wait_all_tasks_blocked()
        snap = node_snapshot(node)
        gate.set()
    assert snap["mailboxes"]["queued"] == 4  # one is being handled
    assert snap["mailboxes"]["deepest"] == [{"actor": "/user/slow", "depth": 4, "service": "Slow"}]
    assert snap["mailboxes"]["max"]["Slow"] == 4
    assert snap["mailboxes"]["services"] == [{"service": "Slow", "queued": 4, "deepest": 4, "max": 4}]
    assert not snap["endpoints_enabled"] and snap["endpoints"] == []


async def test_metrics_off_leaves_handler_tables_unwrapped_and_on_keeps_inline_handlers() -> None:
    async with start_node() as off, start_node(metrics=True) as on:
        assert off.metrics.endpoints is None
        assert off.handlers_for(Shop) is handler_table(Shop)  # no wrapper: nothing runs per call
        assert off.client_chain is None and on.client_chain is None  # never the caller's side
        wrapped = on.handlers_for(Shop)
        assert wrapped is not handler_table(Shop)
        assert len(wrapped.inline) == len(handler_table(Shop).inline) > 0


async def test_dead_letters_by_reason() -> None:
    async with start_node() as node:
        ref = await node.spawn(Shop, name="shop")
        await node.stop(ref)
        await tell(ref, 1)
        node.dead_letter(None, "x", "unreachable: connection closed by the peer", None)
        snap = node_snapshot(node)
    assert snap["dead_letters"] == {"total": 2, "reasons": {"stopped": 1, "unreachable": 1}}


def test_labelled_counts_are_bounded() -> None:
    counts: dict[str, int] = {}
    for i in range(MAX_LABELS + 10):
        bump(counts, f"reason-{i}: detail")
    assert len(counts) == MAX_LABELS + 1
    assert counts["other"] == 10 and counts["reason-0"] == 1


async def test_endpoints_are_bounded() -> None:
    recorder = EndpointRecorder(max_endpoints=2)
    classes = [type(f"A{i}", (Actor,), {"ping": _ping}) for i in range(4)]
    async with start_node(metrics=True) as node:
        node.metrics.endpoints = recorder  # read when a class is first spawned
        for cls in classes:
            ref = await node.spawn(cls)
            await ask(ref, {}, endpoint="ping")
    assert [(s.endpoint, s.requests) for s in recorder.stats()] == [
        ("A0.ping", 1),
        ("A1.ping", 1),
        ("other", 2),
    ]


async def _ping(self: Any, body: dict[str, Any]) -> int:
    return 1


async def test_links_and_their_bytes_are_counted(tmp_path: Path) -> None:
    authority, tcp = Authority.generate(), TcpTransport()
    a_id, b_id = NodeIdentity.issue("a", authority), NodeIdentity.issue("b", authority)
    async with (
        start_node("a", listen="127.0.0.1:0", transport=tcp, identity=a_id) as a,
        start_node("b", listen="127.0.0.1:0", transport=tcp, identity=b_id) as b,
    ):
        await b.spawn(Shop, name="shop")
        await a.connect(b.address or "")
        ref = a.remote_ref("b", "shop")
        for _ in range(10):
            await ask(ref, {"item": "x" * 1000}, endpoint="Shop.buy")
        snap = node_snapshot(a)
        assert snap["link_totals"]["opened"] == 1 and len(snap["links"]) == 1
        link = snap["links"][0]
        assert (link["peer"], link["direction"]) == ("b", "out")
        assert link["sent_bytes"] > 10_000 and link["received_bytes"] > 10_000  # the bodies, both ways
        assert snap["link_totals"]["sent_bytes"] == link["sent_bytes"]
        peer = a.remote.peers["b"]
        assert peer.link is not None
        peer.link.close("test")
        with trio.fail_after(10):
            while peer.links:  # the link's tasks end, then it leaves its peer
                await peer.wait_changed()
        after = node_snapshot(a)
    assert after["links"] == []
    assert after["link_totals"]["closed"] == 1
    assert after["link_totals"]["sent_bytes"] >= link["sent_bytes"]  # kept once the link is gone


# ---- the cluster's snapshot and the Prometheus exposition --------------------------------------


class Subscriber(Actor):
    async def on_message(self, msg: Any) -> None:
        pass


async def test_cluster_snapshot_in_prometheus_text() -> None:
    from trimicro.cluster.broker import Message

    Subscriber.on_message.__annotations__["msg"] = Message
    async with start_cluster("n1", registry="memory://", store="memory://", metrics=True) as cluster:
        await cluster.serve(Shop, name="shop")
        sub = await cluster.node.spawn(Subscriber, name="sub")
        await cluster.subscribe("orders.*", sub)
        before = cluster.retry.requests
        for item in ["a", "b", "", "none"]:
            with contextlib.suppress(BadRequest, NotFound):
                await cluster.call("shop", "Shop.buy", {"item": item})
        assert cluster.retry.requests - before == 4
        assert await cluster.publish("orders.new", {"id": 1}) == 1
        assert cluster.store is not None
        from trimicro.cluster.store import Record

        await cluster.store.write(Record("k", b"v"))
        await cluster.store.read("k")
        await cluster.store.list()
        text = Exposition(lambda: cluster_snapshot(cluster)).render()[0].decode()
        calls = cluster.retry.requests
    fams = families(text)
    assert set(fams) >= {m.prom.removesuffix("_total") for m in CATALOG}
    assert sample(fams, "trimicro_requests", "trimicro_requests_total", endpoint="Shop.buy") == 4
    errors = "trimicro_request_errors_total"
    assert sample(fams, "trimicro_request_errors", errors, endpoint="Shop.buy", code="400") == 1
    assert sample(fams, "trimicro_request_errors", errors, endpoint="Shop.buy", code="404") == 1
    hist = "trimicro_request_duration_seconds"
    assert sample(fams, hist, hist + "_count", endpoint="Shop.buy") == 4
    assert sample(fams, hist, hist + "_bucket", endpoint="Shop.buy", le="+Inf") == 4
    assert sample(fams, "trimicro_pubsub_deliveries", "trimicro_pubsub_deliveries_total") == 1
    assert sample(fams, "trimicro_requests", "trimicro_requests_total", endpoint="Subscriber.on_message") == 1
    ops = "trimicro_store_operations_total"
    for op in ("read", "write", "list"):
        assert sample(fams, "trimicro_store_operations", ops, operation=op) == 1
    assert sample(fams, "trimicro_selector_calls", "trimicro_selector_calls_total") == calls
    assert sample(fams, "trimicro_members", "trimicro_members", state="alive") == 1
    assert sample(fams, "trimicro_node_info", "trimicro_node_info", node="n1") == 1
    assert fams[hist].type == "histogram" and fams["trimicro_requests"].type == "counter"


async def test_openmetrics_when_the_scraper_asks() -> None:
    async with start_node(metrics=True) as node:
        body, content_type = Exposition(lambda: node_snapshot(node) | {"selector": None}).render(
            "application/openmetrics-text; version=1.0.0"
        )
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# ---- OpenTelemetry -----------------------------------------------------------------------------


def _otel_points(reader: Any) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    return points


async def test_opentelemetry_instruments_on_the_users_meter_provider() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with start_cluster("n1", registry="memory://", meter_provider=provider) as cluster:
        await cluster.serve(Shop, name="shop")
        for item in ["a", "b", "c", ""]:
            with contextlib.suppress(BadRequest):
                await cluster.call("shop", "Shop.buy", {"item": item})
        points = _otel_points(reader)  # collected on this (trio) thread
        threaded = await trio.to_thread.run_sync(_otel_points, reader)  # a reader's own thread
        actors = len(cluster.node)
    try:
        rpc = {"rpc.system": "trimicro", "rpc.service": "Shop", "rpc.method": "buy"}  # RPC conventions
        for got in (points, threaded):
            requests = [(dict(p.attributes), p.value) for p in got["trimicro.requests"]]
            assert (rpc, 4) in requests
            errors = [(dict(p.attributes), p.value) for p in got["trimicro.request.errors"]]
            assert errors == [({**rpc, "error.type": "400", "rpc.trimicro.error_code": 400}, 1)]
        duration = [p for p in points["trimicro.request.duration"] if dict(p.attributes) == rpc]
        assert duration[0].count == 4
        assert list(duration[0].explicit_bounds) == list(EndpointRecorder().bounds)
        assert [p.value for p in points["trimicro.actors"]] == [actors]
        # Once the node is gone its instruments report nothing (a provider cannot drop them).
        assert "trimicro.requests" not in _otel_points(reader)
    finally:
        provider.shutdown()


# ---- /metrics over HTTP ------------------------------------------------------------------------


def test_metrics_addresses() -> None:
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("", "host", "127.0.0.1:x", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


async def test_a_bad_address_or_missing_extra_fails_before_the_node_starts() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        async with start_cluster("n1", registry="memory://", metrics="nope"):
            pass  # pragma: no cover


async def test_the_http_endpoint_answers_only_metrics_and_stays_bounded() -> None:
    from trimicro.cluster.metrics import http

    def render(accept: str) -> tuple[bytes, str]:
        return b"x 1\n", "text/plain; version=0.0.4"

    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_metrics, "127.0.0.1:0", render)
        assert address.startswith("127.0.0.1:")
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            ok = await client.get("/metrics?x=1")
            assert (ok.status_code, ok.text, ok.headers["connection"]) == (200, "x 1\n", "close")
            assert (await client.head("/metrics")).headers["content-length"] == "4"
            assert (await client.get("/")).status_code == 404
            assert (await client.post("/metrics", content=b"x")).status_code == 405
            big = await client.get("/metrics", headers={"x-big": "y" * (2 * http.MAX_HEAD)})
            assert big.status_code == 431
        # Past MAX_CONNECTIONS idle connections, a new one is closed unanswered.
        host, port = address.rsplit(":", 1)
        idle = [await trio.open_tcp_stream(host, int(port)) for _ in range(http.MAX_CONNECTIONS)]
        extra = await trio.open_tcp_stream(host, int(port))
        with trio.fail_after(10):
            assert await extra.receive_some(100) == b""
        for stream in idle:
            await stream.aclose()
        await extra.aclose()
        nursery.cancel_scope.cancel()


async def test_a_failing_render_is_a_500_and_scrapes_share_one_render_a_second(caplog: Any) -> None:
    """A render that raises answers 500 (logged) and the server goes on; scrapes within
    ``max_age`` of a render get its document, per Accept header, without rendering again."""
    renders: list[str] = []

    def render(accept: str) -> tuple[bytes, str]:
        renders.append(accept)
        if len(renders) == 1:
            raise RuntimeError("a bug in a snapshot")
        return f"x {len(renders)}\n".encode(), "text/plain; version=0.0.4"

    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_metrics, max_age=3600.0), "127.0.0.1:0", render)
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            failed = await client.get("/metrics")
            assert failed.status_code == 500 and "a bug" not in failed.text
            assert "rendering /metrics failed" in caplog.text
            first = await client.get("/metrics")
            again = await client.get("/metrics")
            assert (first.status_code, first.text, again.text) == (200, "x 2\n", "x 2\n")
            other = await client.get("/metrics", headers={"accept": "application/openmetrics-text"})
            assert other.text == "x 3\n" and len(renders) == 3
        nursery.cancel_scope.cancel()


# ---- a real `trimicro run --metrics` process ---------------------------------------------------

MODULE = """
from trimicro.actors import Actor, BadRequest, NotFound


class Shop(Actor):
    service_name = "Shop"

    async def buy(self, body: dict) -> dict:
        if body.get("item") == "none":
            raise NotFound("no such item")
        if not body.get("item"):
            raise BadRequest("item is required")
        return {"ok": body["item"]}
"""


async def test_scrape_a_trimicro_run_process_after_real_calls(tmp_path: Path) -> None:
    module = tmp_path / "shop_service.py"
    module.write_text(MODULE)
    argv = ["-m", "trimicro.cluster.cli", "--home", str(tmp_path), "run", str(module), "--name", "shop-node"]
    argv += ["--registry", "memory://", "--metrics", "127.0.0.1:0"]
    async with (
        python_process(*argv, stderr=sys.stderr) as proc,
        start_node("caller", home=tmp_path) as node,
    ):
        with trio.fail_after(60):
            first, ready = await proc.line(), await proc.line()
        assert first.startswith("metrics at http://127.0.0.1:") and first.endswith("/metrics"), first
        assert ready.startswith("node shop-node at "), ready
        await node.connect(ready.split(" at ", 1)[1].split(" ", 1)[0])
        shop = node.remote_ref("shop-node", "shop")
        items = ["a", "b", "c", "d", "e", "f", "g", "", "", "none"]  # 7 ok, 2 x 400, 1 x 404
        for item in items:
            await _buy(shop, item)
        async with httpx.AsyncClient() as client:
            response = await client.get(first.split(" ", 2)[2])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = families(response.text)
    assert sample(fams, "trimicro_requests", "trimicro_requests_total", endpoint="Shop.buy") == len(items)
    errors = "trimicro_request_errors_total"
    assert sample(fams, "trimicro_request_errors", errors, endpoint="Shop.buy", code="400") == 2
    assert sample(fams, "trimicro_request_errors", errors, endpoint="Shop.buy", code="404") == 1
    hist = "trimicro_request_duration_seconds"
    assert sample(fams, hist, hist + "_count", endpoint="Shop.buy") == len(items)
    assert sample(fams, hist, hist + "_bucket", endpoint="Shop.buy", le="+Inf") == len(items)
    assert sample(fams, "trimicro_links", "trimicro_links") == 1  # the caller's link
    assert sample(fams, "trimicro_link_received_bytes", "trimicro_link_received_bytes_total") > 0
    assert sample(fams, "trimicro_node_info", "trimicro_node_info", node="shop-node") == 1


async def test_error_codes_outside_http_ranges_share_one_label() -> None:
    """A code a peer sent can be any int (a handler that lets a downstream error through): each
    would be a label and a Prometheus series of its own, so only 100-599 keep theirs."""

    class Relay(Shop):
        service_name = "Relay"

        async def buy(self, order: dict[str, str]) -> dict[str, str]:
            raise MicroError("from downstream", id="relay", code=int(order["item"]))

    async with start_node(metrics=True) as node:
        ref = await node.spawn(Relay, name="relay")
        for code in ["1000", "1001", "99", "503", "1002"]:
            with contextlib.suppress(MicroError):
                await ask(ref, {"item": code}, endpoint="Relay.buy")
        snap = node_snapshot(node)
    buy = next(e for e in snap["endpoints"] if e["endpoint"] == "Relay.buy")
    assert buy["errors"] == {"500": 4, "503": 1}


async def test_only_scope_admin_reads_a_nodes_snapshot_over_the_wire(tmp_path: Path) -> None:
    """A snapshot names actors' paths and peers: another node's own account and a user without
    scope ``admin`` are refused (403) even under the default rule (anything granted); an admin's
    token reads it."""
    from test_auth import bearer, cluster_of, login

    from trimicro.cluster.metrics import METRICS_PATH

    async with cluster_of(tmp_path, 2) as (a, b):
        guest = await login(a, "guest", ["ops"])
        admin = await login(a, "root", ["admin"])
        ref = b.node.remote_ref(a.node.id, METRICS_PATH)
        for headers in (None, bearer(guest)):
            with pytest.raises(Forbidden):
                await ask(ref, None, endpoint="Metrics.snapshot", timeout=10, headers=headers)
        snapshot = await ask(ref, None, endpoint="Metrics.snapshot", timeout=10, headers=bearer(admin))
        assert snapshot["node"] == a.node.id
