"""The store's scans of a table, each run inside one LMDB transaction: a prefix or suffix match
(``read(prefix=...)``, ``list``), and the sweep's search for expired records and their deletion.

They are plain functions of a transaction: :class:`~.lmdb.LmdbStore` runs a scan in a read-only
snapshot on a worker thread and a deletion in its writer's transaction, and only the trio thread
changes the point-read cache, so a scan returns the records it decoded for the caller to cache.
"""

from __future__ import annotations

from typing import Any

from . import Record, _expired
from .lmdb_layout import decode_record, expiry_of

__all__ = ["delete_expired", "expired_keys", "scan"]


def scan(
    txn: Any,
    dbi: Any,
    cache: dict[str, tuple[bytes, bytes, Record, int]],
    prefix: bytes,
    suffix: bytes,
    now: float,
    limit: int | None,
    offset: int,
    records: bool,
) -> tuple[list[tuple[bytes, Record | None]], list[tuple[str, bytes, bytes, Record, int]]]:
    """The live matches in key order, as (key, record) (the record only if ``records``), and
    the records decoded afresh (for the trio thread to cache: only it changes the cache).

    Records of ``cache`` (earlier reads') are reused while their stored bytes are unchanged, as
    point reads do: decoding was most of a scan's cost.
    """
    out: list[tuple[bytes, Record | None]] = []
    fresh: list[tuple[str, bytes, bytes, Record, int]] = []
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
            record = decode_record(raw, data)
            expiry = record.expiry
            fresh.append((key, raw, data, record, version))
        else:
            record, expiry = None, expiry_of(data)
        if expiry is not None and expiry <= now:
            continue
        if skip:
            skip -= 1
            continue
        if limit is not None and len(out) >= limit:
            break
        out.append((raw, record))
    return out, fresh


def expired_keys(
    txn: Any, *, dbi: Any, start: bytes, now: float, scan: int, batch: int
) -> tuple[list[bytes], bytes | None]:
    """Up to ``batch`` expired keys among at most ``scan`` records from ``start`` on, and the
    key to go on from (None: the table's end was reached)."""
    cursor = txn.cursor(db=dbi)
    dead: list[bytes] = []
    if not cursor.set_range(start):
        return dead, None
    for seen, (raw, data) in enumerate(cursor):
        if seen >= scan or len(dead) >= batch:
            return dead, bytes(raw)
        if _expired(expiry_of(data), now):
            dead.append(bytes(raw))
    return dead, None


def delete_expired(txn: Any, *, dbi: Any, dead: list[bytes], now: float) -> int:
    """Delete those of ``dead`` that are still expired (a record rewritten since stays); how many."""
    gone = 0
    for raw in dead:
        data = txn.get(raw, db=dbi)
        if data is not None and _expired(expiry_of(data), now):
            txn.delete(raw, db=dbi)
            gone += 1
    return gone
