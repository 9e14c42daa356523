"""The LMDB environment a store opens: one per path per process, with its single writer
thread and the lock that holds readers off while the map is remapped.

Group commit: LMDB allows one write transaction at a time and, with ``sync=True``, each commit
costs an ``fsync``. All writes of an environment therefore go to ONE dedicated writer thread,
which takes every write queued so far and applies them in ONE write transaction: many
concurrent ``await store.write(...)`` calls share one ``fsync``, and each caller is woken (via
its trio token) only once the transaction holding its write has committed. Write transactions
are opened and committed on that thread only, as LMDB requires.

Map growth: LMDB needs a map size up front. When a write transaction hits
``MapFullError`` it is aborted (nothing is written), the map is doubled (readers are held off
while it is remapped) and the batch is retried, up to ``max_map_size``; beyond that the writes
that do not fit fail with :class:`InternalServerError` and the store stays usable.
"""

from __future__ import annotations

import builtins
import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb  # type: ignore[import-untyped, unused-ignore]
import trio

from trimicro.mailbox.errors import BadRequest, InternalServerError, MicroError, ServiceUnavailable

from .lmdb_layout import owner_only

__all__ = ["CLOSED", "MAX_BATCH", "Closed", "Env", "Op", "RWLock"]

#: Ops taken into one write transaction at most (bounds a transaction's size and latency).
MAX_BATCH = 4096


class RWLock:
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


class Closed:
    """Stands in for a closed store's lock: always held, so a point read takes the slow path."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.mutex.acquire()
        self.writer = True
        self.waiting = 0
        self._readers = 0


CLOSED = Closed()


class Op:
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


class Env:
    """One open LMDB environment per path per process, with its single writer thread."""

    def __init__(self, path: Path, map_size: int, max_map_size: int, sync: bool, max_dbs: int) -> None:
        owner_only(path)
        self.path = path
        # ``mode`` is for the files LMDB creates (it strips the execute bits): 0o600.
        self.env: Any = lmdb.open(
            str(path), map_size=map_size, max_dbs=max_dbs, sync=sync, subdir=True, mode=0o700
        )
        self.max_dbs = max_dbs
        self.max_map_size = max_map_size
        self.rw = RWLock()
        self.users = 0
        self.commits = 0
        self.dbis: dict[str, Any] = {}
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
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

    def submit(self, op: Op) -> None:
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

    def _commit(self, batch: builtins.list[Op]) -> None:
        """Commit ``batch`` in one transaction, growing the map as needed. Any failure (e.g. the
        map cannot grow) fails these writes only, never the writer thread."""
        try:
            self._commit_growing(batch)
        except Exception as exc:
            failed = InternalServerError(f"store write failed: {type(exc).__name__}: {exc}")
            for op in batch:
                op.error = failed

    def _commit_growing(self, batch: builtins.list[Op]) -> None:
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
