"""The store conformance suite run against the store on NATS JetStream KV (a server of our own)."""

from __future__ import annotations

import uuid

import pytest
from nats_server import NatsServer, nats_server

from trimicro.cluster import plugins
from trimicro.cluster.natsio import NatsOptions
from trimicro.cluster.store import Record, Store
from trimicro.cluster.store.nats import NatsStore
from trimicro.testing.conformance import ManualClock, StoreConformance
from trimicro.testing.conformance.store import OpenStore

__all__ = ["nats_server"]  # the fixture, used by name


class TestNatsStore(StoreConformance):
    durable = True

    @pytest.fixture
    def open_store(self, clock: ManualClock, nats_server: NatsServer) -> OpenStore:
        prefix = f"t{uuid.uuid4().hex[:12]}"  # buckets of this check only: it starts empty

        def open_(*, database: str, table: str) -> Store:
            options = NatsOptions(servers=(nats_server.url,))
            return NatsStore(options, database=database, table=table, bucket_prefix=prefix, now=clock)

        return open_


async def test_the_url_names_the_server_and_the_namespace(nats_server: NatsServer) -> None:
    url = f"{nats_server.url}?database=app&table=users&bucket_prefix=u{uuid.uuid4().hex[:8]}&timeout=2"
    store = plugins.load("store", url)
    try:
        assert isinstance(store, NatsStore)
        assert (store.database, store.table, store.conn.options.timeout) == ("app", "users", 2.0)
        await store.write(Record("k", b"v"))
        assert (await store.read("k"))[0].value == b"v"
    finally:
        await store.aclose()
    with pytest.raises(plugins.PluginError, match="unknown option"):
        plugins.load("store", "nats://127.0.0.1:1?colour=red")
