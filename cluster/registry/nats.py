"""The registry on a NATS JetStream key-value bucket: ``nats://HOST:PORT?bucket=trimicro_registry``.

For nodes that cannot see each other's multicast (other hosts, containers) but reach one NATS
server. What maps to what:

* the registry is one KV bucket (``bucket=``, default ``trimicro_registry``, one value per key);
* each (service, version, cluster, node) is one key, ``name.version.cluster.node`` with each
  part escaped (:func:`~trimicro.cluster.natsio.escape`), holding that node's record (JSON:
  the service's description, the node, and its expiry);
* ``register(..., ttl)`` writes the key with its expiry (wall-clock unix seconds, as other
  processes read it) and a per-message TTL for the server (whole seconds, ``grace`` later):
  the server forgets a node that stopped refreshing, even if no client ever looks;
* ``deregister`` puts the key's delete marker.

Each registry keeps a copy of the bucket, fed by one watcher of the whole bucket (an ordered
consumer; after the client reconnects it starts again and the difference with the copy is
emitted as events). Lookups read the copy (no round trip), and ``watch`` serves the copy's
changes: CREATE for a key it did not hold, UPDATE for one it did, DELETE for a delete marker
or when a node's expiry passes (a waiting watcher notices that by itself, as
:class:`~trimicro.cluster.registry.MemoryRegistry` does). ``register``/``deregister`` return
once the copy holds their change (read your writes), with the connection's deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from trimicro.mailbox.errors import NotFound, RequestTimeout, ServiceUnavailable
from trimicro.mailbox.logs import get_logger

from ..natsio import SNAPSHOT_DONE, Inbox, NatsConnection, NatsOptions, escape, server_ttl, snapshot
from . import Endpoint, Event, EventType, NodeInfo, Service, Watchers, _ExpiringEvents, merge_nodes

__all__ = ["NatsRegistry"]

log = get_logger(__package__)

_TTL_HEADER = "Nats-TTL"
_DELETES = ("DEL", "PURGE")


@attrs.frozen
class _Entry:
    record: Service  # with its one node
    expiry: float | None
    revision: int


@attrs.frozen
class _Update:
    """One watcher message, as the loop hands it over: ``None`` data is a delete; ``snapshot``
    ends the initial values of watcher ``generation``."""

    generation: int
    key: str = ""
    data: bytes | None = None
    revision: int = 0
    snapshot_done: bool = False


def _encode(service: Service, node: NodeInfo, expiry: float | None) -> bytes:
    return json.dumps(
        {
            "name": service.name,
            "version": service.version,
            "metadata": service.metadata,
            "endpoints": [attrs.asdict(e) for e in service.endpoints],
            "node": attrs.asdict(node),
            "expiry": expiry,
        },
        separators=(",", ":"),
    ).encode()


def _decode(data: bytes) -> tuple[Service, float | None]:
    raw = json.loads(data)
    node = NodeInfo(**raw["node"])
    endpoints = tuple(Endpoint(**e) for e in raw["endpoints"])
    return Service(raw["name"], raw["version"], raw["metadata"], endpoints, (node,)), raw["expiry"]


def _key(service: Service, node: NodeInfo) -> str:
    return ".".join(escape(part) for part in (service.name, service.version, node.cluster, node.id))


class NatsRegistry:
    """A :class:`~trimicro.cluster.registry.Registry` on a JetStream KV bucket (module docstring)."""

    def __init__(
        self,
        options: NatsOptions | None = None,
        *,
        bucket: str = "trimicro_registry",
        grace: float = 5.0,
        connection: NatsConnection | None = None,
        buffer: int = 65536,
    ) -> None:
        self.conn = connection or NatsConnection(options or NatsOptions(), purpose="registry")
        self._owns = connection is None
        self.bucket = bucket
        self.grace = grace
        self._kv: Any = None
        self._entries: dict[str, _Entry] = {}
        self._watchers = Watchers()
        self._inbox: Inbox[_Update] = Inbox(
            self.conn.bridge, self._apply, limit=buffer, overflowed=self._resync
        )
        self._generation = 0
        self._snapshot: dict[str, _Entry] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ready = trio.Event()
        self._applied = 0
        self._progress = trio.Event()
        self._lock = trio.Lock()
        self._closed = False
        #: How often the copy was rebuilt (a reconnect, an overflow): for tools and tests.
        self.resyncs = 0

    # ---- the copy of the bucket ---------------------------------------------------------------------

    async def _start(self) -> None:
        if self._closed:
            raise ServiceUnavailable("registry is closed", id="nats")
        if self._kv is None:
            async with self._lock:
                if self._kv is None:
                    await self._open()
        with trio.move_on_after(self.conn.options.timeout):
            await self._ready.wait()
        if not self._ready.is_set():
            raise RequestTimeout("registry: the bucket's watcher gave no snapshot in time", id="nats")

    async def _open(self) -> None:
        async def open_bucket() -> Any:
            import nats.js.errors

            try:
                return await self.conn.js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                return await self.conn.js.create_key_value(
                    bucket=self.bucket, history=1, description="trimicro registry"
                )

        self._kv = await self.conn.run(open_bucket, "open bucket")
        self.conn.on_reconnect.append(self._resync)
        await self._watch()

    async def _watch(self) -> None:
        """Start (again) the watcher of the whole bucket; its snapshot replaces the copy."""
        self._generation += 1
        generation = self._generation
        self._snapshot = {}
        kv, push, old = self._kv, self._inbox.push, self._pump

        async def start() -> asyncio.Task[None]:
            if old is not None:
                old.cancel()
            entries = snapshot(kv)
            first = await anext(entries)  # the watcher exists: nothing written from now is missed

            async def pump() -> None:
                try:
                    entry = first
                    while True:
                        if entry is SNAPSHOT_DONE:
                            push(_Update(generation, snapshot_done=True))
                        else:
                            deleted = entry.operation in _DELETES
                            data = None if deleted else (entry.value or b"")
                            push(_Update(generation, entry.key, data, entry.revision or 0))
                        entry = await anext(entries)
                finally:
                    await entries.aclose()

            return asyncio.ensure_future(pump())

        self._pump = await self.conn.run(start, "watch")

    def _resync(self) -> None:
        """Rebuild the copy (after a reconnect, or when the hand-over overflowed)."""
        if self._closed or self._kv is None:
            return
        self.resyncs += 1
        trio.lowlevel.spawn_system_task(self._resync_task)

    async def _resync_task(self) -> None:
        try:
            await self._watch()
        except Exception as exc:  # retried at the next reconnect
            log.warning("registry: restarting the watcher failed: %s", exc)

    def _apply(self, batch: list[_Update]) -> None:
        """In trio: apply the watcher's updates to the copy, emitting the events."""
        for update in batch:
            if update.generation != self._generation:
                continue  # an old watcher's last words
            if update.snapshot_done:
                self._finish_snapshot()
                continue
            entry = None
            if update.data is not None:
                try:
                    record, expiry = _decode(update.data)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("registry: ignoring key %s, not a trimicro record: %s", update.key, exc)
                    continue
                entry = _Entry(record, expiry, update.revision)
            if self._snapshot is not None:
                if entry is None:
                    self._snapshot.pop(update.key, None)
                else:
                    self._snapshot[update.key] = entry
            else:
                self._change(update.key, entry)
            self._applied = max(self._applied, update.revision)
        self._progress.set()
        self._progress = trio.Event()

    def _finish_snapshot(self) -> None:
        snapshot, self._snapshot = self._snapshot or {}, None
        for key in [k for k in self._entries if k not in snapshot]:
            self._change(key, None)
        for key, entry in snapshot.items():
            self._change(key, entry)
        self._ready.set()

    def _change(self, key: str, entry: _Entry | None) -> None:
        old = self._entries.get(key)
        if entry is None:
            if old is not None:
                del self._entries[key]
                self._watchers.emit(Event(EventType.DELETE, old.record))
            return
        if old is not None and old.revision == entry.revision:
            return
        if entry.expiry is not None and entry.expiry <= time.time():
            if old is not None:  # refreshed too late: it lapsed
                del self._entries[key]
                self._watchers.emit(Event(EventType.DELETE, old.record))
            return
        self._entries[key] = entry
        kind = EventType.UPDATE if old is not None else EventType.CREATE
        self._watchers.emit(Event(kind, entry.record))

    def _expire(self) -> None:
        now = time.time()
        for key, entry in list(self._entries.items()):
            if entry.expiry is not None and entry.expiry <= now:
                del self._entries[key]
                self._watchers.emit(Event(EventType.DELETE, entry.record))

    def _next_expiry(self) -> float:
        """When the next entry lapses, on trio's clock."""
        soonest = min((e.expiry for e in self._entries.values() if e.expiry is not None), default=math.inf)
        return trio.current_time() + (soonest - time.time()) if soonest != math.inf else math.inf

    async def _until_applied(self, revision: int) -> None:
        try:
            with trio.fail_after(self.conn.options.timeout):
                while self._applied < revision:
                    await self._progress.wait()
        except trio.TooSlowError:
            raise RequestTimeout(
                f"registry: revision {revision} not seen by the watcher in time", id="nats"
            ) from None

    # ---- the Registry interface --------------------------------------------------------------------

    async def register(self, service: Service, ttl: float | None = None) -> None:
        await self._start()
        expiry = None if ttl is None else time.time() + ttl
        headers = None if ttl is None else {_TTL_HEADER: str(server_ttl(ttl, self.grace))}
        writes = [
            (f"$KV.{self.bucket}.{_key(service, node)}", _encode(service, node, expiry))
            for node in service.nodes
        ]
        js = self.conn.js

        async def put() -> int:
            last = 0
            for subject, payload in writes:
                last = (await js.publish(subject, payload, headers=headers)).seq
            return last

        await self._until_applied(await self.conn.run(put, "register"))

    async def deregister(self, service: Service) -> None:
        await self._start()
        keys = [_key(service, node) for node in service.nodes]

        async def delete() -> int:
            last = 0
            for key in keys:
                ack = await self.conn.js.publish(f"$KV.{self.bucket}.{key}", headers={"KV-Operation": "DEL"})
                last = ack.seq
            return last

        await self._until_applied(await self.conn.run(delete, "deregister"))

    def _records(self, name: str | None = None) -> list[Service]:
        self._expire()
        return merge_nodes(e.record for e in self._entries.values() if name is None or e.record.name == name)

    async def get_service(self, name: str) -> list[Service]:
        await self._start()
        found = self._records(name)
        if not found:
            raise NotFound(f"service {name} not found", id="registry")
        return found

    async def list_services(self) -> list[Service]:
        await self._start()
        return self._records()

    async def ping(self) -> None:
        """A round trip to the server (lookups read the local copy): the readiness check's."""
        await self.conn.ping()

    def watch(self, service: str | None = None) -> Any:
        return self._watch_events(service)

    @asynccontextmanager
    async def _watch_events(self, service: str | None) -> AsyncIterator[AsyncIterator[Event]]:
        await self._start()
        async with self._watchers.watch(service) as events:
            yield _ExpiringEvents(self, events)

    async def aclose(self) -> None:
        """Stop the watcher and close the connection (if this registry opened it)."""
        if self._closed:
            return
        self._closed = True
        self._watchers.close()
        pump = self._pump
        if pump is not None and not self.conn.closed and self.conn.bridge.opened:
            self.conn.bridge.soon(pump.cancel)
        if self._owns:
            await self.conn.aclose()
