"""Store: Go Micro's ``store`` interface (records by key, with metadata and expiry), trio-native.

- :class:`Store` is the interface: ``read`` (a key, or by ``prefix``/``suffix`` with ``limit``
  and ``offset``), ``write`` (with a ``ttl``), ``delete``, ``list``, ``aclose``; a store is
  opened on one ``database``/``table`` namespace.
- :class:`Record` is one stored value; it is immutable, so readers may share and cache it.
- :class:`MemoryStore` keeps records in a dict: for one process and for tests.
- :class:`LmdbStore` (:mod:`.lmdb`) is the default: durable, group-committed, safe across
  processes; its module docstring explains the choices.
- :mod:`.service` serves a store to the cluster (:class:`StoreService`) and calls one
  (:class:`RemoteStore`).

Both built-in stores share one set of checks (names, key and value sizes, options), so a
request that one refuses, the other refuses the same way.
"""

from __future__ import annotations

import builtins
import time
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import attrs
import trio

from trimicro.mailbox.errors import BadRequest, NotFound, ServiceUnavailable

__all__ = ["LmdbStore", "MemoryStore", "Record", "Store"]

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB


def _freeze(metadata: Any) -> Any:
    """A read-only copy of a mapping (anything else is left for ``write`` to refuse)."""
    if type(metadata) is dict or isinstance(metadata, Mapping):  # the ABC check is slow
        return types.MappingProxyType(dict(metadata))
    return metadata


@attrs.frozen
class Record:
    """One stored value: ``expiry`` is absolute unix seconds (``None``: never expires).

    Immutable all the way down (``metadata`` is a read-only copy): a record read from a store
    can be shared between readers and cached without one of them changing what others see.
    """

    key: str
    value: bytes
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze)
    expiry: float | None = None


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
    ) -> builtins.list[Record]: ...

    async def write(self, record: Record, *, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def list(
        self, *, prefix: str = "", suffix: str = "", limit: int | None = None, offset: int = 0
    ) -> builtins.list[str]: ...

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Validation shared by both stores


class _Checks:
    def __init__(self, database: str, table: str, max_key: int, max_value: int, now: Callable[[], float]):
        for what, name in (("database", database), ("table", table)):
            if not isinstance(name, str) or not name:
                raise BadRequest(f"store {what} name must be a non-empty str, got {name!r}")
        self.database = database
        self.table = table
        self.max_key = max_key
        self.max_value = max_value
        self.now = now

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
    """A dict-backed :class:`Store` for tests; same validation and ordering (utf-8 bytes) as LMDB."""

    def __init__(
        self,
        *,
        database: str = "trimicro",
        table: str = "default",
        max_key: int = 511,
        max_value: int = 16 * MiB,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(database, table, max_key, max_value, now)
        self._data: dict[bytes, Record] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("store is closed")

    def _live(self, prefix: bytes, suffix: bytes) -> builtins.list[Record]:
        now = self.now()
        return [
            rec
            for raw, rec in sorted(self._data.items())
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
    ) -> builtins.list[Record]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._page(limit, offset)
        if not (prefix or suffix):
            raw = self._key(key)
            rec = self._data.get(raw)
            if rec is None or _expired(rec.expiry, self.now()):
                raise NotFound(f"store key {key!r} not found")
            return [rec]
        raw = self._affix(key, "key")
        found = self._live(raw if prefix else b"", raw if suffix else b"")
        return _page(found, limit, offset)

    async def write(self, record: Record, *, ttl: float | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        raw, rec = self._record(record, ttl)
        self._data[raw] = rec

    async def delete(self, key: str) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._data.pop(self._key(key), None)

    async def list(
        self, *, prefix: str = "", suffix: str = "", limit: int | None = None, offset: int = 0
    ) -> builtins.list[str]:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._page(limit, offset)
        found = self._live(self._affix(prefix, "prefix"), self._affix(suffix, "suffix"))
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
