"""The LMDB store's on-disk layout: how a record is stored, how a namespace is named, and
the folder's modes (see :mod:`.lmdb` for the store itself).

Privacy: a store may hold secrets (the auth service keeps account hashes and rules in one), so
its folder is created ``0o700`` and LMDB's files ``0o600``, as key files are. A store found with
wider modes (made before this rule) is tightened on open, with a warning that says so.

Stored value: a msgpack map ``{"n": version, "v": value, "m": metadata, "e": expiry}`` whose
version is known only inside the writer's transaction, so the rest is encoded ahead of it.
"""

from __future__ import annotations

import os
import stat
import types
from pathlib import Path

import msgpack

from trimicro.mailbox.errors import InternalServerError
from trimicro.mailbox.logs import get_logger

from . import Record, _expired

__all__ = [
    "HEAD",
    "LMDB_FILES",
    "current_version",
    "dbi_name",
    "decode_record",
    "encode_value",
    "expiry_of",
    "owner_only",
]

log = get_logger(__package__)


#: A stored value starts with this, then its version as 8 big-endian bytes, then the rest of
#: the map: ``{"n": version (uint 64), "v": ..., "m": ..., "e": ...}``. The version is known
#: only in the writer's transaction, so the map is encoded ahead without its first entry.
HEAD = b"\x84\xa1n\xcf"

#: msgpack >= 1.0 decodes str as str by default: passing ``raw=False`` cost ~140 instructions a
#: call (keyword parsing), about a third of what decoding the version adds to a read.
_unpackb = msgpack.unpackb


def encode_value(rec: Record) -> bytes:
    """The stored map without its header and version (see ``HEAD``)."""
    out: bytes = msgpack.packb({"v": rec.value, "m": dict(rec.metadata), "e": rec.expiry}, use_bin_type=True)
    return out[1:]  # a 3-entry map's header byte (0x83): the head says 4 entries


def current_version(key: str, data: bytes | None, now: float) -> int:
    """The version of a stored value (0: none, or expired) for a compare-and-swap."""
    if data is None:
        return 0
    try:
        obj = _unpackb(data)
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
_read_only = types.MappingProxyType
_set_key, _set_value, _set_metadata, _set_expiry, _set_version = (
    Record.__dict__[name].__set__ for name in ("key", "value", "metadata", "expiry", "version")
)


def decode_record(key: bytes, data: bytes) -> Record:
    try:
        obj = _unpackb(data)
        metadata = obj["m"]
        if type(metadata) is not dict:
            raise TypeError(f"metadata is a {type(metadata).__name__}, not a map")
        record: Record = _new_record(Record)
        _set_key(record, key.decode())
        _set_value(record, obj["v"])
        _set_metadata(record, _read_only(metadata))
        _set_expiry(record, obj["e"])
        try:
            version = obj["n"]  # a subscript, not .get: a method call cost more than the lookup
        except KeyError:
            version = 1  # stored before versions existed
        _set_version(record, version)
        return record
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise InternalServerError(f"store record {key!r} is not readable: {exc}") from None


def expiry_of(data: bytes) -> float | None:
    e: float | None = _unpackb(data)["e"]
    return e


#: LMDB's files in an environment folder.
LMDB_FILES = ("data.mdb", "lock.mdb")


def owner_only(path: Path) -> None:
    """Create the store folder ``0o700``, or take group and others' access away from an
    existing folder and its LMDB files (saying so): the store may hold secrets."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)  # parents keep the usual mode
    if os.name != "posix":
        return
    for item in (path, *(path / name for name in LMDB_FILES)):
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


def dbi_name(database: str, table: str) -> str:
    """The LMDB database holding one (database, table) namespace: ``database/table``, with ``%``
    and ``/`` in either name escaped (``%25``, ``%2F``), so that ("a/b", "c") and ("a", "b/c")
    are two namespaces, not one. Names without those characters map as they always did."""

    def escape(name: str) -> str:
        return name.replace("%", "%25").replace("/", "%2F")

    return f"{escape(database)}/{escape(table)}"
