"""Store: Go Micro's ``store`` interface (records by key, with metadata and expiry), trio-native.

- :class:`Store` is the interface: ``read`` (a key, or by ``prefix``/``suffix`` with ``limit``
  and ``offset``), ``write`` (with a ``ttl``), ``delete``, ``list``, ``aclose``; a store is
  opened on one ``database``/``table`` namespace, and every call may name another one
  (``database=``/``table=``: Go Micro's ``ReadFrom``/``WriteTo``/``DeleteFrom``/``ListFrom``).
  How many namespaces a store holds is bounded (``max_namespaces``; LMDB's ``max_dbs``).
- :class:`Record` is one stored value; it is immutable, so readers may share and cache it.
  ``read`` gives each record its ``version``: an integer that grows with every write of the
  key and never repeats (0: absent). ``write(record, if_version=N)`` is compare-and-swap: it
  writes only if the key's current version is ``N`` (``0``: only if absent, or expired) and
  raises :class:`~trimicro.mailbox.errors.Conflict` otherwise, atomically.
- :class:`MemoryStore` keeps records in a dict: for one process and for tests.
- :class:`LmdbStore` (:mod:`.lmdb`) is the default: durable, group-committed, safe across
  processes; its module docstring explains the choices.
- :class:`~.nats.NatsStore` (:mod:`.nats`, ``nats://``) keeps records in JetStream KV buckets;
  imported only when chosen (it needs nats-py).
- :mod:`.service` serves a store to the cluster (:class:`StoreService`) and calls one
  (:class:`RemoteStore`).

Both built-in stores share one set of checks (names, key and value sizes, options), so a
request that one refuses, the other refuses the same way.

**Errors and guarantees** (what :class:`~trimicro.testing.conformance.StoreConformance`
checks): ``read`` of a missing or expired key raises :class:`~trimicro.mailbox.errors.NotFound`
(a scan returns what matches, maybe nothing); ``delete`` of a missing key is a no-op; scans and
``list`` return keys in the order of their UTF-8 bytes, ``prefix`` and ``suffix`` both applying,
``limit``/``offset`` paging over live records only; a write's ``ttl`` (relative) wins over the
record's ``expiry`` (absolute unix seconds), and a write with neither makes the record permanent;
bad names, keys, values or options raise :class:`~trimicro.mailbox.errors.BadRequest`; a lost
compare-and-swap raises ``Conflict`` (409) and changes nothing; a closed store refuses every call
with a ``MicroError``, and ``aclose`` twice is harmless. A store plugin (group ``trimicro.store``,
``factory(url, database=, table=, ...)``) keeps these, and runs blocking I/O off the trio thread.
"""

from __future__ import annotations

import builtins
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from trimicro.mailbox.errors import BadRequest, Conflict, NotFound, ServiceUnavailable

__all__ = ["MAX_NAMESPACES", "LmdbStore", "MemoryStore", "Record", "Store"]

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB

#: The (database, table) namespaces one store holds at most (LMDB's ``max_dbs``): every call
#: may name a namespace, so a caller must not be able to create them without end.
MAX_NAMESPACES: Final = 256
#: A database or table name is at most this many bytes of utf-8.
MAX_NAME: Final = 128


def _freeze(metadata: Any) -> Any:
    """A read-only copy of a mapping (anything else is left for ``write`` to refuse)."""
    if type(metadata) is dict or isinstance(metadata, Mapping):  # the ABC check is slow
        return types.MappingProxyType(dict(metadata))
    return metadata


@attrs.frozen
class Record:
    """One stored value: ``expiry`` is absolute unix seconds (``None``: never expires).

    ``version`` is set by the store on read (what a record to be written carries is ignored):
    it grows with every write of the key and never repeats, so ``write(..., if_version=)``
    can tell whether anything wrote the key since it was read (0: the key is absent).

    Immutable all the way down (``metadata`` is a read-only copy): a record read from a store
    can be shared between readers and cached without one of them changing what others see.
    """

    key: str
    value: bytes
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze)
    expiry: float | None = None
    #: Not part of equality: a record compares by what it holds.
    version: int = attrs.field(default=0, eq=False)


class Store(Protocol):
    """Go Micro's store: records by key in a ``database``/``table`` namespace."""

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
    ) -> builtins.list[Record]: ...

    async def write(
        self,
        record: Record,
        *,
        ttl: float | None = None,
        if_version: int | None = None,
        database: str | None = None,
        table: str | None = None,
    ) -> None: ...

    async def delete(self, key: str, *, database: str | None = None, table: str | None = None) -> None: ...

    async def list(
        self,
        *,
        prefix: str = "",
        suffix: str = "",
        limit: int | None = None,
        offset: int = 0,
        database: str | None = None,
        table: str | None = None,
    ) -> builtins.list[str]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Validation shared by both stores


def _name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequest(f"store {what} name must be a non-empty str, got {name!r}")
    if "\x00" in name:  # LMDB names are C strings: "a\0b" would be "a"
        raise BadRequest(f"store {what} name must not contain NUL")
    if len(_Checks._utf8(name, f"{what} name")) > MAX_NAME:
        raise BadRequest(f"store {what} name is more than {MAX_NAME} bytes in utf-8")
    return name


def _version_of(if_version: object) -> int | None:
    if if_version is not None and (
        not isinstance(if_version, int) or isinstance(if_version, bool) or if_version < 0
    ):
        raise BadRequest(f"store if_version must be None or an int >= 0, got {if_version!r}")
    return if_version


def conflict(key: str, want: int, have: int) -> Conflict:
    """The error of a compare-and-swap that lost (both stores word it the same way)."""
    return Conflict(f"store key {key!r} is at version {have}, not {want}")


class _Checks:
    def __init__(self, database: str, table: str, max_key: int, max_value: int, now: Callable[[], float]):
        self.database = _name("database", database)
        self.table = _name("table", table)
        self.max_key = max_key
        self.max_value = max_value
        self.now = now
        #: Operations asked of this store, by kind (counted before any check: refused ones too).
        self.reads = self.writes = self.deletes = self.lists = 0

    def _key(self, key: object) -> bytes:
        if not isinstance(key, str):
            raise BadRequest(f"store key must be a str, got {type(key).__name__}")
        if not key:
            raise BadRequest("store key must not be empty")
        raw = self._utf8(key, "key")
        if len(raw) > self.max_key:
            raise BadRequest(f"store key is {len(raw)} bytes in utf-8, more than the limit of {self.max_key}")
        return raw

    @staticmethod
    def _utf8(text: str, what: str) -> bytes:
        try:
            return text.encode()
        except UnicodeEncodeError as exc:
            raise BadRequest(f"store {what} is not valid unicode: {exc}") from None

    def _affix(self, value: object, what: str) -> bytes:
        if not isinstance(value, str):
            raise BadRequest(f"store {what} must be a str, got {type(value).__name__}")
        return self._utf8(value, what)

    def _namespace(self, database: str | None, table: str | None) -> tuple[str, str] | None:
        """The (database, table) a call names, validated; ``None``: the store's own."""
        if (database is None or database == self.database) and (table is None or table == self.table):
            return None
        return (
            self.database if database is None else _name("database", database),
            self.table if table is None else _name("table", table),
        )

    @staticmethod
    def _page(limit: object, offset: object) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise BadRequest(f"store limit must be None or an int >= 0, got {limit!r}")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise BadRequest(f"store offset must be an int >= 0, got {offset!r}")

    def _record(self, record: object, ttl: object) -> tuple[bytes, Record]:
        """Validate; return the utf-8 key and the record with its final expiry."""
        if not isinstance(record, Record):
            raise BadRequest(f"store write takes a Record, got {type(record).__name__}")
        raw = self._key(record.key)
        if not isinstance(record.value, bytes):
            raise BadRequest(f"store value must be bytes, got {type(record.value).__name__}")
        if len(record.value) > self.max_value:
            raise BadRequest(
                f"store value is {len(record.value)} bytes, more than the limit of {self.max_value}"
            )
        meta = record.metadata
        if not isinstance(meta, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
        ):
            raise BadRequest("store metadata must be a dict[str, str]")
        for k, v in meta.items():
            self._utf8(k, "metadata key")
            self._utf8(v, "metadata value")
        expiry = record.expiry
        if expiry is not None and (not isinstance(expiry, int | float) or isinstance(expiry, bool)):
            raise BadRequest(f"store expiry must be None or unix seconds, got {expiry!r}")
        if ttl is not None:
            if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
                raise BadRequest(f"store ttl must be None or seconds > 0, got {ttl!r}")
            expiry = self.now() + ttl
        if expiry is not None:
            expiry = float(expiry)
        if expiry == record.expiry:
            return raw, record  # immutable: no copy needed
        return raw, attrs.evolve(record, expiry=expiry)


def _page(items: builtins.list[Any], limit: int | None, offset: int) -> builtins.list[Any]:
    return items[offset:] if limit is None else items[offset : offset + limit]


def _expired(expiry: float | None, now: float) -> bool:
    return expiry is not None and expiry <= now


# --------------------------------------------------------------------------------------------
# MemoryStore


class MemoryStore(_Checks):
    """A dict-backed :class:`Store` for tests; same validation and ordering (utf-8 bytes) as LMDB.

    Versions come from one counter per store (each write takes the next), so a key's version
    grows with every write and never repeats, even across a delete, as in LMDB.
    """

    def __init__(
        self,
        *,
        database: str = "trimicro",
        table: str = "default",
        max_key: int = 511,
        max_value: int = 16 * MiB,
        max_namespaces: int = MAX_NAMESPACES,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(database, table, max_key, max_value, now)
        self._data: dict[bytes, Record] = {}
        self._spaces: dict[tuple[str, str], dict[bytes, Record]] = {(self.database, self.table): self._data}
        self.max_namespaces = max_namespaces
        self._version = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("store is closed")

    def _space(self, database: str | None, table: str | None, create: bool) -> dict[bytes, Record]:
        ns = self._namespace(database, table)
        if ns is None:
            return self._data
        space = self._spaces.get(ns)
        if space is None:
            if not create:
                return {}
            if len(self._spaces) >= self.max_namespaces:
                raise BadRequest(f"store holds its limit of {self.max_namespaces} database/table namespaces")
            space = self._spaces[ns] = {}
        return space

    def _live(self, data: dict[bytes, Record], prefix: bytes, suffix: bytes) -> builtins.list[Record]:
        now = self.now()
        return [
            rec
            for raw, rec in sorted(data.items())
            if raw.startswith(prefix) and raw.endswith(suffix) and not _expired(rec.expiry, now)
        ]

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
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._page(limit, offset)
        data = self._space(database, table, False)
        if not (prefix or suffix):
            raw = self._key(key)
            rec = data.get(raw)
            if rec is None or _expired(rec.expiry, self.now()):
                raise NotFound(f"store key {key!r} not found")
            return [rec]
        raw = self._affix(key, "key")
        found = self._live(data, raw if prefix else b"", raw if suffix else b"")
        return _page(found, limit, offset)

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
        await trio.lowlevel.checkpoint()
        self._check_open()
        raw, rec = self._record(record, ttl)
        want = _version_of(if_version)
        data = self._space(database, table, True)
        if want is not None:
            old = data.get(raw)
            have = 0 if old is None or _expired(old.expiry, self.now()) else old.version
            if have != want:
                raise conflict(rec.key, want, have)
        self._version += 1
        data[raw] = attrs.evolve(rec, version=self._version)

    async def delete(self, key: str, *, database: str | None = None, table: str | None = None) -> None:
        self.deletes += 1
        await trio.lowlevel.checkpoint()
        self._check_open()
        raw = self._key(key)
        self._space(database, table, False).pop(raw, None)

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
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._page(limit, offset)
        data = self._space(database, table, False)
        found = self._live(data, self._affix(prefix, "prefix"), self._affix(suffix, "suffix"))
        return [r.key for r in _page(found, limit, offset)]

    async def sweep(self) -> int:
        """Delete expired records; return how many."""
        await trio.lowlevel.checkpoint()
        self._check_open()
        now = self.now()
        dead = [raw for raw, rec in self._data.items() if _expired(rec.expiry, now)]
        for raw in dead:
            del self._data[raw]
        return len(dead)

    async def run_sweeper(self, interval: float) -> None:
        """Run :meth:`sweep` every ``interval`` seconds, forever (start it in a nursery)."""
        while True:
            await trio.sleep(interval)
            await self.sweep()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self._closed = True


# The LMDB store builds on the records and checks above, so it loads last.
from .lmdb import LmdbStore  # noqa: E402
