"""The broker conformance suite run against the cluster's pub/sub (three nodes in one process)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from trimicro.cluster.broker import PubSub
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.testing.conformance import BrokerConformance


class TestClusterPubSub(BrokerConformance):
    @pytest.fixture
    async def brokers(self, tmp_path: Path) -> AsyncIterator[Sequence[PubSub]]:
        registry = MemoryRegistry()
        async with AsyncExitStack() as stack:
            clusters = [
                await stack.enter_async_context(start_cluster(f"n{i}", registry=registry, home=tmp_path))
                for i in range(3)
            ]
            yield [cluster.pubsub for cluster in clusters]
