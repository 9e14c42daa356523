"""Service discovery: Go Micro's registry interface, its records, and an in-memory backend.

A :class:`Service` record says that a named, versioned service runs on some nodes and which
endpoints it answers. Backends implement :class:`Registry` (register with a TTL, deregister,
get_service, list_services, watch); :class:`MemoryRegistry` is the one for a single process and
for tests, :class:`StaticRegistry` serves a fixed list (seed addresses), and
:mod:`trimicro.cluster.mdns` announces records over multicast DNS (the default).

A record is only a hint: the node id and address it names are checked by the secure handshake
(the certificate must be for that node id), so a forged record cannot capture traffic.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any, Protocol

import attrs
import trio

from trimicro.mailbox.errors import NotFound

__all__ = [
    "Endpoint",
    "Event",
    "EventType",
    "MemoryRegistry",
    "NodeInfo",
    "Registry",
    "Service",
    "StaticRegistry",
    "Watchers",
    "merge_nodes",
]


@attrs.frozen
class Endpoint:
    """One endpoint: ``"Greeter.hello"``, with the field names and types of request and response."""

    name: str
    request: dict[str, str] = attrs.field(factory=dict, hash=False)
    response: dict[str, str] = attrs.field(factory=dict, hash=False)
    metadata: dict[str, str] = attrs.field(factory=dict, hash=False)
    stream: bool = False


@attrs.frozen
class NodeInfo:
    """One instance of a service: the node id, where to dial it, and free-form metadata."""

    id: str
    address: str
    metadata: dict[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class Service:
    """A service as the registry knows it (Go Micro's ``registry.Service``)."""

    name: str
    version: str = "latest"
    metadata: dict[str, str] = attrs.field(factory=dict, hash=False)
    endpoints: tuple[Endpoint, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()

    def with_nodes(self, nodes: Iterable[NodeInfo]) -> Service:
        return attrs.evolve(self, nodes=tuple(nodes))


class EventType(Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@attrs.frozen
class Event:
    """A change seen by ``watch``: ``service`` holds the nodes that were added, changed or removed."""

    type: EventType
    service: Service


class Registry(Protocol):
    """What every registry backend provides (after Go Micro's ``registry.Registry``)."""

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Announce ``service`` (its ``nodes`` are the instances being added) for ``ttl`` seconds."""
        ...

    async def deregister(self, service: Service) -> None:
        """Withdraw the given nodes of ``service``."""
        ...

    async def get_service(self, name: str) -> list[Service]:
        """Every version of ``name``, with their live nodes; ``NotFound`` if there is none."""
        ...

    async def list_services(self) -> list[Service]:
        """Every known service (nodes may be left out)."""
        ...

    def watch(self, service: str | None = None) -> Any:
        """An async context manager yielding an async iterator of :class:`Event`."""
        ...


def merge_nodes(records: Iterable[Service]) -> list[Service]:
    """Group records by (name, version), merging their nodes (the last record of a node wins).

    The merged record keeps the first record's description (metadata, endpoints), or the first
    that has endpoints: records learnt from membership gossip carry none.
    """
    merged: dict[tuple[str, str], tuple[Service, dict[str, NodeInfo]]] = {}
    for record in records:
        key = (record.name, record.version)
        base, nodes = merged.get(key, (record, {}))
        if not base.endpoints and record.endpoints:
            base = record
        for node in record.nodes:
            nodes[node.id] = node
        merged[key] = (base, nodes)
    return [svc.with_nodes(nodes.values()) for svc, nodes in merged.values()]


class Watchers:
    """The watch side of a registry backend: each watcher gets CREATE/UPDATE/DELETE events for
    one service (or all) through a bounded channel; one that falls ``buffer`` behind is dropped."""

    def __init__(self, buffer: int = 1024) -> None:
        self.buffer = buffer
        self._entries: list[tuple[str | None, trio.MemorySendChannel[Event]]] = []

    @asynccontextmanager
    async def watch(self, service: str | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        send, receive = trio.open_memory_channel[Event](self.buffer)
        entry = (service, send)
        self._entries.append(entry)
        try:
            async with receive:
                yield receive
        finally:
            if entry in self._entries:
                self._entries.remove(entry)
            send.close()

    def emit(self, event: Event) -> None:
        for wanted, send in list(self._entries):
            if wanted is not None and wanted != event.service.name:
                continue
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._entries.remove((wanted, send))
                send.close()

    def close(self) -> None:
        for _, send in self._entries:
            send.close()
        self._entries.clear()


class MemoryRegistry:
    """An in-process registry: shared by the nodes of one process (tests, single-process apps).

    Each (service, version, node) entry expires ``ttl`` seconds after it was last registered
    (trio's clock); watchers get CREATE/UPDATE/DELETE events, with a bounded buffer each (a
    watcher that falls 1024 events behind is dropped, its iterator ends).
    """

    def __init__(self) -> None:
        # (name, version) -> node id -> (record without other nodes, node, expiry)
        self._entries: dict[tuple[str, str], dict[str, tuple[Service, NodeInfo, float]]] = {}
        self._watchers = Watchers()

    def _expire(self) -> None:
        now = trio.current_time()
        for key, nodes in list(self._entries.items()):
            for node_id, (svc, node, expiry) in list(nodes.items()):
                if expiry <= now:
                    del nodes[node_id]
                    self._emit(Event(EventType.DELETE, svc.with_nodes([node])))
            if not nodes:
                del self._entries[key]

    def _emit(self, event: Event) -> None:
        self._watchers.emit(event)

    async def register(self, service: Service, ttl: float | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self._expire()
        expiry = math.inf if ttl is None else trio.current_time() + ttl
        nodes = self._entries.setdefault((service.name, service.version), {})
        for node in service.nodes:
            existed = node.id in nodes
            record = service.with_nodes([node])
            nodes[node.id] = (record, node, expiry)
            self._emit(Event(EventType.UPDATE if existed else EventType.CREATE, record))

    async def deregister(self, service: Service) -> None:
        await trio.lowlevel.checkpoint()
        nodes = self._entries.get((service.name, service.version), {})
        for node in service.nodes:
            entry = nodes.pop(node.id, None)
            if entry is not None:
                self._emit(Event(EventType.DELETE, entry[0]))
        if not nodes:
            self._entries.pop((service.name, service.version), None)

    async def get_service(self, name: str) -> list[Service]:
        await trio.lowlevel.checkpoint()
        self._expire()
        found = [
            entries[0][0].with_nodes(node for _, node, _ in entries)
            for (svc_name, _), nodes in self._entries.items()
            if svc_name == name and nodes
            for entries in [list(nodes.values())]
        ]
        if not found:
            raise NotFound(f"service {name} not found", id="registry")
        return found

    async def list_services(self) -> list[Service]:
        await trio.lowlevel.checkpoint()
        self._expire()
        return [
            next(iter(nodes.values()))[0].with_nodes(node for _, node, _ in nodes.values())
            for nodes in self._entries.values()
            if nodes
        ]

    def watch(self, service: str | None = None) -> Any:
        return self._watchers.watch(service)


class StaticRegistry:
    """A fixed list of services (seed addresses); register/deregister only change this copy."""

    def __init__(self, services: Iterable[Service] = ()) -> None:
        self._memory = MemoryRegistry()
        self._seed = list(services)
        self._seeded = False

    async def _seed_once(self) -> None:
        if not self._seeded:
            self._seeded = True
            for svc in self._seed:
                await self._memory.register(svc)

    async def register(self, service: Service, ttl: float | None = None) -> None:
        await self._seed_once()
        await self._memory.register(service, ttl)

    async def deregister(self, service: Service) -> None:
        await self._seed_once()
        await self._memory.deregister(service)

    async def get_service(self, name: str) -> list[Service]:
        await self._seed_once()
        return await self._memory.get_service(name)

    async def list_services(self) -> list[Service]:
        await self._seed_once()
        return await self._memory.list_services()

    def watch(self, service: str | None = None) -> Any:
        return self._memory.watch(service)
