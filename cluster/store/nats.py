"""The store on NATS JetStream key-value: ``nats://HOST:PORT?database=&table=&bucket_prefix=``.

For a team that runs a NATS server anyway and wants its state there rather than in each
host's LMDB. What maps to what:

* a (database, table) namespace is a KV bucket, ``<bucket_prefix>_<names>_<hash>`` (bucket
  names allow only ``[-_a-zA-Z0-9]``; see :func:`~trimicro.cluster.natsio.bucket_name`), made on
  first write (a namespace nobody wrote holds nothing: reading it creates no bucket), with one
  value kept per key (``history=1``);
* a key is a KV key, escaped (:func:`~trimicro.cluster.natsio.escape`: ``user/1`` stays so);
* a record is the value ``msgpack([value, metadata, expiry])``: the expiry is kept with it, so
  a record lapses at its time on the store's clock (``now=``), exactly, whatever the server's
  granularity; the server also forgets it (a per-message TTL, whole seconds, ``grace`` later)
  so that lapsed records do not pile up;
* a record's ``version`` is the KV revision (the stream sequence): it grows with every write
  and never repeats, even across a delete; ``if_version`` is JetStream's
  expected-last-subject-sequence, so compare-and-swap is the server's, atomic across clients.
  A create-if-absent (``if_version=0``) over a deleted or lapsed record swaps on that
  record's revision.

Reads of one key are one request to the server. Scans (``prefix``/``suffix``, ``list``) read
the namespace's current values through one ordered consumer and filter, sort (utf-8 order) and
page them here: NATS has no key order, and prefixes of escaped keys are not subjects. A
namespace of many records is then better read by key.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

import attrs
import msgpack

from trimicro.mailbox.errors import BadRequest, Conflict, NotFound, ServiceUnavailable

from ..natsio import (
    SNAPSHOT_DONE,
    NatsConnection,
    NatsOptions,
    bucket_name,
    escape,
    server_ttl,
    snapshot,
    unescape,
)
from . import MAX_NAMESPACES, MiB, Record, _Checks, _expired, _page, _version_of, conflict

__all__ = ["NatsStore"]

_TTL_HEADER = "Nats-TTL"
_LAST = "Nats-Expected-Last-Subject-Sequence"


@attrs.frozen
class _Current:
    """What a key holds now: its revision (0: never written) and the record, if live."""

    revision: int
    record: Record | None


class NatsStore(_Checks):
    """A :class:`~trimicro.cluster.store.Store` on JetStream KV buckets (see the module docstring)."""

    def __init__(
        self,
        options: NatsOptions | None = None,
        *,
        database: str = "trimicro",
        table: str = "default",
        bucket_prefix: str = "trimicro",
        max_key: int = 511,
        max_value: int = 1 * MiB,
        max_namespaces: int = MAX_NAMESPACES,
        grace: float = 5.0,
        now: Callable[[], float] = time.time,
        connection: NatsConnection | None = None,
    ) -> None:
        super().__init__(database, table, max_key, max_value, now)
        self.conn = connection or NatsConnection(options or NatsOptions(), purpose="store")
        self._owns = connection is None
        self.bucket_prefix = bucket_prefix
        self.max_namespaces = max_namespaces
        self.grace = grace
        self._buckets: dict[tuple[str, str], Any] = {}
        self._closed = False

    # ---- namespaces -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("store is closed", id="nats")

    async def _bucket(self, database: str | None, table: str | None, create: bool) -> Any:
        """The KV bucket of a namespace; ``None`` if it does not exist and ``create`` is False."""
        ns = self._namespace(database, table) or (self.database, self.table)
        found = self._buckets.get(ns)
        if found is not None:
            return found
        if create and len(self._buckets) >= self.max_namespaces:
            raise BadRequest(f"store holds its limit of {self.max_namespaces} database/table namespaces")
        name = bucket_name(self.bucket_prefix, *ns)

        async def open_it() -> Any:
            import nats.js.errors

            js = self.conn.js
            try:
                return await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    return None
                return await js.create_key_value(
                    bucket=name, history=1, description=f"trimicro store {ns[0]}/{ns[1]}"
                )

        kv = await self.conn.run(open_it, "open bucket")
        if kv is not None:
            self._buckets[ns] = kv
        return kv

    # ---- records on the wire ---------------------------------------------------------------------

    @staticmethod
    def _encode(record: Record) -> bytes:
        packed: bytes = msgpack.packb([record.value, dict(record.metadata), record.expiry], use_bin_type=True)
        return packed

    def _decode(self, key: str, data: bytes, revision: int) -> Record | None:
        """The live record ``data`` holds, or ``None`` if it lapsed."""
        value, metadata, expiry = msgpack.unpackb(data, raw=False)
        if _expired(expiry, self.now()):
            return None
        return Record(key, value, metadata, expiry, version=revision)

    async def _current(self, kv: Any, key: str) -> _Current:
        import nats.js.errors

        subject_key = escape(key)
        if kv._direct:  # a bucket made elsewhere with direct gets: nats-py reads those

            async def get() -> tuple[int, bytes | None]:
                try:
                    entry = await kv._get(subject_key)  # get() hides the revision of a delete
                except nats.js.errors.KeyDeletedError as exc:
                    return exc.entry.revision or 0, None
                except nats.js.errors.KeyNotFoundError:
                    return 0, None
                return entry.revision or 0, entry.value or b""

            revision, data = await self.conn.run(get, "read")
        else:
            try:
                raw = await self.conn.requests.last_of(kv._stream, f"{kv._pre}{subject_key}")
            except nats.js.errors.NotFoundError:
                return _Current(0, None)
            revision = raw.seq or 0
            deleted = raw.headers is not None and raw.headers.get("KV-Operation") in ("DEL", "PURGE")
            data = None if deleted else (raw.data or b"")
        record = None if data is None else self._decode(key, data, revision)
        return _Current(revision, record)

    async def _scan(self, kv: Any) -> builtins.list[Record]:
        """Every live record of a bucket, in utf-8 order of the keys."""

        async def current() -> builtins.list[tuple[str, bytes, int]]:
            found = []
            entries = snapshot(kv)
            try:
                async for entry in entries:
                    if entry is SNAPSHOT_DONE:
                        break
                    if entry.operation is None:  # not a delete marker
                        found.append((entry.key, entry.value or b"", entry.revision or 0))
            finally:
                await entries.aclose()
            return found

        records = []
        for subject_key, data, revision in await self.conn.run(current, "scan"):
            record = self._decode(unescape(subject_key), data, revision)
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: r.key.encode())
        return records

    # ---- the Store interface -----------------------------------------------------------------------

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
        self._check_open()
        self._page(limit, offset)
        if not (prefix or suffix):
            self._key(key)
            kv = await self._bucket(database, table, False)
            current = None if kv is None else (await self._current(kv, key)).record
            if current is None:
                raise NotFound(f"store key {key!r} not found")
            return [current]
        raw = self._affix(key, "key")
        kv = await self._bucket(database, table, False)
        if kv is None:
            return []
        found = [
            r
            for r in await self._scan(kv)
            if (not prefix or r.key.encode().startswith(raw)) and (not suffix or r.key.encode().endswith(raw))
        ]
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
        self._check_open()
        _, rec = self._record(record, ttl)
        want = _version_of(if_version)
        kv = await self._bucket(database, table, True)
        headers: dict[str, str] = {}
        if want is not None:
            current = await self._current(kv, rec.key)
            have = 0 if current.record is None else current.revision
            if have != want:
                raise conflict(rec.key, want, have)
            headers[_LAST] = str(current.revision)
        if rec.expiry is not None:
            headers[_TTL_HEADER] = str(server_ttl(rec.expiry - self.now(), self.grace))
        import nats.js.errors

        try:
            await self.conn.requests.js_publish(
                f"$KV.{kv._name}.{escape(rec.key)}", self._encode(rec), headers or None
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence: another write won
                raise Conflict(
                    f"store key {rec.key!r} was written by another client at version {want}"
                ) from None
            raise

    async def delete(self, key: str, *, database: str | None = None, table: str | None = None) -> None:
        self.deletes += 1
        self._check_open()
        subject_key = escape(key) if self._key(key) else ""
        kv = await self._bucket(database, table, False)
        if kv is None:
            return

        async def remove() -> None:
            await kv.delete(subject_key, validate_keys=False)

        await self.conn.run(remove, "delete")

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
        start, end = self._affix(prefix, "prefix"), self._affix(suffix, "suffix")
        kv = await self._bucket(database, table, False)
        if kv is None:
            return []
        keys = [r.key for r in await self._scan(kv) if r.key.encode().startswith(start)]
        return _page([k for k in keys if k.encode().endswith(end)], limit, offset)

    async def aclose(self) -> None:
        """Close the connection (if this store opened it); every later call is refused."""
        self._closed = True
        if self._owns:
            await self.conn.aclose()
