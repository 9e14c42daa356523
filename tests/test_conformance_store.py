"""The store conformance suite run against every built-in store."""

from __future__ import annotations

from pathlib import Path

import pytest

from trimicro.cluster.store import LmdbStore, MemoryStore, Store
from trimicro.testing.conformance import ManualClock, StoreConformance
from trimicro.testing.conformance.store import OpenStore


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def open_store(self, clock: ManualClock) -> OpenStore:
        def open_(*, database: str, table: str) -> Store:
            return MemoryStore(database=database, table=table, now=clock)

        return open_


class TestLmdbStore(StoreConformance):
    durable = True

    @pytest.fixture
    def open_store(self, clock: ManualClock, tmp_path: Path) -> OpenStore:
        def open_(*, database: str, table: str) -> Store:
            return LmdbStore(tmp_path / "db", database=database, table=table, now=clock, sync=False)

        return open_
