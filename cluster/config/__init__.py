"""Go Micro's ``config``: merged sources, typed access by path, hot reload, watches, sealed secrets.

Precedence: sources are given in order and a **later source overrides an earlier one** for
every path (maps merge key by key; a scalar replaces a map and vice versa). The usual order,
built by :func:`default_sources`, is::

    defaults (code) < store (shared by the cluster) < files < environment < command-line flags

so the most local and most specific setting wins.

Failures: a source that cannot be loaded (missing file, parse error, store unreachable,
timeout) keeps its last good value (empty if it never loaded); the reason is logged once as a
warning on ``trimicro.config`` and kept in :attr:`Config.errors` until the source loads again.

Reload: inside ``async with open_config(...)`` a task probes every source's fingerprint each
``interval`` seconds and reloads the changed ones, so an edited file is seen within about one
interval, without a restart. Watchers (:meth:`Config.watch`, :meth:`Config.watch_actor`) hear
about each change of the merged value at their path.

Secrets: a value ``"sealed:<base64>"`` (made by :func:`seal`) stays sealed in the merged map,
in changes, in ``repr`` and in logs; only :meth:`Config.get` opens it, in memory, and only when
the config was given the ``secret_key``.

Beside this module: the sources (:mod:`.sources`), sealing (:mod:`.secrets`) and the typed
conversion of values (:mod:`.convert`).

**Sources, the pluggable part.** A :class:`~.sources.Source` has a ``name`` (shown in
:attr:`Config.errors` and logs), ``async load()`` returning the whole nested map now (raising
anything if it cannot: the config keeps the last good value) and ``fingerprint()``, a cheap
value that changes when ``load`` may return something new (``None``: unknown, load every time).
Values are checked on load (depth, key lengths). Built in: ``Defaults``, ``FileSource`` (TOML,
JSON, YAML), ``EnvSource`` (``APP_`` prefix), ``FlagSource``, ``StoreSource`` (a record of the
cluster's store); by URL through the ``trimicro.config`` group: ``file://``, ``env://``.
Reading: :meth:`Config.get` (by ``"a.b"`` path, typed with ``type=``, ``NotFound`` or the
default when absent, ``BadRequest`` when the value does not convert).
"""

from __future__ import annotations

import collections
import copy
import os
import typing
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, overload

import attrs
import trio

from trimicro.actors import Actor, ActorRef, tell
from trimicro.cluster.store import Store
from trimicro.mailbox.errors import BadRequest, Conflict, Forbidden, NotFound
from trimicro.mailbox.logs import get_logger

from .convert import convert, structure
from .secrets import SEALED, box, generate_secret_key, is_sealed, seal, unseal
from .sources import (
    ABSENT,
    Defaults,
    EnvSource,
    FileSource,
    FlagSource,
    Source,
    StoreSource,
    check_tree,
    deep_merge,
    lookup,
    parse_path,
    write_store_config,
)

__all__ = [
    "MISSING",
    "Change",
    "Config",
    "ConfigActor",
    "ConfigChanged",
    "ConfigWatch",
    "Defaults",
    "EnvSource",
    "FileSource",
    "FlagSource",
    "GetConfig",
    "Source",
    "StoreSource",
    "WatchConfig",
    "default_sources",
    "generate_secret_key",
    "open_config",
    "seal",
    "write_store_config",
]

log = get_logger(__package__)

T = TypeVar("T")

#: Changes a watcher may have queued; past this the oldest are dropped (the newest always arrive).
WATCH_BUFFER = 16


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: "No default given" for :meth:`Config.get` (``None`` is a legitimate default).
MISSING: Any = _Missing()


# --------------------------------------------------------------------------------------------
# Messages


@attrs.frozen
class Change:
    """The merged value at ``path`` went from ``old`` to ``new`` (``None`` when absent)."""

    path: str
    old: Any
    new: Any


@attrs.frozen
class ConfigChanged:
    """Told to an actor registered with :meth:`Config.watch_actor` (secrets stay sealed)."""

    path: str
    old: Any
    new: Any


@attrs.frozen
class GetConfig:
    """Ask a :class:`ConfigActor` for the value at ``path`` (endpoint ``Config.get``)."""

    path: str


@attrs.frozen
class WatchConfig:
    """Ask a :class:`ConfigActor` to tell the asking actor a ``ConfigChanged`` for ``path``."""

    path: str


# --------------------------------------------------------------------------------------------
# Watches


class ConfigWatch:
    """Changes at one path, as an async iterator; use it as ``async with config.watch(p) as w``.

    Buffered up to :data:`WATCH_BUFFER` changes: a watcher that falls further behind loses the
    oldest, never the newest, and never holds unbounded memory. Iteration ends when the watch
    is closed or the config stops.
    """

    def __init__(self, config: Config, path: str) -> None:
        self.path = path
        self.parts = parse_path(path)
        self._config = config
        self._buffer: collections.deque[Change] = collections.deque(maxlen=WATCH_BUFFER)
        self._wakeup = trio.Event()
        self._closed = False

    def _push(self, change: Change) -> None:
        self._buffer.append(change)
        self._wakeup.set()

    def close(self) -> None:
        """Stop watching; a pending ``__anext__`` ends the iteration."""
        self._closed = True
        self._config._watches.discard(self)
        self._wakeup.set()

    def __aiter__(self) -> ConfigWatch:
        return self

    async def __anext__(self) -> Change:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        await trio.lowlevel.checkpoint()
        return self._buffer.popleft()

    async def __aenter__(self) -> ConfigWatch:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


# --------------------------------------------------------------------------------------------
# Config


class Config:
    """Merged configuration from ``sources`` (later wins), read by path with typed getters.

    Use :func:`open_config` to get one that reloads itself. A bare ``Config`` loads only when
    :meth:`reload` is awaited (handy for one-shot tools and tests). Source names must be
    unique: they key :attr:`errors`.
    """

    def __init__(
        self, sources: Sequence[Source], *, secret_key: bytes | None = None, load_timeout: float = 5.0
    ) -> None:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise BadRequest(f"config sources need unique names; repeated: {', '.join(dupes)}")
        self.sources: tuple[Source, ...] = tuple(sources)
        self.load_timeout = load_timeout
        self._box = None if secret_key is None else box(secret_key)
        self._values: dict[str, Mapping[str, Any]] = {}
        self._fingerprints: dict[str, object] = {}
        self._errors: dict[str, str] = {}
        self._merged: dict[str, Any] = {}
        self._watches: set[ConfigWatch] = set()
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._reloaded = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        #: Bumped each time the merged configuration changes.
        self.version = 0

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sources)
        return f"<Config sources=[{names}] version={self.version} errors={sorted(self._errors)}>"

    @property
    def errors(self) -> dict[str, str]:
        """Why each failing source failed, by source name (empty when all loaded)."""
        return dict(self._errors)

    # ---- loading -------------------------------------------------------------------------------

    async def reload(self, *, force: bool = False) -> bool:
        """Load the sources whose fingerprint changed (all with ``force``); ``True`` if the
        merged configuration changed. Watchers are told before this returns."""
        async with self._lock:
            for source in self.sources:
                await self._load(source, force)
            merged: dict[str, Any] = {}
            for source in self.sources:
                merged = deep_merge(merged, self._values.get(source.name, {}))
            old, self._merged = self._merged, merged
            changed = merged != old
            if changed:
                self.version += 1
                self._notify(old, merged)
                self._changed.set()
                self._changed = trio.Event()
            self._reloaded.set()
            self._reloaded = trio.Event()
            return changed

    async def _load(self, source: Source, force: bool) -> None:
        name = source.name
        try:
            fp = source.fingerprint()
        except Exception as exc:
            fp = ("fingerprint failed", repr(exc))
        if not force and fp is not None and name in self._fingerprints and self._fingerprints[name] == fp:
            return
        # Record the fingerprint even on failure: a broken file is retried when it changes
        # again, not re-parsed (and re-reported) at every poll.
        self._fingerprints[name] = fp
        try:
            with trio.fail_after(self.load_timeout):
                tree = check_tree(await source.load(), name)
        except trio.TooSlowError:
            self._fail(name, f"loading took longer than {self.load_timeout} s")
        except Exception as exc:
            self._fail(name, str(getattr(exc, "detail", "") or exc) or type(exc).__name__)
        else:
            self._values[name] = tree
            if self._errors.pop(name, None) is not None:
                log.info("config source %s loaded again", name)

    def _fail(self, name: str, reason: str) -> None:
        if self._errors.get(name) != reason:  # log once per distinct reason, not every poll
            kept = "its last good value" if name in self._values else "nothing from it"
            log.warning("config source %s failed to load (%s); keeping %s", name, reason, kept)
        self._errors[name] = reason

    def _notify(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        for watch in list(self._watches):
            before, after = lookup(old, watch.parts), lookup(new, watch.parts)
            if before != after:
                watch._push(
                    Change(
                        watch.path,
                        None if before is ABSENT else copy.deepcopy(before),
                        None if after is ABSENT else copy.deepcopy(after),
                    )
                )

    async def wait_changed(self, since: int) -> int:
        """Wait until :attr:`version` is past ``since``; return the new version."""
        while self.version <= since:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()
        return self.version

    async def wait_reloaded(self) -> None:
        """Wait for the next reload (a poll) to finish, whether or not anything changed."""
        await self._reloaded.wait()

    async def run(self, interval: float) -> None:
        """Poll the sources every ``interval`` seconds, forever (start it in a nursery)."""
        while True:
            await trio.sleep(interval)
            await self.reload()

    # ---- reading -------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """A copy of the merged configuration; secrets in it stay sealed."""
        return copy.deepcopy(self._merged)

    def __contains__(self, path: str) -> bool:
        return lookup(self._merged, parse_path(path)) is not ABSENT

    @overload
    def get(self, path: str, type: None = None, *, default: Any = MISSING) -> Any: ...

    @overload
    def get(self, path: str, type: type[T], *, default: T = MISSING) -> T: ...

    def get(self, path: str, type: Any = None, *, default: Any = MISSING) -> Any:
        """The value at ``path`` (``"db.port"``), converted to ``type`` when given.

        Strings convert to int, float and bool (``true/false/1/0/yes/no/on/off``), a
        comma-separated string to a list; an attrs class is structured as by
        :meth:`get_section`. A sealed value is opened here (it needs the ``secret_key``).
        Raises :class:`NotFound` for a missing path without ``default`` and
        :class:`BadRequest`, naming the path, for a value that does not convert.
        """
        value = lookup(self._merged, parse_path(path))
        if value is ABSENT:
            if default is MISSING:
                raise NotFound(f"config {path} is not set")
            return default
        return self._typed(value, path, lambda opened: convert(opened, type, path))

    def get_section(self, path: str, cls: type[T]) -> T:
        """The map at ``path`` as attrs class ``cls``: fields converted by their annotations,
        missing ones from the class's defaults, unknown keys ignored; a field that does not
        fit raises :class:`BadRequest` naming it. ``path=""`` structures the whole config."""
        if not (isinstance(cls, type) and attrs.has(typing.cast(Any, cls))):
            raise BadRequest(f"get_section needs an attrs class, got {cls!r}")
        if path == "":
            return self._typed(self._merged, "config", lambda opened: structure(opened, cls, "config"))
        value = lookup(self._merged, parse_path(path))
        return self._typed(
            {} if value is ABSENT else value, path, lambda opened: structure(opened, cls, path)
        )

    def _typed(self, value: Any, path: str, convert: Callable[[Any], T]) -> T:
        """Open secrets in a copy of ``value`` and convert it; a conversion error about a value
        that held a secret does not repeat the value, which would put the plaintext in logs."""
        opened = self._open(copy.deepcopy(value), path)
        if not is_sealed(value):
            return convert(opened)
        try:
            return convert(opened)
        except BadRequest:
            raise BadRequest(f"config {path}: holds a secret that does not fit the requested type") from None

    def _open(self, value: Any, path: str) -> Any:
        if isinstance(value, str) and value.startswith(SEALED):
            return unseal(self._box, value, path)
        if isinstance(value, dict):
            return {k: self._open(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self._open(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    # ---- watching ------------------------------------------------------------------------------

    def watch(self, path: str) -> ConfigWatch:
        """Changes of the merged value at ``path`` from now on (see :class:`ConfigWatch`)."""
        watch = ConfigWatch(self, path)
        if self._closed:
            watch.close()
        else:
            self._watches.add(watch)
        return watch

    def watch_actor(self, path: str, ref: ActorRef, *, timeout: float = 5.0) -> Callable[[], None]:
        """Tell ``ref`` a :class:`ConfigChanged` for each change at ``path``; returns ``unwatch``.

        Needs a running config (:func:`open_config`): a task of it forwards the changes with
        ``tell``, so a busy actor slows only its own forwarding (changes queue up as in
        :meth:`watch`); one that takes longer than ``timeout`` to accept a message misses it,
        with a warning.
        """
        if self._nursery is None:
            raise Conflict("watch_actor needs a running config; use open_config()")
        watch = self.watch(path)  # registered now, so no change after this call is missed
        scope = trio.CancelScope()

        async def forward() -> None:
            with scope:
                async with watch:
                    async for change in watch:
                        with trio.move_on_after(timeout) as waited:
                            await tell(ref, ConfigChanged(change.path, change.old, change.new))
                        if waited.cancelled_caught:
                            log.warning("config change of %s not delivered to %s: mailbox full", path, ref)

        self._nursery.start_soon(forward, name=f"config-watch:{path}")

        def unwatch() -> None:
            watch.close()
            scope.cancel()

        return unwatch

    def _close(self) -> None:
        self._nursery = None
        self._closed = True
        for watch in list(self._watches):
            watch.close()


@asynccontextmanager
async def open_config(
    *sources: Source, interval: float = 0.2, secret_key: bytes | None = None, load_timeout: float = 5.0
) -> AsyncIterator[Config]:
    """A :class:`Config` loaded from ``sources`` (later wins) that reloads changed sources every
    ``interval`` seconds until the block ends; then its watches end too.

    The first load happens before the block starts; a source that fails it is reported in
    ``config.errors`` and the block still starts with the others.
    """
    if not interval > 0:
        raise BadRequest(f"config reload interval must be > 0 s, got {interval!r}")
    config = Config(sources, secret_key=secret_key, load_timeout=load_timeout)
    await config.reload(force=True)
    # An exception from the block is re-raised as itself, not inside the ExceptionGroup of the
    # reload nursery, so ``except NotFound:`` around the block works as expected.
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        config._nursery = nursery
        nursery.start_soon(config.run, interval, name="config-reload")
        try:
            yield config
        except BaseException as exc:
            body_error = exc
        finally:
            config._close()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


def default_sources(
    defaults: Mapping[str, Any] | None = None,
    *,
    files: Sequence[str | os.PathLike[str]] = (),
    env_prefix: str | None = "APP_",
    environ: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
    store: Store | None = None,
    store_key: str = "config",
) -> list[Source]:
    """The usual sources in the usual precedence: defaults < store < files < env < flags.

    Pass what applies: ``files`` in order (a later file wins), ``env_prefix=None`` to skip the
    environment, ``argv`` (e.g. ``sys.argv[1:]``) for flags, ``store`` for cluster-wide config.
    """
    sources: list[Source] = []
    if defaults is not None:
        sources.append(Defaults(defaults))
    if store is not None:
        sources.append(StoreSource(store, store_key))
    sources.extend(FileSource(f) for f in files)
    if env_prefix is not None:
        sources.append(EnvSource(env_prefix, environ=environ))
    if argv is not None:
        sources.append(FlagSource(argv))
    return sources


# --------------------------------------------------------------------------------------------
# The config actor


class ConfigActor(Actor):
    """Serves a :class:`Config` to other actors and nodes by ask (endpoints ``Config.get`` and
    ``Config.watch``). Sealed values are refused with :class:`Forbidden` unless
    ``reveal_secrets`` is set: a secret should not travel just because someone asked."""

    service_name = "Config"

    def __init__(self, config: Config, *, reveal_secrets: bool = False) -> None:
        self.config = config
        self.reveal_secrets = reveal_secrets

    async def get(self, msg: GetConfig) -> Any:
        if not self.reveal_secrets and is_sealed(lookup(self.config._merged, parse_path(msg.path))):
            raise Forbidden(f"config {msg.path} is a secret")
        return self.config.get(msg.path)

    async def watch(self, msg: WatchConfig) -> None:
        sender = self.context.sender
        if sender is None:
            raise BadRequest("WatchConfig must come from an actor, which receives the changes")
        self.config.watch_actor(msg.path, sender)
