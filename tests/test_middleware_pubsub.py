"""Middleware around the cluster's pub/sub: client middleware of kind ``publish`` around a
publish, server middleware of kind ``subscribe`` around each delivery, locally and across nodes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor, Call, Middleware, Next
from trimicro.actors.middleware import Kind, Side
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.testing.conformance.broker import Inbox

Seen = list[tuple[str, Kind, Side, Any]]


def spy(name: str, seen: Seen) -> Middleware:
    """Records (name, kind, side, target) of every publish and delivery."""

    async def mw(call: Call, call_next: Next) -> Any:
        if call.kind in (Kind.PUBLISH, Kind.SUBSCRIBE):
            seen.append((name, call.kind, call.side, call.target))
        return await call_next(call)

    return mw


class Collector(Actor):
    def __init__(self, box: Inbox) -> None:
        self.box = box

    async def on_message(self, msg: Message) -> None:
        self.box.add(msg)


@asynccontextmanager
async def clusters(tmp_path: Path, *middleware: list[Middleware]) -> AsyncIterator[list[Cluster]]:
    registry = MemoryRegistry()
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                start_cluster(f"n{i}", registry=registry, home=tmp_path, middleware=mw)
            )
            for i, mw in enumerate(middleware)
        ]


async def knows(publisher: Cluster, node_id: str, pattern: str) -> None:
    with trio.fail_after(10):
        while not any(p == pattern for p, _, _ in publisher.pubsub.remote_interest.get(node_id, [])):
            await publisher.pubsub.wait_interest()


async def test_publish_and_delivery_middleware_across_nodes(tmp_path: Path) -> None:
    seen: Seen = []

    async def stamp(call: Call, call_next: Next) -> Any:
        call.headers["x-stamp"] = "yes"
        call.message = call.message * 10
        return await call_next(call)

    async with clusters(tmp_path, [spy("a", seen)], [spy("b", seen)]) as [a, b]:
        box = Inbox(deadline=10)
        await b.subscribe("orders.>", await b.node.spawn(Collector, box))
        await knows(a, "n1", "orders.>")
        assert await a.publish("orders.eu", 1, middleware=[stamp]) == 1
        await box.wait_for(1)
    (got,) = box.got
    assert got.body == 10 and got.headers["x-stamp"] == "yes"  # the rewrite travelled
    assert seen == [
        ("a", Kind.PUBLISH, Side.CLIENT, "orders.eu"),
        ("b", Kind.SUBSCRIBE, Side.SERVER, "orders.eu"),
    ]


async def test_a_publish_middleware_may_drop_a_message_locally(tmp_path: Path) -> None:
    seen: Seen = []

    async def drop_odd(call: Call, call_next: Next) -> Any:
        if call.message % 2:
            return 0  # short-circuit: nothing is published
        return await call_next(call)

    async with clusters(tmp_path, [spy("n", seen)]) as [a]:
        box = Inbox(deadline=10)
        await a.subscribe("t", await a.node.spawn(Collector, box))
        for i in range(4):
            await a.publish("t", i, middleware=[drop_odd])
        await box.wait_for(2)
        assert box.bodies() == [0, 2]
    publishes = [s for s in seen if s[1] is Kind.PUBLISH]
    deliveries = [s for s in seen if s[1] is Kind.SUBSCRIBE]
    assert len(publishes) == 2 and len(deliveries) == 2  # the call's own runs outside the node's
