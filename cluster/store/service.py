"""The store as a service: other nodes (and the CLI) read and write it through the same interface.

:class:`StoreService` is an actor serving one :class:`~trimicro.cluster.store.Store` under the
endpoints ``Store.read``, ``Store.write``, ``Store.delete`` and ``Store.list`` (maps in, maps
out, so any caller can use them). Every body may carry ``database`` and ``table`` (the
namespace of that call; absent: the store's own), a record out carries its ``version``, and a
write body may carry ``if_version`` (compare-and-swap: a lost one answers 409 Conflict). A
service can hide namespaces (``hidden``): the CLI's node keeps the auth service's table in the
same store and hides it, so account hashes are never readable through ``store``.
:class:`RemoteStore` implements the ``Store`` interface by
calling such a service by name through the cluster (selection, retries, typed errors), so code
written against ``Store`` works the same on the node that owns the data and on any other.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from typing import Any, Protocol

from trimicro.actors import Actor
from trimicro.mailbox.errors import BadRequest, Forbidden

from . import Record, Store

__all__ = ["RemoteStore", "StoreService"]


class Caller(Protocol):
    """Calls by service name: what :class:`RemoteStore` needs of the cluster (the wiring,
    :class:`trimicro.cluster.Cluster`, which the store does not import)."""

    async def call(
        self, service: str, endpoint: str | None, body: Any = None, *, timeout: float | None = None
    ) -> Any: ...


def _record_out(record: Record) -> dict[str, Any]:
    return {
        "key": record.key,
        "value": record.value,
        "metadata": dict(record.metadata),
        "expiry": record.expiry,
        "version": record.version,
    }


def _record_in(item: Any) -> Record:
    if not isinstance(item, dict):
        raise BadRequest("a record is a map")
    value = item.get("value", b"")
    if isinstance(value, str):  # a text value from the CLI or a JSON caller
        value = value.encode()
    expiry = item.get("expiry")
    version = item.get("version") or 0
    if type(version) is not int:
        raise BadRequest("a record's version is an integer")
    try:
        return Record(str(item["key"]), value, item.get("metadata") or {}, expiry, version)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRequest(f"bad record: {exc}") from None


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and type(value) is not int:
        raise BadRequest(f"{name} must be an integer")
    return value


def _opt_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


class StoreService(Actor):
    """Serves a store to the cluster (``cluster.serve(StoreService, store, name="store")``)."""

    service_name = "Store"
    max_concurrency = 64  # reads are MVCC snapshots and writes group-commit: let them overlap

    def __init__(self, store: Store, *, hidden: Collection[tuple[str, str]] = ()) -> None:
        self.store = store
        #: (database, table) namespaces no caller reaches through this service.
        self.hidden = frozenset(hidden)

    def _ns(self, body: dict[str, Any]) -> dict[str, str | None]:
        database, table = _opt_str(body, "database"), _opt_str(body, "table")
        if self.hidden:
            own_db, own_table = getattr(self.store, "database", None), getattr(self.store, "table", None)
            if (database or own_db, table or own_table) in self.hidden:
                raise Forbidden("this store namespace is not served")
        return {"database": database, "table": table}

    async def read(self, body: Any) -> list[dict[str, Any]]:
        body = body if isinstance(body, dict) else {}
        records = await self.store.read(
            str(body.get("key", "")),
            prefix=bool(body.get("prefix", False)),
            suffix=bool(body.get("suffix", False)),
            limit=_opt_int(body, "limit"),
            offset=_opt_int(body, "offset") or 0,
            **self._ns(body),
        )
        return [_record_out(r) for r in records]

    async def write(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest("write takes a map with a record")
        ttl = body.get("ttl")
        if ttl is not None and not isinstance(ttl, int | float):
            raise BadRequest("ttl must be a number")
        await self.store.write(
            _record_in(body.get("record", body)),
            ttl=ttl,
            if_version=_opt_int(body, "if_version"),
            **self._ns(body),
        )

    async def delete(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("key"), str):
            raise BadRequest("delete takes {'key': str}")
        await self.store.delete(body["key"], **self._ns(body))

    async def list(self, body: Any) -> builtins.list[str]:
        body = body if isinstance(body, dict) else {}
        return await self.store.list(
            prefix=str(body.get("prefix", "")),
            suffix=str(body.get("suffix", "")),
            limit=_opt_int(body, "limit"),
            offset=_opt_int(body, "offset") or 0,
            **self._ns(body),
        )


def _with_ns(body: dict[str, Any], database: str | None, table: str | None) -> dict[str, Any]:
    """Add a call's namespace to its body (only when named: other bodies stay as they were)."""
    if database is not None:
        body["database"] = database
    if table is not None:
        body["table"] = table
    return body


class RemoteStore:
    """The ``Store`` interface over a store service elsewhere in the cluster."""

    def __init__(self, cluster: Caller, service: str = "store", *, timeout: float | None = None) -> None:
        self.cluster = cluster
        self.service = service
        self.timeout = timeout

    async def _call(self, endpoint: str, body: dict[str, Any]) -> Any:
        return await self.cluster.call(self.service, f"Store.{endpoint}", body, timeout=self.timeout)

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
        body = {"key": key, "prefix": prefix, "suffix": suffix, "limit": limit, "offset": offset}
        return [_record_in(item) for item in await self._call("read", _with_ns(body, database, table))]

    async def write(
        self,
        record: Record,
        *,
        ttl: float | None = None,
        if_version: int | None = None,
        database: str | None = None,
        table: str | None = None,
    ) -> None:
        body: dict[str, Any] = {"record": _record_out(record), "ttl": ttl}
        if if_version is not None:
            body["if_version"] = if_version
        await self._call("write", _with_ns(body, database, table))

    async def delete(self, key: str, *, database: str | None = None, table: str | None = None) -> None:
        await self._call("delete", _with_ns({"key": key}, database, table))

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
        body = {"prefix": prefix, "suffix": suffix, "limit": limit, "offset": offset}
        result: builtins.list[str] = await self._call("list", _with_ns(body, database, table))
        return result

    async def aclose(self) -> None:
        """Nothing to release: the store belongs to the node that serves it."""
