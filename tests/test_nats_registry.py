"""The registry conformance suite run against the registry on a NATS KV bucket (a server of our own)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from nats_server import NatsServer, nats_server

from trimicro.cluster import plugins
from trimicro.cluster.natsio import NatsOptions
from trimicro.cluster.registry import Registry
from trimicro.cluster.registry.nats import NatsRegistry
from trimicro.testing.conformance import RegistryConformance

__all__ = ["nats_server"]  # the fixture, used by name


class TestNatsRegistry(RegistryConformance):
    """Two registries on one bucket, as two processes would: one registers, the other looks."""

    @pytest.fixture
    def bucket(self) -> str:
        return f"reg_{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def registry(self, nats_server: NatsServer, bucket: str) -> AsyncIterator[Registry]:
        registry = NatsRegistry(NatsOptions(servers=(nats_server.url,)), bucket=bucket)
        try:
            yield registry
        finally:
            await registry.aclose()

    @pytest.fixture
    async def observer(self, nats_server: NatsServer, bucket: str) -> AsyncIterator[Registry]:
        observer = plugins.load("registry", f"{nats_server.url}?bucket={bucket}")
        try:
            yield observer
        finally:
            await observer.aclose()
