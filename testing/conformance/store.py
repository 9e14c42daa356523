"""The store conformance suite: :class:`StoreConformance`, and the clocks its TTL checks use."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from trimicro.cluster.store import Record, Store
from trimicro.mailbox.errors import BadRequest, Conflict, MicroError, NotFound

__all__ = ["ManualClock", "OpenStore", "StoreConformance", "WallClock"]

#: The fixture ``open_store``: ``open_store(database=..., table=...)`` returns a store (or an
#: awaitable of one) for that namespace, measuring time with the ``clock`` fixture.
OpenStore = Callable[..., "Store | Awaitable[Store]"]


class ManualClock:
    """Unix time that moves only when told: ``clock()`` reads it, ``await clock.advance(s)`` moves it.

    Give it to a store that takes its notion of "now" as a callable (as ``MemoryStore`` and
    ``LmdbStore`` do with ``now=``): the TTL checks then run instantly and exactly.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        await trio.lowlevel.checkpoint()


class WallClock:
    """Real unix time, for a store that cannot be given a clock: ``advance`` lets the time pass.

    (The wait is the passage of time under test, not a synchronisation.) ``grace`` is added to
    every wait, for a store whose expiry is coarser than the suite's TTLs."""

    def __init__(self, grace: float = 0.05) -> None:
        self.grace = grace

    def __call__(self) -> float:
        return time.time()

    async def advance(self, seconds: float) -> None:
        await trio.sleep(seconds + self.grace)


Clock = ManualClock | WallClock


async def _opened(open_store: OpenStore, database: str, table: str) -> Store:
    store = open_store(database=database, table=table)
    if inspect.isawaitable(store):
        store = await store
    return store


async def _write_all(store: Store, keys: list[str]) -> None:
    for key in keys:
        await store.write(Record(key, key.encode()))


class StoreConformance:
    """What every :class:`~trimicro.cluster.store.Store` must do (Go Micro's store).

    **Fixtures to override.**

    * ``open_store`` (required): returns a callable ``open_store(database=..., table=...)``
      giving a store (or an awaitable of one) for that namespace, empty at the start of each
      check, that measures time with the ``clock`` fixture. The suite closes what it opens.
    * ``clock`` (optional): a :class:`ManualClock` by default. A store that cannot be given a
      clock overrides it to return a :class:`WallClock` (and may raise ``ttl``).

    **Knobs (class attributes).** ``ttl``: the TTL, in seconds, the expiry checks write with.
    ``durable``: True if a store opened again (by ``open_store``, after ``aclose``) holds what
    was written before (then its records and their versions are checked to survive that).
    ``contenders``: how many tasks race one compare-and-swap.

    **Promises checked.** A written record reads back whole (value bytes, metadata) and a write
    replaces the whole record; a missing key raises ``NotFound`` and a delete of one is a no-op;
    read and list take Go Micro's options: ``prefix``, ``suffix`` (both together: both must
    hold), ``limit`` (``None``: no limit) and ``offset``, over keys in order of their UTF-8 bytes;
    a write's ``ttl`` (relative) or the record's ``expiry`` (absolute unix seconds; ``ttl``
    wins) makes a record vanish from reads, scans and pages at that time and not before, and a
    later write without either keeps it forever; the (database, table) namespaces never see each
    other's keys, and every call may name another namespace (``database=``/``table=``, Go
    Micro's ``ReadFrom``/``WriteTo``/``DeleteFrom``/``ListFrom``) that the store's own never sees;
    a read gives each record a ``version`` > 0 that grows with every write of its key and never
    repeats, even across a delete; ``write(..., if_version=N)`` writes only if the key's version
    is ``N`` (0: absent or expired) and raises ``Conflict`` otherwise, changing nothing, and of
    N concurrent ones at one version exactly one wins; bad arguments raise ``BadRequest``; a
    closed store refuses every call with a :class:`~trimicro.mailbox.errors.MicroError` and
    closing twice is harmless.
    """

    pytestmark = pytest.mark.trio

    ttl: float = 10.0
    durable: bool = False
    contenders: int = 16

    @pytest.fixture
    def open_store(self) -> OpenStore:
        raise NotImplementedError(
            f"{type(self).__name__}: override the `open_store` fixture (see StoreConformance's docstring)"
        )

    @pytest.fixture
    def clock(self) -> Clock:
        return ManualClock()

    @pytest.fixture
    async def store(self, open_store: OpenStore) -> AsyncIterator[Store]:
        store = await _opened(open_store, "conformance", "default")
        try:
            yield store
        finally:
            await store.aclose()

    # ---- write, read, delete ---------------------------------------------------------------------

    async def test_a_record_reads_back_whole(self, store: Store) -> None:
        value = bytes(range(256))  # every byte value, NULs included
        await store.write(Record("k", value, {"content-type": "application/octet-stream", "ü": "é"}))
        [record] = await store.read("k")
        assert (record.key, record.value, dict(record.metadata), record.expiry) == (
            "k",
            value,
            {"content-type": "application/octet-stream", "ü": "é"},
            None,
        )
        await store.write(Record("empty", b""))
        assert (await store.read("empty"))[0].value == b""

    async def test_a_write_replaces_the_whole_record(self, store: Store) -> None:
        await store.write(Record("k", b"one", {"a": "1", "b": "2"}))
        await store.write(Record("k", b"two", {"c": "3"}))
        [record] = await store.read("k")
        assert (record.value, dict(record.metadata)) == (b"two", {"c": "3"})
        assert await store.list() == ["k"]

    async def test_a_missing_key_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.read("missing")
        assert await store.read("missing", prefix=True) == []
        assert await store.list(prefix="missing") == []

    async def test_delete_removes_one_key_and_a_missing_key_is_a_no_op(self, store: Store) -> None:
        await _write_all(store, ["user", "user/1", "user/2"])
        await store.delete("user/1")
        with pytest.raises(NotFound):
            await store.read("user/1")
        assert await store.list() == ["user", "user/2"]
        await store.delete("user/1")  # gone already
        await store.delete("never")
        assert await store.list() == ["user", "user/2"]

    # ---- read and list options ---------------------------------------------------------------------

    async def test_keys_come_in_order_of_their_utf8_bytes(self, store: Store) -> None:
        keys = ["b", "a", "ab", "a/b", "A", "é", "z", "日本", "a b", "aa", "\U0001f600", "ä"]
        await _write_all(store, keys)
        expected = sorted(keys, key=lambda k: k.encode())
        assert await store.list() == expected
        assert [r.key for r in await store.read("", prefix=True)] == expected

    async def test_prefix_and_suffix(self, store: Store) -> None:
        keys = ["order/1", "order/2", "user/1", "user/2", "user/3", "users", "x/user/1", "ab", "abab", "abc"]
        await _write_all(store, keys)
        assert await store.list(prefix="user/") == ["user/1", "user/2", "user/3"]
        assert await store.list(suffix="/1") == ["order/1", "user/1", "x/user/1"]
        assert await store.list(prefix="user/", suffix="2") == ["user/2"]
        assert [r.key for r in await store.read("user/", prefix=True)] == ["user/1", "user/2", "user/3"]
        records = await store.read("/2", suffix=True)
        assert [(r.key, r.value) for r in records] == [("order/2", b"order/2"), ("user/2", b"user/2")]
        # Both options on a read use the one key for both ends (Go Micro's ReadPrefix + ReadSuffix).
        assert [r.key for r in await store.read("ab", prefix=True, suffix=True)] == ["ab", "abab"]
        assert await store.list(prefix="nothing") == []

    async def test_limit_and_offset_page_through_the_keys(self, store: Store) -> None:
        keys = [f"item/{i:03d}" for i in range(25)] + ["other"]
        await _write_all(store, keys)
        items = keys[:25]
        assert await store.list(prefix="item/") == items
        assert await store.list(prefix="item/", limit=None) == items
        pages = [await store.list(prefix="item/", limit=7, offset=o) for o in range(0, 28, 7)]
        assert [len(p) for p in pages] == [7, 7, 7, 4]
        assert [k for page in pages for k in page] == items
        assert await store.list(prefix="item/", offset=30) == []
        assert await store.list(limit=2) == ["item/000", "item/001"]
        assert await store.list(offset=25) == ["other"]
        records = await store.read("item/", prefix=True, limit=3, offset=10)
        assert [(r.key, r.value) for r in records] == [(k, k.encode()) for k in items[10:13]]
        assert [r.key for r in await store.read("9", suffix=True, limit=1, offset=1)] == ["item/019"]

    # ---- TTL and expiry ------------------------------------------------------------------------------

    async def test_a_ttl_expires_the_record_then_and_not_before(self, store: Store, clock: Clock) -> None:
        start = clock()
        await store.write(Record("short", b"s", {"m": "v"}), ttl=self.ttl)
        await store.write(Record("forever", b"f"))
        [record] = await store.read("short")
        assert record.expiry is not None and start + self.ttl <= record.expiry <= clock() + self.ttl
        await clock.advance(self.ttl / 2)
        assert (await store.read("short"))[0].value == b"s"
        await clock.advance(self.ttl / 2)
        with pytest.raises(NotFound):
            await store.read("short")
        assert await store.list() == ["forever"]
        assert [r.key for r in await store.read("", prefix=True)] == ["forever"]
        assert [r.key for r in await store.read("t", suffix=True)] == []

    async def test_an_absolute_expiry_is_kept_and_a_ttl_wins_over_it(
        self, store: Store, clock: Clock
    ) -> None:
        at = clock() + self.ttl
        await store.write(Record("abs", b"a", expiry=at))
        await store.write(Record("both", b"b", expiry=clock() + 100 * self.ttl), ttl=self.ttl)
        assert (await store.read("abs"))[0].expiry == pytest.approx(at)
        await store.write(Record("past", b"p", expiry=clock() - 1))  # already expired: never seen
        with pytest.raises(NotFound):
            await store.read("past")
        await clock.advance(self.ttl)
        assert await store.list() == []

    async def test_a_write_without_ttl_makes_a_record_permanent_again(
        self, store: Store, clock: Clock
    ) -> None:
        await store.write(Record("k", b"1"), ttl=self.ttl)
        await store.write(Record("k", b"2"))
        assert (await store.read("k"))[0].expiry is None
        await clock.advance(self.ttl * 2)
        assert (await store.read("k"))[0].value == b"2"
        await store.write(Record("gone", b"x"), ttl=self.ttl)
        await clock.advance(self.ttl)
        await store.write(Record("gone", b"back"))  # a lapsed key can be written again
        assert (await store.read("gone"))[0].value == b"back"

    async def test_expired_records_take_no_place_in_a_page(self, store: Store, clock: Clock) -> None:
        for i in range(10):
            ttl = self.ttl if i % 2 else None  # odd ones lapse
            await store.write(Record(f"p/{i}", b"x"), ttl=ttl)
        await clock.advance(self.ttl)
        assert await store.list(prefix="p/", limit=2, offset=1) == ["p/2", "p/4"]
        records = await store.read("p/", prefix=True, limit=3, offset=2)
        assert [r.key for r in records] == ["p/4", "p/6", "p/8"]

    # ---- namespaces -----------------------------------------------------------------------------------

    async def test_databases_and_tables_do_not_see_each_other(self, open_store: OpenStore) -> None:
        namespaces = [("db", "a"), ("db", "b"), ("other", "a"), ("db/a", "x"), ("db", "a/x")]
        stores: list[Store] = []
        try:
            for database, table in namespaces:
                store = await _opened(open_store, database, table)
                stores.append(store)
                await store.write(Record("k", f"{database}|{table}".encode()))
            for (database, table), store in zip(namespaces, stores, strict=True):
                assert [(r.key, r.value) for r in await store.read("k", prefix=True)] == [
                    ("k", f"{database}|{table}".encode())
                ], (database, table)
            await stores[1].delete("k")
            assert (await stores[0].read("k"))[0].value == b"db|a"
            with pytest.raises(NotFound):
                await stores[1].read("k")
        finally:
            for store in stores:
                await store.aclose()

    async def test_a_call_may_name_another_namespace(self, store: Store) -> None:
        other: dict[str, Any] = {"database": "conformance-other", "table": "t"}
        await store.write(Record("k", b"own"))
        await store.write(Record("k", b"other", {"m": "1"}), **other)
        await store.write(Record("only-there", b"x"), table="second")
        assert (await store.read("k"))[0].value == b"own"
        [record] = await store.read("k", **other)
        assert (record.value, dict(record.metadata)) == (b"other", {"m": "1"})
        assert await store.list() == ["k"]
        assert await store.list(**other) == ["k"]
        assert await store.list(table="second") == ["only-there"]
        assert [r.key for r in await store.read("", prefix=True, table="second")] == ["only-there"]
        # The store's own names, given explicitly, are its own namespace.
        assert await store.list(database="conformance", table="default") == ["k"]
        await store.delete("k", **other)
        assert await store.list(**other) == []
        assert (await store.read("k"))[0].value == b"own"
        # A namespace nobody wrote holds nothing.
        with pytest.raises(NotFound):
            await store.read("k", database="never", table="written")
        assert await store.list(database="never", table="written") == []
        assert await store.read("k", prefix=True, database="never") == []
        await store.delete("k", database="never")
        bads: list[dict[str, Any]] = [
            {"database": ""},
            {"table": ""},
            {"table": "a\x00b"},
            {"database": "x" * 1000},
        ]
        for bad in bads:
            with pytest.raises(BadRequest):
                await store.write(Record("k", b"v"), **bad)
            with pytest.raises(BadRequest):
                await store.list(**bad)

    # ---- versions and compare-and-swap ------------------------------------------------------------

    async def test_versions_grow_with_every_write_and_never_repeat(self, store: Store) -> None:
        seen: list[int] = []
        for value in (b"1", b"2", b"3"):
            await store.write(Record("k", value))
            seen.append((await store.read("k"))[0].version)
        await store.delete("k")
        await store.write(Record("k", b"again"))
        seen.append((await store.read("k"))[0].version)
        assert seen[0] > 0 and seen == sorted(set(seen)), seen
        [scanned] = await store.read("k", prefix=True)
        assert scanned.version == seen[-1]

    async def test_compare_and_swap(self, store: Store, clock: Clock) -> None:
        await store.write(Record("k", b"first"), if_version=0)  # create if absent
        with pytest.raises(Conflict):
            await store.write(Record("k", b"again"), if_version=0)
        [record] = await store.read("k")
        assert record.value == b"first"
        await store.write(Record("k", b"second"), if_version=record.version)  # update at its version
        [now] = await store.read("k")
        assert now.value == b"second" and now.version > record.version
        with pytest.raises(Conflict):
            await store.write(Record("k", b"stale"), if_version=record.version)
        with pytest.raises(Conflict):
            await store.write(Record("k", b"made-up"), if_version=now.version + 1000)
        assert (await store.read("k"))[0].value == b"second"
        await store.delete("k")
        with pytest.raises(Conflict):
            await store.write(Record("k", b"gone"), if_version=now.version)
        await store.write(Record("k", b"back"), if_version=0)
        # An expired record is absent: a create-if-absent takes its place.
        await store.write(Record("lapsing", b"1"), ttl=self.ttl)
        await clock.advance(self.ttl)
        await store.write(Record("lapsing", b"2"), if_version=0)
        assert (await store.read("lapsing"))[0].value == b"2"
        # In another namespace too, and namespaces have their own keys' versions.
        await store.write(Record("k", b"there"), if_version=0, table="cas")
        [there] = await store.read("k", table="cas")
        await store.write(Record("k", b"there2"), if_version=there.version, table="cas")
        with pytest.raises(BadRequest):
            await store.write(Record("k", b"v"), if_version=-1)

    async def test_concurrent_compare_and_swap_has_one_winner_per_version(self, store: Store) -> None:
        await store.write(Record("counter", b"0"))
        for _ in range(3):
            [record] = await store.read("counter")
            won: list[int] = []
            lost: list[int] = []

            async def contend(
                i: int, version: int = record.version, won: list[int] = won, lost: list[int] = lost
            ) -> None:
                try:
                    await store.write(Record("counter", str(i).encode()), if_version=version)
                    won.append(i)
                except Conflict:
                    lost.append(i)

            async with trio.open_nursery() as nursery:
                for i in range(self.contenders):
                    nursery.start_soon(contend, i)
            assert len(won) == 1 and len(lost) == self.contenders - 1, (won, lost)
            [after] = await store.read("counter")
            assert after.value == str(won[0]).encode() and after.version > record.version

    async def test_records_and_versions_survive_reopening(self, open_store: OpenStore) -> None:
        if not self.durable:
            pytest.skip("not a durable store (durable = False)")
        store = await _opened(open_store, "conformance", "durable")
        try:
            await store.write(Record("k", b"v"))
            await store.write(Record("k", b"v2"), table="durable-other")
            [before] = await store.read("k")
        finally:
            await store.aclose()
        store = await _opened(open_store, "conformance", "durable")
        try:
            [after] = await store.read("k")
            assert (after.value, after.version) == (b"v", before.version)
            with pytest.raises(Conflict):
                await store.write(Record("k", b"w"), if_version=0)
            await store.write(Record("k", b"w"), if_version=before.version)
            assert (await store.read("k"))[0].version > before.version
            assert (await store.read("k", table="durable-other"))[0].value == b"v2"
        finally:
            await store.aclose()

    # ---- bad input and closing ---------------------------------------------------------------------

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param(lambda s: s.read(""), id="read-empty-key"),
            pytest.param(lambda s: s.write(Record("", b"x")), id="write-empty-key"),
            pytest.param(
                lambda s: s.write(Record("k", "text")),  # type: ignore[arg-type]
                id="write-str-value",
            ),
            pytest.param(lambda s: s.write(Record("k", b"x"), ttl=0), id="write-zero-ttl"),
            pytest.param(lambda s: s.write(Record("k", b"x"), ttl=-1), id="write-negative-ttl"),
            pytest.param(lambda s: s.delete(""), id="delete-empty-key"),
            pytest.param(lambda s: s.list(limit=-1), id="list-negative-limit"),
            pytest.param(lambda s: s.list(offset=-1), id="list-negative-offset"),
            pytest.param(lambda s: s.read("k", prefix=True, offset=-1), id="read-negative-offset"),
        ],
    )
    async def test_bad_arguments_are_refused(self, store: Store, call: Callable[[Store], Any]) -> None:
        with pytest.raises(BadRequest):
            await call(store)
        assert await store.list() == []

    async def test_a_closed_store_refuses_every_call(self, open_store: OpenStore) -> None:
        store = await _opened(open_store, "conformance", "closing")
        await store.write(Record("k", b"v"))
        await store.aclose()
        for call in (
            lambda: store.read("k"),
            lambda: store.read("k", prefix=True),
            lambda: store.write(Record("k", b"w")),
            lambda: store.delete("k"),
            lambda: store.list(),
            lambda: store.read("k", table="elsewhere"),
            lambda: store.write(Record("k", b"w"), table="elsewhere"),
            lambda: store.write(Record("k", b"w"), if_version=1),
            lambda: store.list(table="elsewhere"),
        ):
            with pytest.raises(MicroError):
                await call()
        await store.aclose()  # twice is harmless
