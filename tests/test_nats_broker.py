"""The broker conformance suite run against the broker on NATS (three nodes, a server of our own)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from nats_server import NatsServer, nats_server

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
