"""The store: Go Micro's interface on a dict and on LMDB (group commit, map growth, crash safety)."""

from __future__ import annotations

import gc
import os
import signal
import stat
import textwrap
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio
from procs import python_process

from trimicro.cluster.store import LmdbStore, MemoryStore, Record, Store
from trimicro.cluster.store.lmdb import READ_YIELD_EVERY
from trimicro.mailbox.errors import BadRequest, Conflict, InternalServerError, NotFound, ServiceUnavailable

MAIN = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


Factory = Callable[..., Store]


@pytest.fixture(params=["memory", "lmdb"])
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    stores: list[Store] = []

    def factory(**kw: Any) -> Store:
        store: Store = MemoryStore(**kw) if request.param == "memory" else LmdbStore(tmp_path / "db", **kw)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.aclose()


async def test_write_read_delete(make: Factory) -> None:
    store = make()
    await store.write(Record("a", b"1", {"k": "v"}))
    assert await store.read("a") == [Record("a", b"1", {"k": "v"}, None)]
    await store.write(Record("a", b"2"))
    assert (await store.read("a"))[0].value == b"2"
    await store.delete("a")
    with pytest.raises(NotFound):
        await store.read("a")
    await store.delete("a")  # deleting a missing key is a no-op


async def test_prefix_suffix_limit_offset(make: Factory) -> None:
    store = make()
    for key in ["user/1", "user/2", "user/3", "order/1", "order/2", "x"]:
        await store.write(Record(key, key.encode()))
    assert await store.list() == ["order/1", "order/2", "user/1", "user/2", "user/3", "x"]
    assert await store.list(prefix="user/") == ["user/1", "user/2", "user/3"]
    assert await store.list(suffix="/1") == ["order/1", "user/1"]
    assert await store.list(prefix="user/", suffix="2") == ["user/2"]
    assert await store.list(limit=2) == ["order/1", "order/2"]
    assert await store.list(offset=4) == ["user/3", "x"]
    assert await store.list(prefix="user/", limit=1, offset=1) == ["user/2"]
    assert await store.list(limit=0) == []
    recs = await store.read("user/", prefix=True, limit=2, offset=1)
    assert [(r.key, r.value) for r in recs] == [("user/2", b"user/2"), ("user/3", b"user/3")]
    assert [r.key for r in await store.read("/2", suffix=True)] == ["order/2", "user/2"]
    assert await store.read("nope/", prefix=True) == []


async def test_ttl_expiry_and_sweep(make: Factory) -> None:
    clock = Clock()
    store = make(now=clock)
    await store.write(Record("short", b"s"), ttl=10)
    await store.write(Record("abs", b"a", expiry=clock.t + 20))
    await store.write(Record("forever", b"f"))
    assert (await store.read("short"))[0].expiry == clock.t + 10
    clock.t += 10
    with pytest.raises(NotFound):
        await store.read("short")
    assert await store.list() == ["abs", "forever"]
    clock.t += 10
    assert await store.list() == ["forever"]
    assert [r.key for r in await store.read("", prefix=True)] == ["forever"]
    assert await store.sweep() == 2  # type: ignore[attr-defined]
    assert await store.sweep() == 0  # type: ignore[attr-defined]
    clock.t -= 100  # swept records are gone for good, whatever the clock says
    assert await store.list() == ["forever"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.write(Record("", b"x")), "empty"),
        (lambda s: s.write(Record("k" * 512, b"x")), "511"),
        (lambda s: s.write(Record("é" * 256, b"x")), "utf-8"),
        (lambda s: s.write(Record(5, b"x")), "str"),
        (lambda s: s.write(Record("k", "text")), "bytes"),
        (lambda s: s.write(Record("k", b"x" * 1025)), "1024"),
        (lambda s: s.write(Record("k", b"x", {"a": 1})), "metadata"),
        (lambda s: s.write(Record("k", b"x"), ttl=0), "ttl"),
        (lambda s: s.write(Record("\ud800", b"x")), "unicode"),
        (lambda s: s.read(""), "empty"),
        (lambda s: s.read(b"k"), "str"),
        (lambda s: s.delete(""), "empty"),
        (lambda s: s.list(limit=-1), "limit"),
        (lambda s: s.list(offset=-1), "offset"),
        (lambda s: s.list(prefix=None), "prefix"),
    ],
)
async def test_bad_input(make: Factory, call: Callable[[Store], Any], message: str) -> None:
    store = make(max_value=1024)
    with pytest.raises(BadRequest, match=message):
        await call(store)
    assert await store.list() == []


async def test_namespaces_are_isolated(make: Factory) -> None:
    a = make(table="a")
    b = make(table="b")
    c = make(database="other", table="a")
    await a.write(Record("k", b"a"))
    await b.write(Record("k", b"b"))
    assert (await a.read("k"))[0].value == b"a"
    assert (await b.read("k"))[0].value == b"b"
    with pytest.raises(NotFound):
        await c.read("k")
    assert await c.list() == []
    await b.delete("k")
    assert (await a.read("k"))[0].value == b"a"


# -- LMDB only ---------------------------------------------------------------------------------


async def test_concurrent_writers_group_commit_and_durable(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db")
    before = store.commits
    async with trio.open_nursery() as nursery:
        for i in range(64):
            nursery.start_soon(store.write, Record(f"k{i:02}", f"v{i}".encode(), {"i": str(i)}))
    commits = store.commits - before
    assert commits < 64, "writes were not grouped into shared transactions"
    await store.aclose()
    reopened = LmdbStore(tmp_path / "db")
    try:
        assert len(await reopened.list()) == 64
        for i in range(64):
            assert await reopened.read(f"k{i:02}") == [Record(f"k{i:02}", f"v{i}".encode(), {"i": str(i)})]
    finally:
        await reopened.aclose()


async def test_point_reads_honour_cancellation_and_let_others_run(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", sync=False)
    try:
        await store.write(Record("k", b"v"))
        served = 0
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(READ_YIELD_EVERY + 1):  # served from the memory map, not waiting,
                await store.read("k")  # yet a run of them sees the cancellation
                served += 1
        assert scope.cancelled_caught
        assert served < READ_YIELD_EVERY
        ran = trio.Event()

        async def other_task() -> None:
            ran.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            for _ in range(3 * READ_YIELD_EVERY):  # a long run of reads yields now and then
                await store.read("k")
                if ran.is_set():
                    break
            assert ran.is_set()
    finally:
        await store.aclose()


async def test_map_grows_from_tiny(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", map_size=64 * 1024)
    value = bytes(range(256)) * 128  # 32 KiB
    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(store.write, Record(f"c{i:02}", value))
    for i in range(32, 64):
        await store.write(Record(f"s{i:02}", value))
    assert store.map_size > 2 * 1024 * 1024
    assert len(await store.list()) == 64
    assert all(r.value == value for r in await store.read("", prefix=True))
    await store.aclose()


async def test_map_cap_fails_cleanly(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", map_size=64 * 1024, max_map_size=256 * 1024)
    await store.write(Record("small", b"ok"))
    with pytest.raises(InternalServerError, match="full"):
        await store.write(Record("big", b"x" * (1024 * 1024)))
    assert (await store.read("small"))[0].value == b"ok"
    await store.write(Record("after", b"still works"))
    assert await store.list() == ["after", "small"]
    await store.aclose()


CHILD = """
import sys
from pathlib import Path
import trio
from trimicro.cluster.store import LmdbStore, Record

async def main() -> None:
    store = LmdbStore(Path(sys.argv[1]))
    n = 0
    while True:
        await store.write(Record(f"key{n:06}", f"value-{n}".encode() * 10, {"n": str(n)}))
        print(f"acked {n}", flush=True)
        n += 1

trio.run(main)
"""


async def test_acked_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "db"
    acked: list[int] = []
    with trio.fail_after(30):
        async with python_process("-c", textwrap.dedent(CHILD), str(path)) as proc:
            for _ in range(100_000):  # bounded: the child acks one key per line
                line = await proc.line()
                assert line.startswith("acked ")
                acked.append(int(line.split()[1]))
                if len(acked) >= 200:
                    break
            proc.signal(signal.SIGKILL)
            await proc.proc.wait()
        assert proc.proc.returncode == -signal.SIGKILL
    assert acked == list(range(len(acked)))
    store = LmdbStore(path)
    try:
        for n in acked:
            assert await store.read(f"key{n:06}") == [
                Record(f"key{n:06}", f"value-{n}".encode() * 10, {"n": str(n)})
            ]
    finally:
        await store.aclose()


async def test_sweep_works_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trimicro.cluster.store.lmdb as store_module

    monkeypatch.setattr(store_module, "SWEEP_SCAN", 100)
    monkeypatch.setattr(store_module, "SWEEP_BATCH", 30)
    clock = Clock()
    store = LmdbStore(tmp_path / "db", sync=False, now=clock)
    try:
        async with trio.open_nursery() as nursery:
            for i in range(600):
                ttl = 5 if i % 3 else None  # two in three expire
                nursery.start_soon(lambda i=i, ttl=ttl: store.write(Record(f"k{i:04}", b"v"), ttl=ttl))
        clock.t += 10
        before = store.commits
        assert await store.sweep() == 400
        assert store.commits - before >= 400 // 30  # many small write transactions, not one
        assert await store.list() == [f"k{i:04}" for i in range(0, 600, 3)]
    finally:
        await store.aclose()


async def test_records_are_immutable_all_the_way_down(make: Factory) -> None:
    """Read records can be shared (and cached): nobody can change one another reader sees."""
    store = make()
    meta = {"k": "v"}
    await store.write(Record("a", b"1", meta))
    meta["k"] = "changed after the write"
    first = (await store.read("a"))[0]
    with pytest.raises(TypeError):
        first.metadata["k"] = "x"  # type: ignore[index]
    assert (await store.read("a"))[0].metadata == {"k": "v"}


async def test_point_read_cache_never_serves_stale_or_expired_records(make: Factory) -> None:
    clock = Clock()
    store = make(now=clock)
    await store.write(Record("a", b"1"), ttl=10)
    assert (await store.read("a"))[0].value == b"1"
    await store.write(Record("a", b"2"), ttl=10)
    assert (await store.read("a"))[0].value == b"2"
    clock.t += 11
    with pytest.raises(NotFound):
        await store.read("a")
    await store.write(Record("a", b"3"))
    assert (await store.read("a"))[0].value == b"3"
    await store.delete("a")
    with pytest.raises(NotFound):
        await store.read("a")


async def test_point_read_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trimicro.cluster.store.lmdb as store_module

    monkeypatch.setattr(store_module, "CACHE_RECORDS", 8)
    monkeypatch.setattr(store_module, "CACHE_RECORD_BYTES", 64)
    store = LmdbStore(tmp_path / "db", sync=False)
    try:
        for i in range(20):
            await store.write(Record(f"k{i}", b"v"))
        await store.write(Record("big", b"x" * 100))
        for _ in range(2):
            for i in range(20):
                assert (await store.read(f"k{i}"))[0].value == b"v"
            assert (await store.read("big"))[0].value == b"x" * 100
        assert len(store._cache) <= 8
        assert "big" not in store._cache
    finally:
        await store.aclose()


async def test_scans_reuse_cached_records_yet_never_serve_stale_or_expired(tmp_path: Path) -> None:
    clock = Clock()
    store = LmdbStore(tmp_path / "db", sync=False, now=clock)
    try:
        for i in range(5):
            await store.write(Record(f"k{i}", f"v{i}".encode()), ttl=10 if i == 4 else None)
        first = await store.read("k", prefix=True)
        again = await store.read("k", prefix=True)
        assert [r.key for r in again] == [f"k{i}" for i in range(5)]
        assert all(a is b for a, b in zip(first, again, strict=True))  # decoded once, then reused
        assert (await store.read("k2"))[0] is first[2]  # point reads and scans share the cache
        await store.write(Record("k2", b"new"))
        third = await store.read("k", prefix=True)
        assert third[2].value == b"new"
        assert third[1] is first[1]
        clock.t += 11  # k4 expires: a cached record is still checked
        assert [r.key for r in await store.read("k", prefix=True)] == [f"k{i}" for i in range(4)]
        assert await store.list(prefix="k") == [f"k{i}" for i in range(4)]
    finally:
        await store.aclose()


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", sync=False)
    other = LmdbStore(tmp_path / "db", sync=False)  # keeps the shared environment open
    try:
        await store.write(Record("k", b"v"))
        assert (await store.read("k"))[0].value == b"v"
        await store.aclose()
        with pytest.raises(ServiceUnavailable):
            await store.read("k")
        assert (await other.read("k"))[0].value == b"v"
    finally:
        await other.aclose()


WRITER = """
import sys, trio
from pathlib import Path
from trimicro.cluster.store import LmdbStore, Record

async def main():
    store = LmdbStore(Path(sys.argv[1]))
    await store.write(Record("shared", b"from the other process", {"by": "child"}))
    await store.aclose()
    print("written", flush=True)

trio.run(main)
"""


async def test_a_write_from_another_process_is_read_at_once(tmp_path: Path) -> None:
    """The point-read cache checks the stored bytes on every read: LMDB is shared between
    processes, so a record another process rewrote must never be answered from the cache."""
    path = tmp_path / "db"
    store = LmdbStore(path)
    try:
        await store.write(Record("shared", b"from this process"))
        for _ in range(3):  # read (and cache) it
            assert (await store.read("shared"))[0].value == b"from this process"
        with trio.fail_after(30):
            async with python_process("-c", WRITER, str(path)) as proc:
                assert await proc.line() == "written"
        assert await store.read("shared") == [Record("shared", b"from the other process", {"by": "child"})]
    finally:
        await store.aclose()


async def test_a_map_resize_waits_only_for_the_end_of_the_readers_batch(tmp_path: Path) -> None:
    """A point read registers the trio thread as a reader until its scheduler batch ends, so
    a write that must grow the map (which needs no reader inside the map) completes as soon
    as the reading task waits: the registration must not outlive the batch."""
    store = LmdbStore(tmp_path / "db", map_size=64 * 1024, sync=False)
    try:
        await store.write(Record("a", b"1"))
        with trio.fail_after(20):
            for round in range(3):
                assert (await store.read("a"))[0].value == b"1"  # registers this thread
                big = bytes([round]) * (256 * 1024 * (round + 1))
                await store.write(Record(f"big{round}", big))  # grows the map
                assert (await store.read(f"big{round}"))[0].value == big
        assert store.map_size > 64 * 1024
    finally:
        await store.aclose()


async def test_a_second_trio_run_can_use_the_same_store(tmp_path: Path) -> None:
    """Only the trio run that first read through the fast path registers as a reader per
    batch (its instrument ends the registration); another run's reads take the slow path, so
    its own map resize cannot wait on a registration that nobody in its run would end."""
    store = LmdbStore(tmp_path / "db", map_size=64 * 1024, sync=False)
    big = b"x" * (512 * 1024)

    async def other() -> None:
        with trio.fail_after(20):
            assert (await store.read("a"))[0].value == b"1"
            assert (await store.read("a"))[0].value == b"1"
            await store.write(Record("big", big))  # grows the map
            assert (await store.read("big"))[0].value == big

    try:
        await store.write(Record("a", b"1"))
        assert (await store.read("a"))[0].value == b"1"
        await trio.to_thread.run_sync(trio.run, other)
        assert (await store.read("big"))[0].value == big
    finally:
        await store.aclose()


async def test_a_store_dropped_without_aclose_is_not_kept_alive_by_its_read_instrument(
    tmp_path: Path,
) -> None:
    """The fast path's per-batch instrument lives as long as the trio run; it must not keep a
    store (and its record cache) alive after the program let go of it."""
    store = LmdbStore(tmp_path / "db", sync=False)
    await store.write(Record("a", b"1" * 100))
    assert (await store.read("a"))[0].value == b"1" * 100  # installs the instrument
    rw = store._env.rw
    assert (await store.read("a"))[0].value == b"1" * 100  # registered as a reader again
    gone = weakref.ref(store)
    del store  # in the same scheduler batch as its read
    gc.collect()
    assert gone() is None
    await trio.lowlevel.checkpoint()  # the instrument, still installed, copes with it gone
    assert rw._readers == 0  # and let go of its registration: a map resize would wait forever


class _CannotGrow:
    """An LMDB environment whose map cannot be resized (as when address space or disk runs out)."""

    def __init__(self, env: Any) -> None:
        self._env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def set_mapsize(self, size: int) -> None:
        raise lmdb.Error("mdb_env_set_mapsize: Cannot allocate memory")


async def test_a_map_that_cannot_grow_fails_the_write_and_the_writer_lives_on(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", map_size=64 * 1024)
    try:
        await store.write(Record("small", b"ok"))
        real = store._env.env
        store._env.env = _CannotGrow(real)
        with trio.fail_after(10), pytest.raises(InternalServerError, match="Cannot allocate memory"):
            await store.write(Record("big", b"x" * (1024 * 1024)))
        store._env.env = real
        with trio.fail_after(10):  # the writer thread still serves
            await store.write(Record("after", b"still works"))
        assert await store.list() == ["after", "small"]
    finally:
        await store.aclose()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
async def test_a_new_store_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """The auth service keeps account hashes and rules in a store: nobody else may read it."""
    old = os.umask(0o022)  # the usual umask, which made the store 0755 and its files 0644
    try:
        store = LmdbStore(tmp_path / "new" / "db")
        await store.write(Record("auth/accounts/alice", b"argon2id hash"))
        await store.aclose()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new" / "db") == 0o700
    assert {name: _mode(tmp_path / "new" / "db" / name) for name in ("data.mdb", "lock.mdb")} == {
        "data.mdb": 0o600,
        "lock.mdb": 0o600,
    }


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
async def test_an_existing_store_open_to_others_is_tightened_on_open_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    env = lmdb.open(str(path), subdir=True, mode=0o755)  # as stores were made before: 0755 and 0644
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v")
    env.close()
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(path / name, 0o644)
    with caplog.at_level("WARNING", logger="trimicro.cluster.store"):
        store = LmdbStore(path)
        await store.aclose()
    assert (_mode(path), _mode(path / "data.mdb"), _mode(path / "lock.mdb")) == (0o700, 0o600, 0o600)
    warned = [r.getMessage() for r in caplog.records if r.name == "trimicro.cluster.store"]
    assert len(warned) == 3 and all("made it owner-only" in w for w in warned)
    assert str(path / "data.mdb") in " ".join(warned)
    caplog.clear()
    with caplog.at_level("WARNING", logger="trimicro.cluster.store"):  # once tightened, nothing to say
        await LmdbStore(path).aclose()
    assert not [r for r in caplog.records if r.name == "trimicro.cluster.store"]


# --------------------------------------------------------------------------------------------
# Namespaces per call and versions: what only LMDB's format and limits can show


async def test_lmdb_namespaces_are_bounded_and_a_refusal_fails_only_that_write(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "db", max_namespaces=3, sync=False)  # its own table is one
    try:
        await store.write(Record("k", b"1"), table="t1")
        await store.write(Record("k", b"2"), table="t2")
        results: dict[str, BaseException | None] = {}

        async def write(name: str, table: str | None) -> None:
            try:
                await store.write(Record(name, b"x"), table=table)
                results[name] = None
            except BadRequest as exc:
                results[name] = exc

        async with trio.open_nursery() as nursery:  # one group-commit batch, most likely
            nursery.start_soon(write, "own", None)
            nursery.start_soon(write, "too-many", "t3")
            nursery.start_soon(write, "known", "t1")
        assert results["own"] is None and results["known"] is None
        assert "max_dbs" in str(results["too-many"])
        assert await store.list(table="t1") == ["k", "known"]
        assert await store.list() == ["own"]
        # Reads of an absent namespace create nothing: the limit is not reached by reading.
        assert await store.list(table="t4") == []
    finally:
        await store.aclose()


async def test_lmdb_reads_a_record_stored_before_versions_as_version_1(tmp_path: Path) -> None:
    import msgpack

    env = lmdb.open(str(tmp_path / "db"), max_dbs=4, subdir=True)
    with env.begin(write=True) as txn:
        db = env.open_db(b"trimicro/default", txn=txn)
        txn.put(b"old", msgpack.packb({"v": b"before", "m": {"a": "b"}, "e": None}), db=db)
    env.close()
    store = LmdbStore(tmp_path / "db")
    try:
        [record] = await store.read("old")
        assert (record.value, dict(record.metadata), record.version) == (b"before", {"a": "b"}, 1)
        with pytest.raises(Conflict):
            await store.write(Record("old", b"x"), if_version=0)
        await store.write(Record("old", b"after"), if_version=1)
        [record] = await store.read("old")
        assert record.value == b"after" and record.version > 1
    finally:
        await store.aclose()
    # The stored value stays a plain msgpack map (what mdb_dump shows), now with its version.
    env = lmdb.open(str(tmp_path / "db"), max_dbs=4, subdir=True, readonly=True)
    with env.begin() as txn:
        data = txn.get(b"old", db=env.open_db(b"trimicro/default", txn=txn, create=False))
    env.close()
    assert msgpack.unpackb(data) == {"n": record.version, "v": b"after", "m": {}, "e": None}
