"""Traces in one process: spans of calls and handlers, local and across nodes, with the OTel SDK.

Each node gets its own SDK ``TracerProvider`` (``start_node(tracing=provider)``), whose spans go
to an in-memory exporter; the global provider is never set, so the tests do not leak into each
other. Across real processes: tests/test_tracing_process.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from trimicro.actors import (
    Actor,
    ActorRef,
    Node,
    NotFound,
    ServiceUnavailable,
    Stream,
    ask,
    open_stream,
    start_node,
    tell,
    try_tell,
)
from trimicro.actors.actor import handler_table
from trimicro.actors.middleware import Retry
from trimicro.actors.supervision import Backoff
from trimicro.actors.tracing import node_tracing
from trimicro.actors.tracing.middleware import drops_unsampled
from trimicro.cluster import RetryPolicy, idempotent, start_cluster
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import Cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.plugins import PluginError
from trimicro.cluster.registry import MemoryRegistry
from trimicro.cluster.tracing import configure, exporter_names
from trimicro.mailbox.codec import TypeRegistry
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport import TcpTransport

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


class Spans:
    """A provider whose finished spans can be read back."""

    def __init__(self, sampler: Any = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def all(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all if s.name == name]

    def one(self, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        found = [s for s in self.named(name) if kind is None or s.kind is kind]
        assert len(found) == 1, (name, kind, [(s.name, s.kind) for s in self.all])
        return found[0]


def sid(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert parent_of(child) == sid(parent), (child.name, parent.name)
    assert child.context is not None and parent.context is not None
    assert child.context.trace_id == parent.context.trace_id


def assert_within(inner: ReadableSpan, outer: ReadableSpan) -> None:
    assert outer.start_time is not None and inner.start_time is not None
    assert outer.end_time is not None and inner.end_time is not None
    assert outer.start_time <= inner.start_time <= inner.end_time <= outer.end_time, (inner.name, outer.name)


@pytest.fixture
def spans() -> Spans:
    return Spans()


REGISTRY = TypeRegistry()


@REGISTRY.message("tracing.Ping")
@attrs.frozen
class Ping:
    n: int


class Echo(Actor):
    """Answers, remembering the span it ran in (the current span inside the handler)."""

    service_name = "Echo"

    def __init__(self, seen: list[Any] | None = None) -> None:
        self.seen = seen if seen is not None else []

    async def ping(self, msg: Ping) -> int:
        self.seen.append(trace.get_current_span().get_span_context())
        return msg.n

    async def hello(self, body: dict[str, Any]) -> str:
        self.seen.append(trace.get_current_span().get_span_context())
        return "hi"

    async def missing(self, body: dict[str, Any]) -> None:
        raise NotFound("no such thing")

    async def broken(self, body: dict[str, Any]) -> None:
        raise RuntimeError("a bug")

    async def count(self, stream: Stream) -> None:
        for i in range(3):
            await stream.send(i)

    async def headers(self, body: dict[str, Any]) -> dict[str, str]:
        return dict(self.context.headers)


class Front(Actor):
    """Asks ``back`` while handling, so the second call is nested in the first."""

    service_name = "Front"

    def __init__(self, back: ActorRef) -> None:
        self.back = back

    async def relay(self, body: dict[str, Any]) -> Any:
        return await ask(self.back, body, endpoint="Echo.hello")

    async def look(self, body: dict[str, Any]) -> Any:
        return await ask(self.back, body, endpoint="Echo.headers")


@asynccontextmanager
async def two_nodes(**options: Any) -> AsyncIterator[tuple[Node, Node]]:
    authority, transport = Authority.generate(), TcpTransport()

    def start(name: str) -> Any:
        identity = NodeIdentity.issue(name, authority)
        return start_node(
            name, listen="127.0.0.1:0", transport=transport, identity=identity, registry=REGISTRY, **options
        )

    async with start("a") as a, start("b") as b:
        assert b.address is not None
        await a.connect(b.address)
        yield a, b


# ---- no SDK: nothing installed -------------------------------------------------------------------


async def test_without_an_sdk_a_node_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert node_tracing(None, "n") is None  # the API's proxy provider: nothing set globally
    assert node_tracing(NoOpTracerProvider(), "n") is None
    assert node_tracing(False, "n") is None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert node_tracing(TracerProvider(shutdown_on_exit=False), "n") is None
    async with start_node() as node:
        assert node.tracing is None and node.client_chain is None  # the calls' fast paths
        assert node.handlers_for(Echo) is handler_table(Echo)  # the plain handlers, inline ones too


def test_a_process_without_an_sdk_never_imports_opentelemetry() -> None:
    script = (
        "import sys, trio\n"
        "from trimicro.actors import Actor, ask, start_node\n"
        "import trimicro.cluster\n"
        "class A(Actor):\n"
        "    async def on(self, m: int) -> int:\n"
        "        return m\n"
        "async def main():\n"
        "    async with start_node() as node:\n"
        "        assert await ask(await node.spawn(A), 1) == 1\n"
        "trio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---- spans of calls and handlers -----------------------------------------------------------------


async def test_a_local_ask_is_a_client_span_and_its_handler_a_server_span_current_inside(
    spans: Spans,
) -> None:
    seen: list[Any] = []
    async with start_node("n", tracing=spans.provider) as node:
        ref = await node.spawn(Echo, seen, name="echo")
        assert await ask(ref, Ping(3)) == 3
    client, server = spans.one("Ping", SpanKind.CLIENT), spans.one("Echo/Ping", SpanKind.SERVER)
    assert client.parent is None
    assert_child(server, client)
    assert_within(server, client)
    assert seen == [server.context]  # the handler ran with its span as the current one
    assert server.attributes is not None and client.attributes is not None
    assert dict(server.attributes) == {
        "rpc.system": "trimicro",
        "rpc.service": "Echo",
        "rpc.method": "Ping",
        "rpc.trimicro.actor": "/user/echo",
        "rpc.trimicro.node": "n",
    }
    assert client.attributes["rpc.method"] == "Ping" and "rpc.service" not in client.attributes
    assert "server.address" not in client.attributes  # a local call
    assert server.status.status_code is StatusCode.UNSET


async def test_a_trace_continues_across_nodes_through_nested_calls(spans: Spans) -> None:
    seen: list[Any] = []
    async with two_nodes(tracing=spans.provider) as (a, b):
        await b.spawn(Echo, seen, name="echo")
        front = await a.spawn(Front, a.remote_ref("b", "echo"), name="front")
        assert await ask(front, {}, endpoint="Front.relay") == "hi"
        port = int(b.address.rsplit(":", 1)[1]) if b.address else 0
    outer_client = spans.one("Front/relay", SpanKind.CLIENT)
    outer_server = spans.one("Front/relay", SpanKind.SERVER)
    inner_client = spans.one("Echo/hello", SpanKind.CLIENT)
    inner_server = spans.one("Echo/hello", SpanKind.SERVER)
    assert_child(outer_server, outer_client)
    assert_child(inner_client, outer_server)  # the nested call: a child of the handler's span
    assert_child(inner_server, inner_client)  # ... and across the wire
    assert_within(inner_server, inner_client)
    assert_within(inner_client, outer_server)
    assert_within(outer_server, outer_client)
    assert seen == [inner_server.context]
    assert inner_client.attributes is not None and inner_server.attributes is not None
    assert (
        inner_client.attributes["rpc.service"] == "Echo" and inner_client.attributes["rpc.method"] == "hello"
    )
    assert inner_client.attributes["server.address"] == "127.0.0.1"
    assert inner_client.attributes["server.port"] == port
    assert inner_client.attributes["rpc.trimicro.node"] == "b"
    assert inner_server.attributes["rpc.trimicro.node"] == "b"
    assert inner_server.attributes["rpc.trimicro.caller"] == "a/user/front#2"


async def test_a_tell_is_a_producer_span_and_its_handling_a_consumer_child(spans: Spans) -> None:
    seen: list[Any] = []
    async with two_nodes(tracing=spans.provider) as (a, b):
        await b.spawn(Echo, seen, name="echo")
        ref = a.remote_ref("b", "echo")
        await tell(ref, Ping(1))
        assert await ask(ref, Ping(3)) == 3  # the tell before it was handled (one link, in order)
        local = await a.spawn(Echo, seen)
        assert try_tell(local, Ping(2))  # (its chain runs synchronously)
        assert await ask(local, Ping(3)) == 3
    producers = [s for s in spans.named("Ping") if s.kind is SpanKind.PRODUCER]
    consumers = [s for s in spans.named("Echo/Ping") if s.kind is SpanKind.CONSUMER]
    assert len(producers) == len(consumers) == 2
    for producer, consumer in zip(producers, consumers, strict=True):
        assert_child(consumer, producer)
    assert [c.context for c in consumers] == [seen[0], seen[2]]  # (the asks ran in between)


async def test_a_stream_span_lasts_until_the_stream_is_over(spans: Spans) -> None:
    async with two_nodes(tracing=spans.provider) as (a, b):
        await b.spawn(Echo, name="echo")
        async with open_stream(a.remote_ref("b", "echo"), "Echo.count") as stream:
            assert [item async for item in stream] == [0, 1, 2]
    client, server = spans.one("Echo/count", SpanKind.CLIENT), spans.one("Echo/count", SpanKind.SERVER)
    assert_child(server, client)
    assert_within(server, client)


async def test_errors_carry_the_go_micro_code(spans: Spans) -> None:
    async with two_nodes(tracing=spans.provider) as (a, b):
        await b.spawn(Echo, name="echo")
        ref = a.remote_ref("b", "echo")
        with pytest.raises(NotFound):
            await ask(ref, {}, endpoint="Echo.missing")
        with pytest.raises(Exception) as failed:
            await ask(ref, {}, endpoint="Echo.broken")
        assert getattr(failed.value, "code", None) == 500
    client, server = spans.one("Echo/missing", SpanKind.CLIENT), spans.one("Echo/missing", SpanKind.SERVER)
    for span in (client, server):
        assert span.attributes is not None
        assert span.attributes["rpc.trimicro.error_code"] == 404
        assert span.attributes["error.type"] == "404"
    assert client.status.status_code is StatusCode.ERROR
    assert server.status.status_code is StatusCode.UNSET  # the caller's mistake, not the server's
    client, server = spans.one("Echo/broken", SpanKind.CLIENT), spans.one("Echo/broken", SpanKind.SERVER)
    assert server.status.status_code is StatusCode.ERROR and client.status.status_code is StatusCode.ERROR
    assert server.attributes is not None and client.attributes is not None
    assert server.attributes["error.type"] == "builtins.RuntimeError"
    assert [e.name for e in server.events] == ["exception"]
    assert client.attributes["rpc.trimicro.error_code"] == 500


async def test_each_attempt_of_the_retry_middleware_is_a_span(spans: Spans) -> None:
    attempts: list[int] = []

    class Flaky(Actor):
        async def work(self, body: dict[str, Any]) -> str:
            attempts.append(1)
            if len(attempts) < 3:
                raise ServiceUnavailable("busy")
            return "done"

    retry = Retry(attempts=3, backoff=Backoff(min_delay=0.001, max_delay=0.002))
    tracer = spans.provider.get_tracer("test")
    async with start_node("n", tracing=spans.provider) as node:
        ref = await node.spawn(Flaky)
        with tracer.start_as_current_span("caller"):
            assert await ask(ref, {}, endpoint="work", middleware=[retry]) == "done"
    caller = spans.one("caller")
    clients = [s for s in spans.named("work") if s.kind is SpanKind.CLIENT]
    servers = [s for s in spans.named("work") if s.kind is SpanKind.SERVER]
    assert len(clients) == len(servers) == 3
    for client, server in zip(clients, servers, strict=True):
        assert_child(client, caller)  # siblings under the caller
        assert_child(server, client)
    assert [c.status.status_code for c in clients] == [StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET]
    assert clients[0].end_time is not None and clients[1].start_time is not None
    assert clients[0].end_time <= clients[1].start_time  # one after the other


class Greeter(Actor):
    service_name = "Greeter"

    def __init__(self) -> None:
        self.calls = 0

    @idempotent
    async def whoami(self, body: Any) -> str:
        self.calls += 1
        if self.calls == 1:
            raise ServiceUnavailable("warming up")
        return self.context.node.id


async def test_each_attempt_of_the_selectors_retries_is_a_span(spans: Spans) -> None:
    registry = MemoryRegistry()
    retry = RetryPolicy(backoff=0.001, max_backoff=0.002)
    async with (
        start_cluster("svc", registry=registry, tracing=spans.provider, auth=False) as svc,
        start_cluster("client", registry=registry, tracing=spans.provider, auth=False, retry=retry) as client,
    ):
        await svc.serve(Greeter, name="greeter")
        with spans.provider.get_tracer("test").start_as_current_span("caller"):
            assert await client.call("greeter", "Greeter.whoami", {}) == "svc"
    caller = spans.one("caller")
    clients = [s for s in spans.named("Greeter/whoami") if s.kind is SpanKind.CLIENT]
    assert len(clients) == 2
    for client_span in clients:
        assert_child(client_span, caller)
    assert clients[0].attributes is not None
    assert clients[0].attributes["rpc.trimicro.error_code"] == 503


class Publisher(Actor):
    service_name = "Publisher"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def emit(self, body: dict[str, Any]) -> int:
        return await self.cluster.publish("orders.new", body)


class Collector(Actor):
    def __init__(self, got: trio.MemorySendChannel[Any]) -> None:
        self.got = got

    async def on_message(self, msg: Message) -> None:
        self.got.send_nowait(trace.get_current_span().get_span_context())


def emitted(spans: Spans) -> tuple[ReadableSpan, ReadableSpan]:
    """The ``publish`` and ``process`` spans of ``Publisher.emit``, checked: the publish is a
    child of the handler's span, the delivery a child of the publish and linked to it."""
    handler = spans.one("Publisher/emit", SpanKind.SERVER)
    publish = spans.one("publish orders.new", SpanKind.PRODUCER)
    process = spans.one("process orders.new", SpanKind.CONSUMER)
    assert_child(publish, handler)
    assert_child(process, publish)
    assert [link.context.span_id for link in process.links] == [sid(publish)]
    return publish, process


async def test_a_delivery_is_a_consumer_span_child_of_publish_and_linked_to_it(spans: Spans) -> None:
    registry = MemoryRegistry()
    send, receive = trio.open_memory_channel[Any](4)
    async with AsyncExitStack() as stack:
        n0, n1 = [
            await stack.enter_async_context(
                start_cluster(f"n{i}", registry=registry, tracing=spans.provider, auth=False)
            )
            for i in range(2)
        ]
        await n1.subscribe("orders.*", await n1.node.spawn(Collector, send))
        with trio.fail_after(10):
            while not any(p == "orders.*" for p, _, _ in n0.pubsub.remote_interest.get("n1", [])):
                await n0.pubsub.wait_interest()
        publisher = await n0.node.spawn(Publisher, n0)
        assert await ask(publisher, {}, endpoint="Publisher.emit") == 1
        with trio.fail_after(10):
            current = await receive.receive()
    publish, process = emitted(spans)
    assert current == process.context
    assert process.attributes is not None and publish.attributes is not None
    assert publish.attributes["messaging.destination.name"] == "orders.new"
    assert publish.attributes["messaging.operation.type"] == "publish"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.system"] == "trimicro"
    assert process.attributes["messaging.trimicro.publisher"] == "n0"
    assert process.attributes["messaging.trimicro.delivery"] == 1


# ---- propagation -------------------------------------------------------------------------------


async def test_the_context_travels_through_a_node_that_does_not_trace(spans: Spans) -> None:
    """Caller (traced) -> a node without tracing that allows only ``x-tenant`` -> a traced
    node: the last handler's span is a child of the caller's span, in the caller's trace."""
    authority, transport = Authority.generate(), TcpTransport()

    def start(name: str, **kw: Any) -> Any:
        identity = NodeIdentity.issue(name, authority)
        return start_node(name, listen="127.0.0.1:0", transport=transport, identity=identity, **kw)

    async with (
        start("cli", tracing=spans.provider) as cli,
        start("mid", tracing=False, propagate_headers={"x-tenant"}) as mid,
        start("end", tracing=spans.provider) as end,
    ):
        assert mid.address is not None and end.address is not None
        await mid.connect(end.address)
        await cli.connect(mid.address)
        await end.spawn(Echo, name="echo")
        await mid.spawn(Front, mid.remote_ref("end", "echo"), name="front")
        got = await ask(cli.remote_ref("mid", "front"), {}, endpoint="Front.look", headers={"x-other": "1"})
    assert "x-other" not in got  # the rule is applied ...
    client, server = spans.one("Front/look", SpanKind.CLIENT), spans.one("Echo/headers", SpanKind.SERVER)
    assert_child(server, client)  # ... but the trace context passed
    assert client.context is not None
    assert got["traceparent"].startswith(f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-")


async def test_a_context_in_the_call_headers_is_the_parent_outside_any_span(spans: Spans) -> None:
    async with start_node("n", tracing=spans.provider) as node:
        ref = await node.spawn(Echo)
        assert await ask(ref, Ping(1), headers={"traceparent": TRACEPARENT}) == 1
    client = spans.one("Ping", SpanKind.CLIENT)
    assert client.context is not None and client.parent is not None
    assert (f"{client.context.trace_id:032x}", f"{client.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)


async def test_unsampled_calls_record_nothing_and_still_carry_the_trace() -> None:
    spans = Spans(sampler=ParentBased(TraceIdRatioBased(0.0)))
    seen: list[Any] = []
    async with two_nodes(tracing=spans.provider) as (a, b):
        assert a.tracing is not None and a.tracing.passing  # the sampler drops unsampled children
        await b.spawn(Echo, seen, name="echo")
        front = await a.spawn(Front, a.remote_ref("b", "echo"), name="front")
        headers = await ask(front, {}, endpoint="Front.look")  # a root: the sampler says no
        assert await ask(front, {}, endpoint="Front.relay") == "hi"
        unsampled = f"00-{TRACE_ID}-{PARENT_ID}-00"  # as from a gateway that sampled it out
        for _ in range(2):  # (the second time, each node knows it already)
            passed = await ask(front, {}, endpoint="Front.look", headers={"traceparent": unsampled})
            assert passed["traceparent"] == unsampled  # passed on as it came, hop after hop
    assert spans.all == ()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[02]", headers["traceparent"])  # not sampled
    (context,) = seen
    assert context.is_valid and not context.trace_flags.sampled  # what the handler's logs see


async def test_a_sampler_that_is_not_parent_based_sees_every_request() -> None:
    spans = Spans(sampler=ALWAYS_ON)
    async with start_node("n", tracing=spans.provider) as node:
        assert node.tracing is not None and not node.tracing.passing
        ref = await node.spawn(Echo)
        assert await ask(
            ref, {}, endpoint="Echo.hello", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
        )
    server = spans.one("Echo/hello", SpanKind.SERVER)  # recorded although its parent was not
    assert server.context is not None and f"{server.context.trace_id:032x}" == TRACE_ID
    custom = ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
    assert not drops_unsampled(TracerProvider(sampler=custom, shutdown_on_exit=False).get_tracer("t"))


async def test_the_runtimes_own_actors_start_no_trace(spans: Spans) -> None:
    async with start_node("n", tracing=spans.provider) as node:
        ref = await node.spawn(Echo, name="trimicro-echo")
        assert await ask(ref, Ping(1)) == 1
        assert spans.all == ()
        with spans.provider.get_tracer("test").start_as_current_span("caller"):
            assert await ask(ref, Ping(2)) == 2  # inside a trace: traced
    assert_child(spans.one("Echo/Ping", SpanKind.SERVER), spans.one("Ping", SpanKind.CLIENT))


# ---- the gateway ---------------------------------------------------------------------------------


@asynccontextmanager
async def gateway_of(spans: Spans) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of a gateway whose node serves Echo, traced by ``spans``."""
    async with start_cluster(
        "gw", registry=MemoryRegistry(), store="", auth=False, tracing=spans.provider
    ) as c:
        await c.serve(Echo)
        async with (
            open_gateway(c, GatewayOptions(address="127.0.0.1:0", refresh=0.2)) as gw,
            httpx.AsyncClient(base_url=gw.url, timeout=10) as http,
        ):
            yield http


async def test_the_gateway_continues_the_http_requests_trace(spans: Spans) -> None:
    async with gateway_of(spans) as http:
        r = await http.post("/api/echo/hello", json={}, headers={"traceparent": TRACEPARENT})
        assert r.status_code == 200 and r.json() == "hi"
        assert (await http.post("/api/echo/missing", json={})).status_code == 404
        assert (await http.post("/api/echo/broken", json={})).status_code == 500
    http_spans = spans.named("POST /api/{service}/{endpoint:path}")
    assert len(http_spans) == 3
    request = next(s for s in http_spans if s.attributes and s.attributes["url.path"] == "/api/echo/hello")
    assert request.kind is SpanKind.SERVER and request.parent is not None and request.context is not None
    assert (f"{request.context.trace_id:032x}", f"{request.parent.span_id:016x}") == (TRACE_ID, PARENT_ID)
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.request.method"] == "POST"
    client, server = spans.one("Echo/hello", SpanKind.CLIENT), spans.one("Echo/hello", SpanKind.SERVER)
    assert_child(client, request)
    assert_child(server, client)
    assert_within(client, request)
    by_path = {s.attributes["url.path"]: s for s in http_spans if s.attributes}
    missing, broken = by_path["/api/echo/missing"], by_path["/api/echo/broken"]
    assert missing.attributes is not None and missing.attributes["http.response.status_code"] == 404
    assert missing.status.status_code is StatusCode.UNSET  # a 4xx is the client's
    assert broken.attributes is not None and broken.attributes["error.type"] == "500"
    assert broken.status.status_code is StatusCode.ERROR


async def _through_gateway(spans: Spans, headers: dict[str, str]) -> list[ReadableSpan]:
    """One request through a gateway traced by ``spans``: the gateway's spans recorded."""
    async with gateway_of(spans) as http:
        assert (await http.post("/api/echo/hello", json={}, headers=headers)).status_code == 200
    return spans.named("POST /api/{service}/{endpoint:path}")


async def test_a_gateway_told_not_to_trust_clients_links_their_trace_instead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """By default a client's sampled traceparent makes a parent-based sampler record; with
    ``TRIMICRO_GATEWAY_TRACEPARENT=link`` the gateway's own sampler decides (a root) and the
    client's context is a link of a trace of the gateway's own."""
    sent = {"traceparent": TRACEPARENT}
    never = ParentBased(ALWAYS_OFF)  # records only what a sampled parent asks for
    (trusted,) = await _through_gateway(Spans(never), sent)
    assert trusted.context is not None and f"{trusted.context.trace_id:032x}" == TRACE_ID
    monkeypatch.setenv("TRIMICRO_GATEWAY_TRACEPARENT", "link")
    assert await _through_gateway(Spans(never), sent) == []
    (linked,) = await _through_gateway(Spans(ParentBased(ALWAYS_ON)), sent)
    assert linked.parent is None and linked.context is not None
    assert f"{linked.context.trace_id:032x}" != TRACE_ID
    (link,) = linked.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (TRACE_ID, PARENT_ID)


# ---- the trimicro command's SDK set-up -----------------------------------------------------------


def test_which_exporters_the_environment_asks_for() -> None:
    assert exporter_names({}) == []  # nothing asked: no SDK, nothing imported
    assert exporter_names({"OTEL_TRACES_EXPORTER": "none"}) == []
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp, console"}) == ["otlp", "console"]
    assert exporter_names({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == ["otlp"]
    assert exporter_names({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == ["otlp"]
    assert exporter_names({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) == []
    assert configure("svc", {}) is None


def test_exporters_by_name() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from trimicro.cluster.tracing import _exporter

    assert isinstance(_exporter("otlp", {}), OTLPSpanExporter)  # http/protobuf, the default
    assert isinstance(_exporter("otlp_proto_http", {}), OTLPSpanExporter)
    assert isinstance(_exporter("console", {}), ConsoleSpanExporter)
    with pytest.raises(PluginError, match="not supported"):
        _exporter("otlp", {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(PluginError, match="no OpenTelemetry trace exporter named 'zipkin_nope'"):
        _exporter("zipkin_nope", {})
