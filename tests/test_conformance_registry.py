"""The registry conformance suite run against every built-in registry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from trimicro.cluster.registry import (
    MdnsRegistry,
    MemoryRegistry,
    NodeInfo,
    Registry,
    Service,
    StaticRegistry,
)
from trimicro.testing.conformance import RegistryConformance


class TestMemoryRegistry(RegistryConformance):
    @pytest.fixture
    def registry(self) -> Registry:
        return MemoryRegistry()

    @pytest.fixture
    def clock(self) -> trio.abc.Clock | None:
        return trio.testing.MockClock(autojump_threshold=0)  # TTLs are on trio's clock


class TestStaticRegistry(RegistryConformance):
    """A seeded static registry keeps every promise for what is registered on top of the seeds."""

    @pytest.fixture
    def registry(self) -> Registry:
        seed = Service("conf-seed", nodes=(NodeInfo("seed-1", "127.0.0.1:9999"),))
        return StaticRegistry([seed])

    @pytest.fixture
    def clock(self) -> trio.abc.Clock | None:
        return trio.testing.MockClock(autojump_threshold=0)

    async def test_the_seeds_are_served(self, registry: Registry) -> None:
        [seed] = await registry.get_service("conf-seed")
        assert [n.id for n in seed.nodes] == ["seed-1"]


class TestMdnsRegistry(RegistryConformance):
    """Two registries on 127.0.0.1: one announces, the other looks (as two processes would).

    Each test uses a service type of its own, so nothing else on the host's multicast group (other
    test runs) shows up in it."""

    deadline = 15.0  # multicast on a loaded machine
    ttl_expires = False  # zeroconf answers for a record while its registry is open (see mdns.py)

    @pytest.fixture
    def service_type(self) -> str:
        return f"_c{uuid.uuid4().hex[:10]}._tcp.local."

    @pytest.fixture
    async def registry(self, service_type: str) -> AsyncIterator[Registry]:
        async with MdnsRegistry(service_type=service_type) as registry:
            yield registry

    @pytest.fixture
    async def observer(self, service_type: str) -> AsyncIterator[Registry]:
        async with MdnsRegistry(service_type=service_type) as observer:
            yield observer
