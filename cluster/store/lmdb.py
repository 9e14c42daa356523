"""The default store: Go Micro's ``store`` interface on LMDB, trio-native.

Why LMDB: it is an embedded, memory-mapped B+tree with copy-on-write pages. A commit either
lands whole or not at all, so a killed process (even ``SIGKILL`` mid-write) leaves the last
committed state intact: there is no log to replay and no repair step on open. Readers use MVCC
snapshots: a read-only transaction sees one consistent version of the database and never
blocks, nor is blocked by, the single writer.

Group commit: LMDB allows one write transaction at a time and, with ``sync=True``, each commit
costs an ``fsync``. All writes of an environment therefore go to ONE dedicated writer thread,
which takes every write queued so far and applies them in ONE write transaction: many
concurrent ``await store.write(...)`` calls share one ``fsync``, and each caller is woken (via
its trio token) only once the transaction holding its write has committed. Write transactions
are opened and committed on that thread only, as LMDB requires.

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

Map growth: LMDB needs a map size up front. When a write transaction hits
``MapFullError`` it is aborted (nothing is written), the map is doubled (readers are held off
while it is remapped) and the batch is retried, up to ``max_map_size``; beyond that the writes
that do not fit fail with :class:`InternalServerError` and the store stays usable.

Durability: ``sync=True`` (the default) fsyncs every commit, so an acknowledged write survives
a process crash *and* an OS crash or power loss. ``sync=False`` skips the fsync: a process
crash still loses nothing acknowledged (the data is in the OS page cache), but an OS crash or
power loss can lose the last acknowledged transactions and, per LMDB's documentation of
``MDB_NOSYNC``, may even corrupt the database if the file system reorders writes.

Privacy: a store may hold secrets (the auth service keeps account hashes and rules in one), so
its folder is created ``0o700`` and LMDB's files ``0o600``, as key files are. A store found with
wider modes (made before this rule) is tightened on open, with a warning that says so.

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
import itertools
import logging
import os
import queue
import stat
import threading
import time
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb  # type: ignore[import-untyped, unused-ignore]
import msgpack
import trio

from trimicro.mailbox.errors import BadRequest, InternalServerError, MicroError, NotFound, ServiceUnavailable

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

__all__ = ["CACHE_RECORDS", "READ_YIELD_EVERY", "SWEEP_BATCH", "SWEEP_SCAN", "LmdbStore"]


log = logging.getLogger("trimicro.store")

#: Ops taken into one write transaction at most (bounds a transaction's size and latency).
MAX_BATCH = 4096


# --------------------------------------------------------------------------------------------
# LMDB: the shared environment, its writer thread and its readers/remap lock


#: A stored value starts with this, then its version as 8 big-endian bytes, then the rest of
#: the map: ``{"n": version (uint 64), "v": ..., "m": ..., "e": ...}``. The version is known
#: only in the writer's transaction, so the map is encoded ahead without its first entry.
_HEAD = b"\x84\xa1n\xcf"


def _encode(rec: Record) -> bytes:
    """The stored map without its header and version (see ``_HEAD``)."""
    out: bytes = msgpack.packb({"v": rec.value, "m": dict(rec.metadata), "e": rec.expiry}, use_bin_type=True)
    return out[1:]  # a 3-entry map's header byte (0x83): the head says 4 entries


def _current_version(key: str, data: bytes | None, now: float) -> int:
    """The version of a stored value (0: none, or expired) for a compare-and-swap."""
    if data is None:
        return 0
    try:
        obj = msgpack.unpackb(data, raw=False)
        if _expired(obj["e"], now):
            return 0
        version: int = obj.get("n", 1)
        return version
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
        raise InternalServerError(f"store record {key!r} is not readable: {exc}") from None


#: Building a decoded Record field by field through its slots: attrs' frozen ``__init__``
#: (a guarded setattr per field, the converter's copy of the metadata) cost more than the
#: rest of a read that misses the cache. The metadata dict is msgpack's own fresh one.
_new_record = object.__new__
_set_key, _set_value, _set_metadata, _set_expiry, _set_version = (
    Record.__dict__[name].__set__ for name in ("key", "value", "metadata", "expiry", "version")
)


def _decode(key: bytes, data: bytes) -> Record:
    try:
        obj = msgpack.unpackb(data, raw=False)
        metadata = obj["m"]
        if type(metadata) is not dict:
            raise TypeError(f"metadata is a {type(metadata).__name__}, not a map")
        record: Record = _new_record(Record)
        _set_key(record, key.decode())
        _set_value(record, obj["v"])
        _set_metadata(record, types.MappingProxyType(metadata))
        _set_expiry(record, obj["e"])
        _set_version(record, obj.get("n", 1))  # no version: stored before versions existed
        return record
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise InternalServerError(f"store record {key!r} is not readable: {exc}") from None


def _expiry_of(data: bytes) -> float | None:
    e: float | None = msgpack.unpackb(data, raw=False)["e"]
    return e


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


class _RWLock:
    """Many readers or one remapper; a waiting remapper holds off new readers."""

    def __init__(self) -> None:
        #: Guards the state below. The point-read fast path takes it only to register the
        #: trio thread as a reader for a whole scheduler batch (see ``LmdbStore._hold``).
        self.mutex = threading.Lock()
        self._cond = threading.Condition(self.mutex)
        self._readers = 0
        self.writer = False
        self.waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self.writer or self.waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            self.release_shared()

    def release_shared(self) -> None:
        with self.mutex:
            self._readers -= 1
            if not self._readers and self.waiting:  # only a remapper waits for readers to leave
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self.waiting += 1
            while self.writer or self._readers:
                self._cond.wait()
            self.waiting -= 1
            self.writer = True
        try:
            yield
        finally:
            with self._cond:
                self.writer = False
                self._cond.notify_all()


class _Closed:
    """Stands in for a closed store's lock: always held, so a point read takes the slow path."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.mutex.acquire()
        self.writer = True
        self.waiting = 0
        self._readers = 0


_CLOSED = _Closed()


class _Op:
    """One queued write: applied in the writer's transaction, then its trio task is woken."""

    __slots__ = ("apply", "error", "event", "result", "token")

    def __init__(self, apply: Callable[[Any], Any]) -> None:
        self.apply = apply
        self.event = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        self.error: BaseException | None = None
        self.result: Any = None

    def done(self) -> None:
        # If the waiting trio run is gone, there is nobody to tell.
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(self.event.set)


#: LMDB's files in an environment folder.
_LMDB_FILES = ("data.mdb", "lock.mdb")


def _owner_only(path: Path) -> None:
    """Create the store folder ``0o700``, or take group and others' access away from an
    existing folder and its LMDB files (saying so): the store may hold secrets."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # parents keep the usual mode
    if os.name != "posix":
        return
    for item in (path, *(path / name for name in _LMDB_FILES)):
        try:
            mode = stat.S_IMODE(os.stat(item).st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(item, mode & 0o700)
        except OSError as exc:
            raise PermissionError(
                f"store {item} is open to group or others (mode {mode:o}) and cannot be made "
                f"owner-only: {exc.strerror or exc}"
            ) from exc
        log.warning(
            "store %s was open to group or others (mode %o): made it owner-only (%o)",
            item,
            mode,
            mode & 0o700,
        )


class _Env:
    """One open LMDB environment per path per process, with its single writer thread."""

    def __init__(self, path: Path, map_size: int, max_map_size: int, sync: bool, max_dbs: int) -> None:
        _owner_only(path)
        self.path = path
        # ``mode`` is for the files LMDB creates (it strips the execute bits): 0o600.
        self.env: Any = lmdb.open(
            str(path), map_size=map_size, max_dbs=max_dbs, sync=sync, subdir=True, mode=0o700
        )
        self.max_dbs = max_dbs
        self.max_map_size = max_map_size
        self.rw = _RWLock()
        self.users = 0
        self.commits = 0
        self.dbis: dict[str, Any] = {}
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lmdb-writer {path}", daemon=True)
        self._thread.start()

    def dbi(self, name: str) -> Any:
        if name not in self.dbis:
            try:
                self.dbis[name] = self.env.open_db(name.encode(), create=True)
            except lmdb.DbsFullError:
                raise self.full() from None
        return self.dbis[name]

    def full(self) -> BadRequest:
        return BadRequest(f"store holds its limit of {self.max_dbs} database/table namespaces (LMDB max_dbs)")

    def open_in(self, txn: Any, name: str, create: bool) -> Any:
        """A namespace's handle, opened in the writer's transaction ``txn`` (None: absent).
        The caller records it in ``dbis`` once that transaction has committed."""
        dbi = self.dbis.get(name)
        if dbi is not None:
            return dbi
        try:
            return self.env.open_db(name.encode(), txn=txn, create=create)
        except lmdb.NotFoundError:
            return None
        except lmdb.DbsFullError:
            raise self.full() from None

    def exists(self, name: str) -> bool:
        """Whether a namespace exists (on a worker thread: a read snapshot of the main database;
        LMDB 1.0 keeps a named database's name with a trailing NUL)."""
        raw = name.encode()
        while True:
            try:
                with self.rw.shared(), self.env.begin() as txn:
                    return txn.get(raw) is not None or txn.get(raw + b"\0") is not None
            except lmdb.MapResizedError:
                with self.rw.exclusive():
                    self.env.set_mapsize(0)

    def submit(self, op: _Op) -> None:
        if self._closed:
            raise ServiceUnavailable("store is closed")
        self._queue.put(op)

    async def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        await trio.to_thread.run_sync(self._thread.join)
        await trio.to_thread.run_sync(self._close_env)

    def _close_env(self) -> None:
        # Exclusive: a trio thread still registered as a reader (its batch not yet ended)
        # lets go before the memory map goes away under it.
        with self.rw.exclusive():
            self.env.close()

    # -- on the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            try:
                self._commit(batch)
            finally:
                for op in batch:  # every waiter is answered, whatever happened
                    op.done()

    def _commit(self, batch: builtins.list[_Op]) -> None:
        """Commit ``batch`` in one transaction, growing the map as needed. Any failure (e.g. the
        map cannot grow) fails these writes only, never the writer thread."""
        try:
            self._commit_growing(batch)
        except Exception as exc:
            failed = InternalServerError(f"store write failed: {type(exc).__name__}: {exc}")
            for op in batch:
                op.error = failed

    def _commit_growing(self, batch: builtins.list[_Op]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:  # aborts on any exception
                    for op in batch:
                        try:
                            op.result, op.error = op.apply(txn), None
                        except MicroError as exc:
                            # This write's own refusal (a lost compare-and-swap, too many
                            # namespaces), raised before it wrote anything: it alone fails.
                            op.error = exc
                self.commits += 1
                return
            except lmdb.MapFullError:
                size = self.env.info()["map_size"]
                if size >= self.max_map_size:
                    if len(batch) > 1:  # fail only the writes that do not fit (each on its own)
                        for op in batch:
                            self._commit([op])
                        return
                    batch[0].error = InternalServerError(
                        f"store is full: the LMDB map reached its cap of {self.max_map_size} bytes"
                    )
                    return
                with self.rw.exclusive():
                    self.env.set_mapsize(min(size * 2, self.max_map_size))
            except lmdb.MapResizedError:  # another process grew the map: adopt its size
                with self.rw.exclusive():
                    self.env.set_mapsize(0)


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


def _dbi_name(database: str, table: str) -> str:
    """The LMDB database holding one (database, table) namespace: ``database/table``, with ``%``
    and ``/`` in either name escaped (``%25``, ``%2F``), so that ("a/b", "c") and ("a", "b/c")
    are two namespaces, not one. Names without those characters map as they always did."""

    def escape(name: str) -> str:
        return name.replace("%", "%25").replace("/", "%2F")

    return f"{escape(database)}/{escape(table)}"


_envs: dict[Path, _Env] = {}
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
                env = _envs[resolved] = _Env(resolved, map_size, max_map_size, sync, max_namespaces)
            env.users += 1
            self._env = env
            self._dbi = env.dbi(_dbi_name(database, table))
        self._closed = False
        #: 0 once every READ_YIELD_EVERY calls (cheaper than a counter attribute).
        self._tick = itertools.cycle(range(READ_YIELD_EVERY)).__next__
        #: Decoded records of recent point reads, by key, with the stored bytes they came from.
        #: Each with the version (LMDB transaction id) of the snapshot it was last seen in.
        self._cache: dict[str, tuple[bytes, bytes, Record, int]] = {}
        self._rw: _RWLock | _Closed = env.rw
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
        op = _Op(apply)
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
        name = _dbi_name(*ns)
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
        env, name = self._env, _dbi_name(*ns)

        def apply(txn: Any) -> Any:
            dbi = env.open_in(txn, name, create)
            if dbi is not None:
                fn(txn, dbi)
            return dbi

        dbi = await self._submit(apply)
        if dbi is not None and name not in env.dbis:
            env.dbis[name] = dbi  # committed: the handle lives on

    def _scan(
        self,
        txn: Any,
        prefix: bytes,
        suffix: bytes,
        now: float,
        limit: int | None,
        offset: int,
        records: bool,
        dbi: Any,
    ) -> tuple[
        builtins.list[tuple[bytes, Record | None]], builtins.list[tuple[str, bytes, bytes, Record, int]]
    ]:
        """The live matches in key order, as (key, record) (the record only if ``records``), and
        the records decoded afresh (for the trio thread to cache: only it changes the cache).

        Records cached by earlier reads are reused while their stored bytes are unchanged, as
        point reads do: decoding was most of a scan's cost.
        """
        out: builtins.list[tuple[bytes, Record | None]] = []
        fresh: builtins.list[tuple[str, bytes, bytes, Record, int]] = []
        cache = self._cache if dbi is self._dbi else {}  # the cache holds the store's own table
        version: int = txn.id()
        skip = offset
        cursor = txn.cursor(db=dbi)
        if not cursor.set_range(prefix):
            return out, fresh
        for raw, data in cursor:
            if not raw.startswith(prefix):
                break
            if suffix and not raw.endswith(suffix):
                continue
            try:
                key = raw.decode()
            except UnicodeDecodeError:
                key = ""  # not one of ours: decoding it below reports it
            hit = cache.get(key)  # only the trio thread changes the cache; a lookup is atomic
            record: Record | None
            if hit is not None and hit[1] == data:
                record = hit[2]
                expiry = record.expiry
            elif records:
                record = _decode(raw, data)
                expiry = record.expiry
                fresh.append((key, raw, data, record, version))
            else:
                record, expiry = None, _expiry_of(data)
            if expiry is not None and expiry <= now:
                continue
            if skip:
                skip -= 1
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append((raw, record))
        return out, fresh

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
                            record = _decode(raw, data)
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
        ns = self._namespace(database, table)
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
            record = _decode(raw, data)
            if _expired(record.expiry, now):
                raise NotFound(f"store key {key!r} not found")
            return [record]
        affix = self._affix(key, "key")
        pre, suf = (affix if prefix else b""), (affix if suffix else b"")
        dbi = await self._reading(ns)
        if dbi is None:
            return []
        found, fresh = await trio.to_thread.run_sync(
            self._read_txn, lambda txn: self._scan(txn, pre, suf, now, limit, offset, True, dbi), dbi
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
        raw, rec = self._record(record, ttl)
        body = _encode(rec)
        want = _version_of(if_version)
        if want is None and database is None and table is None:  # the common write: no closure cells
            dbi = self._dbi
            await self._submit(lambda txn: txn.put(raw, _HEAD + txn.id().to_bytes(8, "big") + body, db=dbi))
            return
        key, now = rec.key, self.now()

        def put(txn: Any, dbi: Any) -> None:
            if want is not None:
                have = _current_version(key, txn.get(raw, None, dbi), now)
                if have != want:
                    raise conflict(key, want, have)  # before writing anything: this write alone fails
            txn.put(raw, _HEAD + txn.id().to_bytes(8, "big") + body, db=dbi)

        await self._apply(self._namespace(database, table), True, put)

    async def delete(self, key: str, *, database: str | None = None, table: str | None = None) -> None:
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
        self._check_open()
        self._page(limit, offset)
        pre, suf, now = self._affix(prefix, "prefix"), self._affix(suffix, "suffix"), self.now()
        dbi = await self._reading(self._namespace(database, table))
        if dbi is None:
            await trio.lowlevel.checkpoint()
            return []
        found, _ = await trio.to_thread.run_sync(
            self._read_txn, lambda txn: self._scan(txn, pre, suf, now, limit, offset, False, dbi), dbi
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

            def scan(txn: Any, start: bytes = start, now: float = now) -> tuple[list[bytes], bytes | None]:
                cursor = txn.cursor(db=dbi)
                dead: list[bytes] = []
                if not cursor.set_range(start):
                    return dead, None
                for seen, (raw, data) in enumerate(cursor):
                    if seen >= SWEEP_SCAN or len(dead) >= SWEEP_BATCH:
                        return dead, bytes(raw)
                    if _expired(_expiry_of(data), now):
                        dead.append(bytes(raw))
                return dead, None

            dead, resume = await trio.to_thread.run_sync(self._read_txn, scan)
            if dead:

                def delete(txn: Any, dead: list[bytes] = dead, now: float = now) -> int:
                    gone = 0
                    for raw in dead:
                        data = txn.get(raw, db=dbi)
                        if data is not None and _expired(_expiry_of(data), now):
                            txn.delete(raw, db=dbi)
                            gone += 1
                    return gone

                total += await self._submit(delete)
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
        self._rw = _CLOSED  # the point-read fast path never gets in; the slow path says closed
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
