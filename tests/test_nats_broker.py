"""The broker conformance suite run against the broker on NATS (three nodes, a server of our own)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from nats_server import NatsServer, nats_server
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from trimicro.actors import Actor, ServiceUnavailable, ask
from trimicro.cluster.broker import Message
from trimicro.cluster.broker.nats import NatsBroker
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.testing.conformance import BrokerConformance

__all__ = ["nats_server"]  # the fixture, used by name


def broker_url(server: NatsServer) -> str:
    """A URL with names of its own (subjects, stream, interest bucket): tests do not mix."""
    tag = uuid.uuid4().hex[:10]
    return f"{server.url}?prefix=t{tag}&stream=T{tag}"


class TestNatsBroker(BrokerConformance):
    @pytest.fixture
    async def brokers(self, tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Sequence[Any]]:
        registry = MemoryRegistry()
        url = broker_url(nats_server)
        async with AsyncExitStack() as stack:
            clusters = [
                await stack.enter_async_context(
                    start_cluster(f"n{i}", registry=registry, home=tmp_path, broker=url)
                )
                for i in range(3)
            ]
            assert all(isinstance(c.pubsub, NatsBroker) for c in clusters)
            yield [cluster.pubsub for cluster in clusters]


# ---- traces and counts -------------------------------------------------------------------------


class Flaky(Actor):
    """Fails a message's first delivery, takes the second; sends each delivery's span context."""

    def __init__(self, got: trio.MemorySendChannel[Any]) -> None:
        self.got = got

    async def on_message(self, msg: Message) -> None:
        self.got.send_nowait((msg.delivery, trace.get_current_span().get_span_context()))
        if msg.delivery == 1:
            raise ServiceUnavailable("not yet")


async def test_publishes_and_deliveries_are_spans_and_counted(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """As with the cluster's own broker: ``publish`` is a PRODUCER span in the publishing
    handler's trace, each delivery a CONSUMER span child of it and linked to it (a redelivery
    another one, under the same publish), and the subscriber's node counts deliveries and
    redeliveries."""
    from test_tracing import Collector, Publisher, Spans, assert_child, emitted

    spans = Spans()
    registry, url = MemoryRegistry(), broker_url(nats_server)
    send, receive = trio.open_memory_channel[Any](8)
    async with AsyncExitStack() as stack:
        n0, n1 = [
            await stack.enter_async_context(
                start_cluster(
                    f"n{i}", registry=registry, home=tmp_path, broker=url, tracing=spans.provider, auth=False
                )
            )
            for i in range(2)
        ]
        await n1.subscribe("orders.*", await n1.node.spawn(Collector, send))
        await n1.subscribe("acked.*", await n1.node.spawn(Flaky, send))
        with trio.fail_after(30):
            while n0.pubsub.expected("orders.new") < 1 or n0.pubsub.expected("acked.new") < 1:
                await n0.pubsub.wait_interest()
            publisher = await n0.node.spawn(Publisher, n0)
            assert await ask(publisher, {}, endpoint="Publisher.emit") == 1
            current = await receive.receive()
            assert await n0.publish("acked.new", {}, ack=True, ack_timeout=5) == 1
            (first, _), (second, _) = await receive.receive(), await receive.receive()
        assert (first, second) == (1, 2)
        assert (n1.pubsub.delivered, n1.pubsub.redelivered) == (3, 1)
        snapshot = await ask(
            n1.node.remote_ref("n1", "/user/trimicro-metrics"), None, endpoint="Metrics.snapshot"
        )
        assert snapshot["pubsub"]["delivered"] == 3 and snapshot["pubsub"]["redelivered"] == 1
    _, process = emitted(spans)
    assert current == process.context
    acked = spans.one("publish acked.new", SpanKind.PRODUCER)
    deliveries = sorted(
        spans.named("process acked.new"), key=lambda s: s.attributes["messaging.trimicro.delivery"]
    )  # type: ignore[index]
    assert [s.attributes["messaging.trimicro.delivery"] for s in deliveries] == [1, 2]  # type: ignore[index]
    for delivery in deliveries:
        assert_child(delivery, acked)
