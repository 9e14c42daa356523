"""The store as a service: a node serves an LMDB store; another uses it through RemoteStore."""

from __future__ import annotations

from pathlib import Path

import pytest

from trimicro.actors import BadRequest, NotFound
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.cluster.store import LmdbStore, Record
from trimicro.cluster.store.service import RemoteStore, StoreService
from trimicro.mailbox.errors import Conflict, Forbidden


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


async def test_remote_store_names_namespaces_and_swaps_by_version(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    store = LmdbStore(tmp_path / "db", sync=False)
    try:
        async with (
            start_cluster("owner", registry=registry, home=tmp_path, membership=False) as owner,
            start_cluster("user", registry=registry, home=tmp_path, membership=False) as user,
        ):
            await owner.serve(StoreService, store, hidden={("trimicro", "auth")}, name="store")
            remote = RemoteStore(user)
            await remote.write(Record("k", b"orders"), table="orders", if_version=0)
            with pytest.raises(Conflict):  # typed across the wire: 409
                await remote.write(Record("k", b"again"), table="orders", if_version=0)
            [record] = await remote.read("k", table="orders")
            assert record.value == b"orders" and record.version > 0
            await remote.write(Record("k", b"orders2"), table="orders", if_version=record.version)
            assert await remote.list(table="orders") == ["k"]
            assert await remote.list() == []  # the store's own table
            assert (await store.read("k", table="orders"))[0].value == b"orders2"
            await remote.delete("k", table="orders")
            assert await store.list(table="orders") == []
            # A hidden namespace (the CLI hides the auth service's table) is not served.
            await store.write(Record("secret", b"hash"), table="auth")
            for call in (
                remote.read("secret", table="auth"),
                remote.list(database="trimicro", table="auth"),
                remote.write(Record("secret", b"mine"), table="auth"),
                remote.delete("secret", table="auth"),
            ):
                with pytest.raises(Forbidden):
                    await call
            assert (await store.read("secret", table="auth"))[0].value == b"hash"
    finally:
        await store.aclose()
