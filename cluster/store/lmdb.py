"""The default store: Go Micro's ``store`` interface on LMDB, trio-native.

Why LMDB: it is an embedded, memory-mapped B+tree with copy-on-write pages. A commit either
lands whole or not at all, so a killed process (even ``SIGKILL`` mid-write) leaves the last
committed state intact: there is no log to replay and no repair step on open. Readers use MVCC
snapshots: a read-only transaction sees one consistent version of the database and never
blocks, nor is blocked by, the single writer.

Group commit and map growth: see :mod:`.lmdb_env` (one writer thread per environment takes
every write queued so far into one transaction, so concurrent writes share one ``fsync``; a
full map is doubled and the batch retried, up to ``max_map_size``).

Reads: a point read is a snapshot lookup on the trio thread itself when no map resize holds the
lock (microseconds, no round trip through the writer or a thread); otherwise, and for every
scan, the read runs in ``trio.to_thread.run_sync`` with its own read-only transaction, so a
long scan never stalls the trio loop. The trade-off: a cold point read may page-fault on the
memory map (disk I/O) on the trio thread; on a warm store a point read costs microseconds
instead of a thread hop (tens of microseconds). Such a read is a checkpoint (cancellation, a
turn for other tasks) once every ``READ_YIELD_EVERY`` reads, not on each: like a sync call, a
read that need not wait completes even in a cancelled scope, and a loop of reads is still
cancelled and still fair within that bound. Records are immutable, so a point read keeps
the record it decoded (up to ``CACHE_RECORDS`` small ones) with the version of the database
it saw (the LMDB transaction id of its snapshot). Every read still opens a fresh snapshot; if
its version is the cached one, no commit has happened anywhere since (in this process or any
other) and the cached record is the answer; otherwise the stored bytes are fetched and the
cached record is reused only if they are unchanged. Never stale, and decoding was most of a
read's cost. The trio thread registers as a reader of the map (which a map resize waits for)
once per scheduler batch, not per read: the registration ends just before trio next waits
for I/O.

Durability: ``sync=True`` (the default) fsyncs every commit, so an acknowledged write survives
a process crash *and* an OS crash or power loss. ``sync=False`` skips the fsync: a process
crash still loses nothing acknowledged (the data is in the OS page cache), but an OS crash or
power loss can lose the last acknowledged transactions and, per LMDB's documentation of
``MDB_NOSYNC``, may even corrupt the database if the file system reorders writes.

Privacy and the stored format: see :mod:`.lmdb_layout` (the folder is owner-only; a value is a
msgpack map of version, value, metadata and expiry).

Versions (compare-and-swap): a record's ``version`` is the id of the LMDB write transaction
that wrote it. Transaction ids grow with every commit of the environment, from any process,
and persist in the file, so a key's version grows with every write and never repeats, even
across a delete and a re-create (no ABA), and it costs a plain write nothing: no read of the old
record. (A compacting copy, ``mdb_copy -c``, restarts the ids: versions written before it may
then repeat; copy without ``-c``.) Writes of one batch share the transaction and so its id; a
reader sees only committed state, so it never sees two values under one version. A
``write(..., if_version=N)`` reads the key's version inside the writer's transaction and writes
only if it is ``N`` (0: absent or expired), else that write alone fails with
:class:`Conflict`: the others of its batch commit. The stored value is a msgpack map
``{"n": version, "v": value, "m": metadata, "e": expiry}`` (``mdb_dump -a`` shows it, as it
always did); a record stored before versions existed has no ``"n"`` and reads as version 1.

Namespaces: each (database, table) is one LMDB named database. A call may name another
namespace than the store's own (Go Micro's ``ReadFrom``/``WriteTo``/...): a write creates it;
a read, list or delete of one that does not exist finds nothing and creates nothing. Named
databases are opened only on the writer thread, inside its write transaction (LMDB forbids
opening them from concurrent transactions), and the environment holds at most ``max_dbs``
of them: a write that would create one more is refused with :class:`BadRequest`, alone.

Other choices: ``delete`` of a missing key is a no-op (as in Go Micro's memory store); a
``write`` that is cancelled while waiting may still be committed; expired records are never
returned, and :meth:`LmdbStore.sweep` (run it periodically, e.g. with ``run_sweeper``) deletes
them; a suffix match scans the whole table. One process opens an LMDB environment once (LMDB
forbids opening it twice): stores on the same path share it, and the first opener's
``map_size``/``sync`` settings win.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb  # type: ignore[import-untyped, unused-ignore]
import trio

from trimicro.mailbox.errors import BadRequest, NotFound, ServiceUnavailable
from trimicro.mailbox.logs import get_logger

from . import (  # the records and checks both stores share
    MAX_NAMESPACES,
    GiB,
    MiB,
    Record,
    _Checks,
    _expired,
    _version_of,
    conflict,
)
from .lmdb_env import CLOSED, Closed, Env, Op, RWLock
from .lmdb_layout import HEAD, current_version, dbi_name, decode_record, encode_value
from .lmdb_scan import delete_expired, expired_keys, scan

__all__ = ["CACHE_RECORDS", "READ_YIELD_EVERY", "SWEEP_BATCH", "SWEEP_SCAN", "LmdbStore"]


log = get_logger(__package__)


_BUSY = object()  # a point read must go through a worker thread

#: A sweep looks at this many records per read snapshot and deletes at most this many per
#: write transaction (see ``LmdbStore.sweep``).
SWEEP_SCAN = 10_000
SWEEP_BATCH = 1_000

#: The point-read cache of decoded records (see ``LmdbStore.read``): at most this many records
#: of at most this many stored bytes each (so at most ~2 MiB per store, the bytes held twice).
CACHE_RECORDS = 1024
CACHE_RECORD_BYTES = 1024

#: Point reads served from the memory map between two checkpoints (see ``LmdbStore.read``):
#: a run of reads yields to other tasks, and sees a cancellation, at least this often.
READ_YIELD_EVERY = 128


_ident = threading.get_ident


class _LetGo(trio.abc.Instrument):
    """Ends a store's per-batch read registration when trio is about to wait for I/O."""

    def __init__(self, store: LmdbStore) -> None:
        # Weak: a store dropped without aclose must not live on in the trio run's instruments.
        self.store = weakref.ref(store)
        #: The environment's lock and whether the store holds a registration with it: kept
        #: here too, so that a store dropped in the middle of a batch is still let go of.
        self.rw = store._env.rw
        self.held = False

    def before_io_wait(self, timeout: float) -> None:
        store = self.store()
        if store is not None:
            store._let_go()
        elif self.held:
            self.held = False
            self.rw.release_shared()

    def after_run(self) -> None:
        self.before_io_wait(0)
        store = self.store()
        if store is not None:
            store._let_go_at_batch_end, store._owner = None, 0


_envs: dict[Path, Env] = {}
_envs_lock = threading.Lock()


class LmdbStore(_Checks):
    """A durable :class:`Store` on LMDB; see the module docstring for the design."""

    def __init__(
        self,
        path: Path,
        *,
        database: str = "trimicro",
        table: str = "default",
        map_size: int = 64 * MiB,
        max_map_size: int = 64 * GiB,
        sync: bool = True,
        max_key: int = 511,
        max_value: int = 16 * MiB,
        max_namespaces: int = MAX_NAMESPACES,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(database, table, max_key, max_value, now)
        if max_key > 511:
            raise BadRequest("max_key cannot exceed LMDB's key limit of 511 bytes")
        resolved = Path(path).resolve()
        with _envs_lock:
            env = _envs.get(resolved)
            if env is None:
                env = _envs[resolved] = Env(resolved, map_size, max_map_size, sync, max_namespaces)
            env.users += 1
            self._env = env
            self._dbi = env.dbi(dbi_name(database, table))
        self._closed = False
        #: 0 once every READ_YIELD_EVERY calls (cheaper than a counter attribute).
        self._tick = itertools.cycle(range(READ_YIELD_EVERY)).__next__
        #: Decoded records of recent point reads, by key, with the stored bytes they came from.
        #: Each with the version (LMDB transaction id) of the snapshot it was last seen in.
        self._cache: dict[str, tuple[bytes, bytes, Record, int]] = {}
        self._rw: RWLock | Closed = env.rw
        self._begin = env.env.begin
        #: The thread whose trio run holds this store's read registration (0: none), and the
        #: thread whose trio run may take it (its instrument ends it): see _hold.
        self._held = 0
        self._owner = 0
        self._let_go_at_batch_end: _LetGo | None = None

    @property
    def map_size(self) -> int:
        """The LMDB map's current size in bytes (it grows as needed)."""
        size: int = self._env.env.info()["map_size"]
        return size

    @property
    def commits(self) -> int:
        """Write transactions committed by this environment's writer (for measuring group commit)."""
        return self._env.commits

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("store is closed")

    async def _submit(self, apply: Callable[[Any], Any]) -> Any:
        self._check_open()
        op = Op(apply)
        self._env.submit(op)
        await op.event.wait()
        if op.error is not None:
            raise op.error
        return op.result

    @trio.lowlevel.enable_ki_protection
    def _hold(self) -> bool:
        """Register the trio thread as a reader of the map until its scheduler batch ends.

        A map resize must not run under a read (it unmaps the memory the read looks at), so
        a reader registers with the environment's lock; doing that once per scheduler batch
        rather than once per read took a fifth off a point read. The registration ends just
        before trio next waits for I/O (a trio instrument) and at every READ_YIELD_EVERY-th
        read's checkpoint, so a resize (the writer growing the map) waits for at most that.
        The price: a task that blocks the trio thread (synchronous work, no await) after a
        point read also holds off map growth, and so the store's writes, until it yields.
        False (take the slow path) when a resize runs or waits, outside a trio run, or in a
        trio run other than the one that first read through this store's fast path.
        """
        me, rw = _ident(), self._rw
        if not rw.mutex.acquire(False):
            return False
        try:
            if rw.writer or rw.waiting or self._owner not in (0, me):
                return False
            let_go = self._let_go_at_batch_end
            if not self._owner:
                let_go = _LetGo(self)
                try:
                    trio.lowlevel.add_instrument(let_go)
                except RuntimeError:  # not in a trio run
                    return False
                self._let_go_at_batch_end, self._owner = let_go, me
            rw._readers += 1
            self._held = me
            if let_go is not None:
                let_go.held = True
            return True
        finally:
            rw.mutex.release()

    @trio.lowlevel.enable_ki_protection
    def _let_go(self) -> None:
        """End the registration of :meth:`_hold` (only on the thread that holds it)."""
        if self._held and self._held == _ident():
            self._held = 0
            let_go = self._let_go_at_batch_end
            if let_go is not None:
                let_go.held = False
            self._env.rw.release_shared()

    def _read_txn(self, fn: Callable[[Any], Any], dbi: Any = None) -> Any:
        """Run ``fn(txn)`` in a read-only MVCC snapshot (on a worker thread)."""
        while True:
            try:
                with self._env.rw.shared(), self._env.env.begin(db=self._dbi if dbi is None else dbi) as txn:
                    return fn(txn)
            except lmdb.MapResizedError:
                with self._env.rw.exclusive():
                    self._env.env.set_mapsize(0)

    async def _reading(self, ns: tuple[str, str] | None) -> Any:
        """The handle of a namespace to read (None: it does not exist, so it holds nothing)."""
        if ns is None:
            return self._dbi
        name = dbi_name(*ns)
        dbi = self._env.dbis.get(name)
        if dbi is None and await trio.to_thread.run_sync(self._env.exists, name):
            env = self._env
            dbi = await self._submit(lambda txn: env.open_in(txn, name, False))
            if dbi is not None:
                env.dbis[name] = dbi  # committed: the handle lives on
        return dbi

    async def _apply(self, ns: tuple[str, str] | None, create: bool, fn: Callable[[Any, Any], Any]) -> None:
        """Run ``fn(txn, dbi)`` in the writer's transaction, on the namespace ``ns`` (None: the
        store's own), opened there first if need be (with ``create``, made if absent)."""
        if ns is None:
            dbi = self._dbi
            await self._submit(lambda txn: fn(txn, dbi))
            return
        env, name = self._env, dbi_name(*ns)

        def apply(txn: Any) -> Any:
            dbi = env.open_in(txn, name, create)
            if dbi is not None:
                fn(txn, dbi)
            return dbi

        dbi = await self._submit(apply)
        if dbi is not None and name not in env.dbis:
            env.dbis[name] = dbi  # committed: the handle lives on

    def _remember(self, key: str, raw: bytes, data: bytes, record: Record, version: int) -> None:
        """Cache a decoded record of at most CACHE_RECORD_BYTES stored bytes (the oldest goes)."""
        if len(data) <= CACHE_RECORD_BYTES and self._owner in (0, _ident()):
            # (Only the trio run that owns the fast path fills the cache: one writer.)
            cache = self._cache
            if len(cache) >= CACHE_RECORDS:
                # The older half goes at once, into a fresh dict: deleting the oldest entry
                # one at a time leaves the dict's front full of holes that every later
                # "oldest" lookup walks over (that walk cost more than the read).
                cache = self._cache = dict(itertools.islice(cache.items(), len(cache) // 2, None))
            cache[key] = (raw, data, record, version)

    async def read(
        self,
        key: str,
        *,
        prefix: bool = False,
        suffix: bool = False,
        limit: int | None = None,
        offset: int = 0,
        database: str | None = None,
        table: str | None = None,
    ) -> builtins.list[Record]:
        self.reads += 1
        if (
            not (prefix or suffix or limit is not None or offset)
            and type(key) is str
            and database is None
            and table is None
        ):
            # The hot path, written out in one function (a point read costs a few microseconds,
            # so every call counts): no thread hop, no scheduler trip, no lock (the trio thread
            # registers as a reader once per scheduler batch: a map resize waits for that).
            # Records are immutable, so the one decoded last time is returned again while the
            # database is the same version (LMDB's transaction id of the snapshot: any commit,
            # from any process, changes it), without even a lookup; after a commit, while the
            # stored bytes are the same: decoding was most of a read's cost.
            cache = self._cache
            hit = cache.get(key)
            if hit is not None:
                raw = hit[0]
            else:
                try:
                    raw = key.encode()
                except UnicodeEncodeError:
                    raw = b""
                if len(raw) > self.max_key:
                    raw = b""  # the slow path reports it
            if raw:
                data: Any = _BUSY
                record: Record | None = None
                # The read registration (see _hold) is per scheduler batch, not per read.
                if (self._held == _ident() and not self._closed) or self._hold():
                    try:
                        txn = self._begin()
                        try:
                            version = txn.id()
                            if hit is not None and hit[3] == version:
                                record, data = hit[2], hit[1]  # the database has not changed since
                            else:
                                data = txn.get(raw, None, self._dbi)  # positional: measurably cheaper
                        finally:
                            txn.abort()
                    except lmdb.Error:
                        data = _BUSY  # a map resized by another process, or worse: the slow path reports it
                if data is not _BUSY:
                    if record is None and data is not None:
                        if hit is not None and hit[1] == data:
                            record = hit[2]
                            cache[key] = (raw, data, record, version)
                        else:
                            record = decode_record(raw, data)
                            self._remember(key, raw, data, record, version)
                    # A full checkpoint (cancellation and a turn for other tasks) every
                    # READ_YIELD_EVERY reads, not a cancellation check on each: that check
                    # cost a fifth of a read.
                    if not self._tick():
                        self._let_go()  # a resize waiting in a long run of reads gets its turn
                        await trio.lowlevel.checkpoint()
                    if record is not None and (record.expiry is None or record.expiry > self.now()):
                        return [record]
                    raise NotFound(f"store key {key!r} not found")
        return await self._read_slowly(key, prefix, suffix, limit, offset, database, table)

    async def _read_slowly(
        self,
        key: str,
        prefix: bool,
        suffix: bool,
        limit: int | None,
        offset: int,
        database: str | None,
        table: str | None,
    ) -> builtins.list[Record]:
        """A read that :meth:`read`'s fast path does not answer (a method of its own: its
        closures would make every point read allocate cells for the variables they share)."""
        self._check_open()
        self._page(limit, offset)
        ns = None if database is None and table is None else self._namespace(database, table)
        now = self.now()
        if not (prefix or suffix):
            # Here when the fast path above could not answer: a key it will not take (the
            # check raises the clear error), a map resize holding the lock (a worker thread
            # waits for it), or another namespace.
            raw = self._key(key)
            dbi = await self._reading(ns)
            data = None
            if dbi is not None:
                data = await trio.to_thread.run_sync(self._read_txn, lambda txn: txn.get(raw, db=dbi), dbi)
            if data is None:
                raise NotFound(f"store key {key!r} not found")
            record = decode_record(raw, data)
            if _expired(record.expiry, now):
                raise NotFound(f"store key {key!r} not found")
            return [record]
        affix = self._affix(key, "key")
        pre, suf = (affix if prefix else b""), (affix if suffix else b"")
        dbi = self._dbi if ns is None else await self._reading(ns)  # no coroutine for the own table
        if dbi is None:
            return []
        cache = self._cache if dbi is self._dbi else {}  # the cache holds the store's own table
        found, fresh = await trio.to_thread.run_sync(
            self._read_txn, lambda txn: scan(txn, dbi, cache, pre, suf, now, limit, offset, True), dbi
        )
        for fresh_key, fresh_raw, fresh_data, fresh_record, fresh_version in (
            fresh if dbi is self._dbi else ()
        ):
            self._remember(fresh_key, fresh_raw, fresh_data, fresh_record, fresh_version)
        return [record for _, record in found if record is not None]

    async def write(
        self,
        record: Record,
        *,
        ttl: float | None = None,
        if_version: int | None = None,
        database: str | None = None,
        table: str | None = None,
    ) -> None:
        self.writes += 1
        raw, rec = self._record(record, ttl)
        body = encode_value(rec)
        if if_version is None and database is None and table is None:  # the common write: no closure cells
            dbi = self._dbi
            await self._submit(lambda txn: txn.put(raw, HEAD + txn.id().to_bytes(8, "big") + body, db=dbi))
            return
        want, key, now = _version_of(if_version), rec.key, self.now()

        def put(txn: Any, dbi: Any) -> None:
            if want is not None:
                have = current_version(key, txn.get(raw, None, dbi), now)
                if have != want:
                    raise conflict(key, want, have)  # before writing anything: this write alone fails
            txn.put(raw, HEAD + txn.id().to_bytes(8, "big") + body, db=dbi)

        await self._apply(self._namespace(database, table), True, put)

    async def delete(self, key: str, *, database: str | None = None, table: str | None = None) -> None:
        self.deletes += 1
        raw = self._key(key)
        await self._apply(self._namespace(database, table), False, lambda txn, dbi: txn.delete(raw, db=dbi))

    async def list(
        self,
        *,
        prefix: str = "",
        suffix: str = "",
        limit: int | None = None,
        offset: int = 0,
        database: str | None = None,
        table: str | None = None,
    ) -> builtins.list[str]:
        self.lists += 1
        self._check_open()
        self._page(limit, offset)
        pre, suf, now = self._affix(prefix, "prefix"), self._affix(suffix, "suffix"), self.now()
        if database is None and table is None:  # the store's own table: no coroutine to find it
            dbi = self._dbi
        else:
            dbi = await self._reading(self._namespace(database, table))
        if dbi is None:
            await trio.lowlevel.checkpoint()
            return []
        cache = self._cache if dbi is self._dbi else {}  # the cache holds the store's own table
        found, _ = await trio.to_thread.run_sync(
            self._read_txn, lambda txn: scan(txn, dbi, cache, pre, suf, now, limit, offset, False), dbi
        )
        return [raw.decode() for raw, _ in found]

    async def sweep(self) -> int:
        """Delete expired records of this table; return how many.

        In chunks, so neither memory nor the writer's hold grows with the table: a read snapshot
        in a worker thread looks at up to SWEEP_SCAN records and picks up to SWEEP_BATCH expired
        keys, then one write transaction deletes those that are still expired (a record
        rewritten meanwhile stays), and the scan goes on from where it stopped.
        """
        dbi, total, start = self._dbi, 0, b""
        while True:
            now = self.now()
            dead, resume = await trio.to_thread.run_sync(
                self._read_txn,
                functools.partial(
                    expired_keys, dbi=dbi, start=start, now=now, scan=SWEEP_SCAN, batch=SWEEP_BATCH
                ),
            )
            if dead:
                total += await self._submit(functools.partial(delete_expired, dbi=dbi, dead=dead, now=now))
            if resume is None:
                return total
            start = resume

    async def run_sweeper(self, interval: float) -> None:
        """Run :meth:`sweep` every ``interval`` seconds, forever (start it in a nursery)."""
        while True:
            await trio.sleep(interval)
            await self.sweep()

    async def aclose(self) -> None:
        """Close this store; the environment closes (after its queued writes) with its last user."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._rw = CLOSED  # the point-read fast path never gets in; the slow path says closed
        self._let_go()
        let_go = self._let_go_at_batch_end
        if let_go is not None and self._owner == _ident():  # else the owner's run still ends it
            self._let_go_at_batch_end, self._owner = None, 0
            with contextlib.suppress(KeyError, RuntimeError):
                trio.lowlevel.remove_instrument(let_go)
        with _envs_lock:
            self._env.users -= 1
            last = self._env.users == 0
            if last:
                del _envs[self._env.path]
        if last:
            with trio.CancelScope(shield=True):
                await self._env.close()
        else:
            await trio.lowlevel.checkpoint()
