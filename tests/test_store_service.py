"""The store as a service: a node serves an LMDB store; another uses it through RemoteStore."""

from __future__ import annotations

from pathlib import Path

import pytest

from trimicro.actors import BadRequest, NotFound
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.cluster.store import LmdbStore, Record
from trimicro.cluster.store.service import RemoteStore, StoreService


async def test_remote_store_reads_and_writes_through_the_service(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    store = LmdbStore(tmp_path / "db")
    try:
        async with (
            start_cluster("owner", registry=registry, home=tmp_path, membership=False) as owner,
            start_cluster("user", registry=registry, home=tmp_path, membership=False) as user,
        ):
            await owner.serve(StoreService, store, name="store")
            remote = RemoteStore(user)
            await remote.write(Record("user/1", b"ada", {"kind": "user"}))
            await remote.write(Record("user/2", b"bob"))
            await remote.write(Record("order/9", b"x"))
            [one] = await remote.read("user/1")
            assert (one.key, one.value, one.metadata) == ("user/1", b"ada", {"kind": "user"})
            assert [r.key for r in await remote.read("user/", prefix=True)] == ["user/1", "user/2"]
            assert await remote.list(prefix="user/") == ["user/1", "user/2"]
            await remote.delete("user/1")
            with pytest.raises(NotFound):
                await remote.read("user/1")
            with pytest.raises(BadRequest):
                await remote.write(Record("", b"empty keys are refused"))
            # the owner's own view is the same data
            assert [r.value for r in await store.read("user/2")] == [b"bob"]
    finally:
        await store.aclose()
