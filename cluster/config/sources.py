"""Where configuration comes from: the ``Source`` protocol and its five kinds, plus the tree helpers.

A source turns one origin (code, a file, the environment, the command line, the store) into a
nested map of plain values. It never merges, caches or watches: :class:`~trimicro.cluster.config.Config`
does that, so each source stays small and is tested by calling ``load()`` directly.

Every source offers a cheap change probe, ``fingerprint()``: the config reloads a source only
when its fingerprint changed since the last load, and ``None`` means "cannot tell, always
reload" (the store). Values from the environment and the command line stay strings; the typed
getters of the config convert them when read.

Limits keep a hostile or broken source from costing unbounded memory or recursion: a file or
store value is at most :data:`MAX_SOURCE_BYTES`, maps nest at most :data:`MAX_DEPTH` levels,
and a key is at most :data:`MAX_KEY` characters, non-empty and without ``"."`` (the path
separator, so every key stays reachable by path).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import msgpack
import trio

from trimicro.cluster.store import Record, Store
from trimicro.mailbox.errors import BadRequest, NotFound

__all__ = [
    "MAX_DEPTH",
    "MAX_KEY",
    "MAX_SOURCE_BYTES",
    "Defaults",
    "EnvSource",
    "FileSource",
    "FlagSource",
    "Source",
    "StoreSource",
    "check_tree",
    "deep_merge",
    "lookup",
    "parse_path",
    "write_store_config",
]

#: Largest config file or store value accepted (a config is small; a huge one is a mistake).
MAX_SOURCE_BYTES = 1024 * 1024
#: Deepest nesting of maps and lists accepted.
MAX_DEPTH = 32
#: Longest key (and path segment) accepted.
MAX_KEY = 128


class Source(Protocol):
    """One origin of configuration. ``name`` identifies it in ``config.errors`` and in logs."""

    name: str

    async def load(self) -> Mapping[str, Any]:
        """Return the whole nested map now; raise (any exception) if it cannot be loaded."""
        ...

    def fingerprint(self) -> object:
        """A cheap value that changes when ``load()`` may return something new; ``None``: unknown."""
        ...


# --------------------------------------------------------------------------------------------
# Paths and trees


def parse_path(path: str) -> tuple[str, ...]:
    """Split ``"db.host"`` into segments; each must be non-empty and within the key limit."""
    if not isinstance(path, str) or not path:
        raise BadRequest(f"config path must be a non-empty str, got {path!r}")
    parts = tuple(path.split("."))
    if len(parts) > MAX_DEPTH:
        raise BadRequest(f"config path {path!r} is deeper than {MAX_DEPTH} levels")
    for part in parts:
        if not part:
            raise BadRequest(f"config path {path!r} has an empty segment")
        if len(part) > MAX_KEY:
            raise BadRequest(f"config path {path!r} has a segment longer than {MAX_KEY} characters")
    return parts


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()


def lookup(tree: Mapping[str, Any], parts: Iterable[str]) -> Any:
    """The value at ``parts`` in ``tree``, or :data:`ABSENT`."""
    node: Any = tree
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return ABSENT
        node = node[part]
    return node


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A new map: ``over`` wins for every path; maps merge key by key, anything else replaces.

    So a scalar in ``over`` replaces a whole map of ``base`` and a map replaces a scalar; lists
    are values, not merged. Neither input is modified.
    """
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            out[key] = deep_merge(old, value)
        elif isinstance(value, Mapping):
            out[key] = deep_merge({}, value)
        else:
            out[key] = value
    return out


def check_tree(tree: object, where: str) -> dict[str, Any]:
    """Validate a loaded tree (a map at the top, str keys, limits); return it as a plain dict."""
    if not isinstance(tree, Mapping):
        raise BadRequest(f"{where}: the top level must be a map, got {type(tree).__name__}")
    _check(tree, where, 1)
    return dict(tree)


def _check(node: object, where: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, Mapping):
        for key, value in node.items():
            if not isinstance(key, str) or not key:
                raise BadRequest(f"{where}: keys must be non-empty strings, got {key!r}")
            if len(key) > MAX_KEY:
                raise BadRequest(f"{where}: key {key[:32]!r}... is longer than {MAX_KEY} characters")
            if "." in key:
                raise BadRequest(f"{where}: key {key!r} contains '.', the path separator")
            _check(value, where, depth + 1)
    elif isinstance(node, list | tuple):
        for item in node:
            _check(item, where, depth + 1)


def _set(tree: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    """Set a leaf, turning scalars in the way into maps (the more specific setting wins)."""
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if not isinstance(node.get(parts[-1]), dict):
        node[parts[-1]] = value


# --------------------------------------------------------------------------------------------
# Sources


class Defaults:
    """Values written in code: the base every other source overrides."""

    def __init__(self, values: Mapping[str, Any], *, name: str = "defaults") -> None:
        self.name = name
        self._values = check_tree(copy.deepcopy(dict(values)), name)

    async def load(self) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        return copy.deepcopy(self._values)

    def fingerprint(self) -> object:
        return 0


def _yaml_module() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        return None


class FileSource:
    """A JSON, TOML or (if PyYAML is installed) YAML file, reloaded when it changes on disk.

    The format comes from the suffix (``.json``, ``.toml``, ``.yaml``/``.yml``) unless given.
    The fingerprint is ``(mtime_ns, size, inode)``: an edit in place or an atomic rename both
    change it. A missing file is a load error (the config keeps going without it); reading and
    parsing run in a worker thread so a slow disk never stalls the trio loop.
    """

    FORMATS = ("json", "toml", "yaml")

    def __init__(
        self, path: str | os.PathLike[str], *, format: str | None = None, name: str | None = None
    ) -> None:
        self.path = Path(path)
        self.name = name or f"file:{self.path}"
        fmt = format or {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}.get(
            self.path.suffix.lower()
        )
        if fmt not in self.FORMATS:
            raise BadRequest(
                f"config file {self.path}: cannot tell the format from its suffix; "
                f"pass format= one of {', '.join(self.FORMATS)}"
            )
        if fmt == "yaml" and _yaml_module() is None:
            raise BadRequest(f"config file {self.path}: YAML needs PyYAML, which is not installed")
        self.format: str = fmt

    def fingerprint(self) -> object:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return ("unreadable", type(exc).__name__)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def load(self) -> Mapping[str, Any]:
        return await trio.to_thread.run_sync(self.read, abandon_on_cancel=True)

    def read(self) -> dict[str, Any]:
        """Read and parse the file now, on this thread (:meth:`load` runs it on a worker thread;
        choosing plugins at start-up, before any loop runs, calls it directly)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_SOURCE_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(f"{self.path}: file not found") from None
        except OSError as exc:
            raise BadRequest(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        if len(data) > MAX_SOURCE_BYTES:
            raise BadRequest(f"{self.path}: larger than the limit of {MAX_SOURCE_BYTES} bytes")
        try:
            text = data.decode("utf-8")
            if self.format == "json":
                tree: object = json.loads(text)
            elif self.format == "toml":
                tree = tomllib.loads(text)
            else:
                tree = _yaml_module().safe_load(text)
                tree = {} if tree is None else tree
        except (ValueError, RecursionError) as exc:  # JSON/TOML errors and bad UTF-8 are ValueErrors
            raise BadRequest(f"{self.path}: invalid {self.format.upper()}: {exc}") from None
        except Exception as exc:  # yaml.YAMLError: PyYAML is optional, so not named here
            raise BadRequest(f"{self.path}: invalid {self.format.upper()}: {exc}") from None
        return check_tree(tree, str(self.path))


class EnvSource:
    """Environment variables with a prefix: ``APP_DB__HOST=x`` becomes ``{"db": {"host": "x"}}``.

    The prefix is stripped, the rest lowercased and split on ``__`` (a double underscore
    nests; a single one stays part of the key: ``APP_LOG_LEVEL`` is ``log_level``). A variable
    whose name gives an empty or overlong segment is skipped. When ``APP_DB`` and
    ``APP_DB__HOST`` are both set, the nested one wins. ``environ`` defaults to ``os.environ``,
    read at each load.
    """

    def __init__(
        self, prefix: str = "APP_", *, environ: Mapping[str, str] | None = None, name: str = "env"
    ) -> None:
        if not prefix:
            raise BadRequest("an environment source needs a non-empty prefix")
        self.prefix = prefix
        self.name = name
        self._environ = environ

    def _items(self) -> list[tuple[str, str]]:
        env = os.environ if self._environ is None else self._environ
        n = len(self.prefix)
        return sorted((k[n:], v) for k, v in env.items() if k.startswith(self.prefix) and len(k) > n)

    def fingerprint(self) -> object:
        digest = hashlib.blake2b(digest_size=16)
        for key, value in self._items():
            digest.update(f"{len(key)}:{key}={len(value)}:{value};".encode("utf-8", "surrogatepass"))
        return digest.digest()

    async def load(self) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        tree: dict[str, Any] = {}
        for key, value in self._items():  # sorted: "DB" before "DB__HOST", so nested wins
            parts = tuple(key.lower().split("__"))
            if len(parts) > MAX_DEPTH or any(not p or len(p) > MAX_KEY or "." in p for p in parts):
                continue
            _set(tree, parts, value)
        return tree


class FlagSource:
    """Command-line flags: ``--db.port=5433`` or ``--db.port 5433``; a bare ``--debug`` is ``"true"``.

    A bare flag is ``"true"`` only when followed by another flag or by nothing. Arguments that
    are not ``--flags`` (positionals, ``-x``) are ignored, and ``--`` ends the flags. A flag whose
    name is not a valid path (``--a..b``) fails the load with the flag named.
    """

    def __init__(self, argv: Iterable[str], *, name: str = "flags") -> None:
        self.argv = list(argv)
        self.name = name

    def fingerprint(self) -> object:
        return 0

    async def load(self) -> Mapping[str, Any]:
        await trio.lowlevel.checkpoint()
        tree: dict[str, Any] = {}
        args = self.argv
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                break
            if not arg.startswith("--"):
                continue
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i < len(args) and not args[i].startswith("--"):
                    value = args[i]
                    i += 1
                else:
                    value = "true"
            try:
                parts = parse_path(key)
            except BadRequest as exc:
                raise BadRequest(f"flag {arg.partition('=')[0]!r}: {exc.detail}") from None
            _set(tree, parts, value)
        return tree


class StoreSource:
    """One record of a :class:`~trimicro.cluster.store.Store`, so nodes of a cluster share config.

    The record's value is a map encoded as JSON (if it starts with ``{``) or msgpack; write it
    with :func:`write_store_config`. A missing record is an empty config, not an error (nothing
    has been shared yet); a store that fails is a load error. There is no cheap change probe,
    so the fingerprint is ``None`` and the record is read at every poll (a point read).
    """

    def __init__(self, store: Store, key: str = "config", *, name: str | None = None) -> None:
        self.store = store
        self.key = key
        self.name = name or f"store:{key}"

    def fingerprint(self) -> object:
        return None

    async def load(self) -> Mapping[str, Any]:
        try:
            records = await self.store.read(self.key)
        except NotFound:
            return {}
        if not records:
            return {}
        return _decode_store_value(records[0].value, f"store key {self.key!r}")


def _decode_store_value(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MAX_SOURCE_BYTES:
        raise BadRequest(f"{where}: larger than the limit of {MAX_SOURCE_BYTES} bytes")
    try:
        if data.lstrip()[:1] == b"{":
            tree: object = json.loads(data)
        else:
            tree = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, RecursionError) as exc:
        raise BadRequest(f"{where}: not a JSON or msgpack map: {exc}") from None
    return check_tree(tree, where)


async def write_store_config(
    store: Store, values: Mapping[str, Any], key: str = "config", *, ttl: float | None = None
) -> None:
    """Share ``values`` through ``store`` (as JSON) for every node's :class:`StoreSource`."""
    tree = check_tree(values, f"store key {key!r}")
    data = json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()
    if len(data) > MAX_SOURCE_BYTES:
        raise BadRequest(f"store key {key!r}: larger than the limit of {MAX_SOURCE_BYTES} bytes")
    await store.write(Record(key, data), ttl=ttl)
