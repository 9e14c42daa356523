"""NATS for trimicro's plugins: one nats-py connection behind a trio bridge, and NATS names.

The registry (:mod:`trimicro.cluster.registry.nats`), broker (:mod:`trimicro.cluster.broker.nats`)
and store (:mod:`trimicro.cluster.store.nats`) on NATS share this: a :class:`NatsConnection`
owns the asyncio loop (:mod:`.bridge`, stepped by trio in trio's own thread: :mod:`.hosted`)
running the official client, reconnecting by itself
(forever, by default) when the server goes away; every call from trio has a deadline.
:mod:`.keys` turns trimicro's names into what NATS allows.

The URL options common to the three plugins are parsed here (:func:`options_from_url`):
``nats://HOST:PORT[,HOST:PORT...]?timeout=5&connect_timeout=5&reconnect_wait=0.5&name=...``
(user and password as ``nats://user:pass@host:port``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
import trio

from trimicro.mailbox.errors import ServiceUnavailable
from trimicro.mailbox.logs import get_logger

from .bridge import Bridge, Inbox, Outbox
from .keys import bucket_name, escape, unescape
from .requests import Requests

__all__ = [
    "COMMON_OPTIONS",
    "SNAPSHOT_DONE",
    "Bridge",
    "Inbox",
    "NatsConnection",
    "NatsOptions",
    "Outbox",
    "Requests",
    "bucket_name",
    "escape",
    "options_from_url",
    "server_ttl",
    "snapshot",
    "unescape",
]

log = get_logger(__package__)

T = TypeVar("T")

#: The URL query options every NATS plugin takes (each plugin adds its own).
COMMON_OPTIONS = ("timeout", "connect_timeout", "reconnect_wait", "name")


@attrs.frozen
class NatsOptions:
    """Where and how to connect: ``servers`` (``nats://host:port`` each), the deadline of every
    call (``timeout``), of the first connection (``connect_timeout``), the pause between
    reconnection attempts (``reconnect_wait``) and the client's name the server shows."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    timeout: float = 5.0
    connect_timeout: float = 5.0
    reconnect_wait: float = 0.5
    name: str = "trimicro"


def _seconds(text: str, what: str, url: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{url}: {what} must be seconds, not {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{url}: {what} must be seconds > 0, not {text!r}")
    return value


def options_from_url(
    text: str, host: str, params: Mapping[str, str], allowed: tuple[str, ...]
) -> NatsOptions:
    """The :class:`NatsOptions` of a ``nats://`` URL (``host`` and ``params`` as parsed);
    ``allowed`` are the plugin's own query options, also accepted (and ignored here)."""
    unknown = sorted(set(params) - set(COMMON_OPTIONS) - set(allowed))
    if unknown:
        known = ", ".join((*COMMON_OPTIONS, *allowed))
        raise ValueError(f"{text}: unknown option(s) {', '.join(unknown)} (known: {known})")
    servers = tuple(f"nats://{h.strip()}" for h in host.split(",") if h.strip()) or NatsOptions.servers
    found: dict[str, Any] = {"servers": servers}
    for key in ("timeout", "connect_timeout", "reconnect_wait"):
        if key in params:
            found[key] = _seconds(params[key], key, text)
    if "name" in params:
        found["name"] = params["name"]
    return NatsOptions(**found)


async def snapshot(kv: Any) -> AsyncGenerator[Any, None]:
    """On the loop: the current entries of a KV bucket (deletes included), then the watcher's
    later updates, as :class:`SNAPSHOT_DONE` marks the end of the current ones.

    Not nats-py's own end marker (a ``None`` entry): it is sent when the consumer reports
    nothing pending, which a consumer just made can report before it counted the bucket's
    messages, so a scan would end early, empty. Here the end is the entry delivered with nothing
    pending after it, or, for a bucket that holds no message, at once.
    """
    info = await kv._js.stream_info(kv._stream)
    watcher = await kv.watchall()
    try:
        if not info.state.messages:
            yield SNAPSHOT_DONE
            done = True
        else:
            done = False
        async for entry in watcher:
            if entry is None:
                continue
            yield entry
            if not done and not entry.delta:
                done = True
                yield SNAPSHOT_DONE
    finally:
        try:
            await watcher.stop()
        except Exception as exc:  # the connection is gone: nothing left to stop
            log.debug("watcher stop: %s", exc)


#: What :func:`snapshot` yields after the bucket's current entries.
SNAPSHOT_DONE = object()


def server_ttl(seconds: float, grace: float) -> int:
    """A per-message TTL for the server (whole seconds, at least 1) that lapses ``grace`` seconds
    after ``seconds``: the server's clean-up of what clients already treat as expired."""
    return max(1, math.ceil(seconds + grace))


class NatsConnection:
    """One nats-py client on its own asyncio loop (stepped by trio), used from trio.

    :meth:`connect` (idempotent, safe from concurrent tasks) connects on first use;
    :meth:`run` runs a coroutine function of the client on the loop with the deadline
    ``options.timeout``; :meth:`aclose` closes the client and stops the thread.
    ``on_reconnect`` callbacks run in trio after the client reconnected (a watcher restarts).
    """

    def __init__(self, options: NatsOptions, *, purpose: str = "nats") -> None:
        self.options = options
        self.purpose = purpose
        self.bridge = Bridge(f"trimicro-{purpose}")
        self.nc: Any = None
        self.js: Any = None
        self._lock = trio.Lock()
        self._closed = False
        self.on_reconnect: list[Callable[[], None]] = []
        #: How often the client lost and regained the server (for tools and tests).
        self.disconnects = 0
        self.reconnects = 0
        #: Round trips with no task on the loop per request (:mod:`.requests`).
        self.requests = Requests(self)

    @property
    def closed(self) -> bool:
        return self._closed

    async def connect(self) -> None:
        if self.nc is not None:
            return
        if self._closed:
            raise ServiceUnavailable(f"{self.purpose}: closed", id="nats")
        async with self._lock:
            if self.nc is not None:
                return
            if self._closed:
                raise ServiceUnavailable(f"{self.purpose}: closed", id="nats")
            if not self.bridge.opened:
                self.bridge.open()
            self.nc, self.js = await self.bridge.call(
                self._connect, timeout=self.options.connect_timeout + 1.0, what=f"{self.purpose}: connect"
            )

    async def _connect(self) -> tuple[Any, Any]:
        import nats

        options = self.options
        token = self.bridge.token

        async def disconnected() -> None:
            self.disconnects += 1

        async def reconnected() -> None:
            self.reconnects += 1
            for callback in list(self.on_reconnect):
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(callback)

        async def error(exc: Exception) -> None:
            log.debug("%s: %s", self.purpose, exc)

        try:
            nc = await nats.connect(
                servers=list(options.servers),
                name=options.name,
                connect_timeout=max(1, math.ceil(options.connect_timeout)),
                reconnect_time_wait=options.reconnect_wait,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
            )
        except Exception as exc:
            raise ServiceUnavailable(
                f"{self.purpose}: cannot connect to {_shown(options.servers)}: {exc or type(exc).__name__}",
                id="nats",
            ) from exc
        return nc, nc.jetstream(timeout=options.timeout)

    async def run(
        self, make: Callable[[], Coroutine[Any, Any, T]], what: str, timeout: float | None = None
    ) -> T:
        """Connect if need be, then run ``make()`` on the loop (see :meth:`Bridge.call`)."""
        await self.connect()
        return await self.bridge.call(
            make, timeout=timeout or self.options.timeout, what=f"{self.purpose}: {what}"
        )

    async def ping(self) -> None:
        """A round trip to the server now (PING, PONG), for health checks: a registry that
        reads its local copy answers lookups while the server is gone, a ping does not."""
        await self.connect()
        nc = self.nc
        if not nc.is_connected:
            raise ServiceUnavailable(
                f"{self.purpose}: not connected to {_shown(self.options.servers)}", id="nats"
            )
        await self.run(lambda: nc.flush(timeout=max(1, math.ceil(self.options.timeout))), "ping")

    async def aclose(self) -> None:
        """Flush and close the client, then stop the thread; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        nc = self.nc
        if nc is not None:
            with trio.move_on_after(self.options.timeout):
                try:
                    await self.bridge.call(nc.close, timeout=self.options.timeout, what="close")
                except Exception as exc:  # closing a dead connection: nothing more to release
                    log.debug("%s: close: %s", self.purpose, exc)
        await self.bridge.close()


def _shown(servers: Sequence[str]) -> str:
    """The servers as an error may show them: without the user and password a URL may carry
    (``nats://user:secret@host:4222``), since errors reach health reports and their readers."""
    shown = []
    for server in servers:
        parts = urlsplit(server)
        if parts.username is not None or parts.password is not None:
            server = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        shown.append(server)
    return ", ".join(shown)
