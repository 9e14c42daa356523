"""Service discovery: Go Micro's registry interface, its records, and an in-memory backend.

A :class:`Service` record says that a named, versioned service runs on some nodes and which
endpoints it answers. Backends implement :class:`Registry` (register with a TTL, deregister,
get_service, list_services, watch); :class:`MemoryRegistry` is the one for a single process and
for tests, :class:`StaticRegistry` serves a fixed list (seed addresses), and
:class:`MdnsRegistry` (:mod:`.mdns`) announces records over multicast DNS (the default).
:class:`RegistryCache` (:mod:`.cache`) keeps a watched copy in front of any of them.
:class:`~.nats.NatsRegistry` (:mod:`.nats`, ``nats://``) keeps records in a JetStream KV bucket
(imported only when chosen: it needs nats-py).

A record is only a hint: the node id and address it names are checked by the secure handshake
(the certificate must be for that node id), so a forged record cannot capture traffic.

**Which cluster.** Several clusters (each with its own authority) may announce the same service
names, even the same node ids, on one machine or segment. Each node therefore says which cluster
it belongs to (:attr:`NodeInfo.cluster`, the :func:`cluster_fingerprint` of the authority that
certified it), :func:`merge_nodes` never mixes clusters in one record, and a cluster node keeps
only the nodes of clusters it trusts (:func:`in_clusters`) *before* it dials anything: dialing a
foreign node only fails its handshake, and that failure used to cost calls and retries.

**The interface** (what :class:`~trimicro.testing.conformance.RegistryConformance` checks):

* ``register(service, ttl)``: add the record's nodes (records of one name and version merge
  their nodes; registering again updates and refreshes the TTL); the registration lapses
  ``ttl`` seconds after it was last made (``None``: the backend's default);
* ``deregister(service)``: withdraw exactly the given nodes; unknown ones are ignored;
* ``get_service(name)``: every version, with live nodes; raises
  :class:`~trimicro.mailbox.errors.NotFound` (404) when there is none;
* ``list_services()``: every known service (nodes may be left out);
* ``watch(service=None)``: an async context manager yielding an async iterator of
  :class:`Event`; for each node CREATE, then UPDATE, then DELETE, in the order of the changes
  (a lapse is a DELETE); every watcher gets every event; a watcher too far behind is dropped
  (its iterator ends) rather than buffering without bound;
* ``aclose()``, if the backend holds resources: the cluster closes what a URL built.

A backend must keep ``NodeInfo.cluster`` as given (nodes keep only the clusters they trust),
treat what it reads from a shared medium as untrusted (validate, bound, skip the malformed),
and never block the trio loop. Backends are chosen by URL (group ``trimicro.registry``):
``mdns://`` (default), ``memory://``, ``static://``, ``nats://``, and any installed plugin.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any, Protocol

import attrs
import trio

from trimicro.mailbox.errors import MicroError, NotFound
from trimicro.mailbox.logs import get_logger

log = get_logger(__package__)

__all__ = [
    "NODE_SERVICE",
    "Endpoint",
    "Event",
    "EventType",
    "MdnsRegistry",
    "MemoryRegistry",
    "NodeInfo",
    "Registry",
    "RegistryCache",
    "Service",
    "StaticRegistry",
    "Watchers",
    "belongs",
    "cluster_fingerprint",
    "clusters_of",
    "in_clusters",
    "merge_nodes",
]

#: The registry record every cluster node announces, so that peers can find it for membership
#: (seed lists name it too).
NODE_SERVICE = "trimicro.node"

_FINGERPRINT_BYTES = 16  # 128 bits of SHA-256: two authorities' names never collide by chance


def cluster_fingerprint(authority_key: bytes) -> str:
    """The cluster a node belongs to, as discovery records name it: the first 16 bytes of the
    SHA-256 of the 32-byte Ed25519 public key of the authority that certified the node, as 32
    lowercase hex digits. Not a secret and not a proof (anyone can copy it into a record): it
    lets a client skip other clusters' nodes instead of failing a handshake with each."""
    return hashlib.sha256(bytes(authority_key)).hexdigest()[: 2 * _FINGERPRINT_BYTES]


def clusters_of(identity: Any) -> tuple[str, frozenset[str]]:
    """This node's cluster fingerprint and those of the authorities it trusts, from its identity.

    An identity without a readable certificate names no cluster, and one without a ``trusted``
    list (it judges peers some other way) filters nothing: only its handshake can tell.
    """
    from trimicro.mailbox.secure.identity import Certificate

    try:
        own = cluster_fingerprint(Certificate.decode(identity.certificate).issuer)
    except (AttributeError, TypeError, ValueError, MicroError):
        own = ""
    trusted = getattr(identity, "trusted", None)
    if trusted is None:
        return own, frozenset()
    return own, frozenset(cluster_fingerprint(key) for key in trusted)


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
    """One instance of a service: the node id, where to dial it, free-form metadata, and the
    :func:`cluster_fingerprint` of its authority (``""``: the record names no cluster, and a
    node that knows its own does not dial it, see :func:`belongs`)."""

    id: str
    address: str
    metadata: dict[str, str] = attrs.field(factory=dict, hash=False)
    cluster: str = ""


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
    """Group records by (name, version, cluster), merging their nodes (the last record of a node wins).

    The merged record keeps the first record's description (metadata, endpoints), or the first
    that has endpoints: records learnt from membership gossip carry none. Nodes of different
    clusters never share a merged record: another cluster may describe the same name
    differently, and may use the same node ids.
    """
    merged: dict[tuple[str, str, str], tuple[Service, dict[str, NodeInfo]]] = {}
    for record in records:
        by_cluster: dict[str, list[NodeInfo]] = {}
        for node in record.nodes:
            by_cluster.setdefault(node.cluster, []).append(node)
        for cluster, nodes in by_cluster.items() or [("", [])]:
            key = (record.name, record.version, cluster)
            base, known = merged.get(key, (record, {}))
            if not base.endpoints and record.endpoints:
                base = record
            for node in nodes:
                known[node.id] = node
            merged[key] = (base, known)
    return [svc.with_nodes(nodes.values()) for svc, nodes in merged.values()]


def belongs(node: NodeInfo, clusters: Collection[str]) -> bool:
    """Whether a client trusting ``clusters`` (fingerprints) may dial ``node``.

    A client that cannot tell its clusters (empty ``clusters``) keeps every node. A node that
    names no cluster is not kept by one that can: on a shared medium it may belong to anyone (an
    older trimicro, another cluster's hand-written record), and a seed list can name the cluster.
    Such a record is logged at WARNING: a seed built without ``cluster`` would otherwise be a
    404 with no word of why. Records come from a shared medium, so the warning repeats as often
    as they are read: the package logger's rate limit (:mod:`trimicro.mailbox.logs`) lets a few
    through, then one now and then that counts the rest. A record naming another cluster is the
    normal case of two clusters on one machine, and is not logged.
    """
    if not clusters or node.cluster in clusters:
        return True
    if not node.cluster:
        log.warning(
            "ignoring the record of node %s at %s: it names no cluster (give NodeInfo its "
            "cluster, the fingerprint of the authority that certified the node)",
            node.id,
            node.address,
        )
    return False


def in_clusters(services: Iterable[Service], clusters: Collection[str]) -> list[Service]:
    """``services`` with only the nodes that :func:`belongs` allows, merged; records left
    without nodes are dropped (a record that listed none stays: some backends list no nodes)."""
    kept = ((svc, [n for n in svc.nodes if belongs(n, clusters)]) for svc in services)
    return merge_nodes(svc.with_nodes(nodes) for svc, nodes in kept if nodes or not svc.nodes)


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
    watcher that falls 1024 events behind is dropped, its iterator ends). A lapsed entry is
    removed by the next call, or by a waiting watcher when it falls due, whichever comes first:
    either way every watcher gets its DELETE.
    """

    def __init__(self) -> None:
        # (name, version) -> (cluster, node id) -> (record without other nodes, node, expiry)
        self._entries: dict[tuple[str, str], dict[tuple[str, str], tuple[Service, NodeInfo, float]]] = {}
        self._watchers = Watchers()

    def _expire(self) -> None:
        now = trio.current_time()
        for key, nodes in list(self._entries.items()):
            for node_key, (svc, node, expiry) in list(nodes.items()):
                if expiry <= now:
                    del nodes[node_key]
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
            existed = (node.cluster, node.id) in nodes
            record = service.with_nodes([node])
            nodes[node.cluster, node.id] = (record, node, expiry)
            self._emit(Event(EventType.UPDATE if existed else EventType.CREATE, record))

    async def deregister(self, service: Service) -> None:
        await trio.lowlevel.checkpoint()
        nodes = self._entries.get((service.name, service.version), {})
        for node in service.nodes:
            entry = nodes.pop((node.cluster, node.id), None)
            if entry is not None:
                self._emit(Event(EventType.DELETE, entry[0]))
        if not nodes:
            self._entries.pop((service.name, service.version), None)

    def _records(self, name: str | None = None) -> list[Service]:
        return merge_nodes(
            record
            for (svc_name, _), nodes in self._entries.items()
            if name is None or svc_name == name
            for record, _, _ in nodes.values()
        )

    async def get_service(self, name: str) -> list[Service]:
        await trio.lowlevel.checkpoint()
        self._expire()
        found = self._records(name)
        if not found:
            raise NotFound(f"service {name} not found", id="registry")
        return found

    async def list_services(self) -> list[Service]:
        await trio.lowlevel.checkpoint()
        self._expire()
        return self._records()

    def _next_expiry(self) -> float:
        return min(
            (expiry for nodes in self._entries.values() for _, _, expiry in nodes.values()), default=math.inf
        )

    def watch(self, service: str | None = None) -> Any:
        return self._watch(service)

    @asynccontextmanager
    async def _watch(self, service: str | None) -> AsyncIterator[AsyncIterator[Event]]:
        async with self._watchers.watch(service) as events:
            yield _ExpiringEvents(self, events)


class _Expiring(Protocol):
    """A registry whose entries lapse: when the next one is due (trio's clock), and expiring them
    (emitting their DELETEs to every watcher)."""

    def _next_expiry(self) -> float: ...

    def _expire(self) -> None: ...


class _ExpiringEvents:
    """A watcher's events (:class:`MemoryRegistry`'s, the NATS registry's), including the DELETE
    of a node whose TTL lapses while the watcher waits. Expiry is otherwise noticed only by the
    next call on the registry, so a watcher of a quiet registry (a cache, membership) would keep
    a dead node forever: here the waiting watcher itself expires entries when the next one is due."""

    def __init__(self, registry: _Expiring, events: AsyncIterator[Event]) -> None:
        self._registry = registry
        self._events = events

    def __aiter__(self) -> _ExpiringEvents:
        return self

    async def __anext__(self) -> Event:
        while True:
            with trio.move_on_at(self._registry._next_expiry()):
                try:
                    return await anext(self._events)  # StopAsyncIteration when the watch ends
                except trio.ClosedResourceError:
                    raise StopAsyncIteration from None
            self._registry._expire()  # emits the DELETEs (to every watcher), received next turn


class StaticRegistry:
    """A fixed list of services (seed addresses); register/deregister only change this copy.

    Give each seed node its ``cluster`` (:func:`cluster_fingerprint` of the cluster's authority
    key): a cluster node does not dial a node whose record names no cluster it trusts.
    ``seeds`` are bare ``host:port`` addresses of members (node ids unknown): not records, but
    addresses that a cluster node joins through (:mod:`trimicro.cluster.membership.seeds`)."""

    def __init__(self, services: Iterable[Service] = (), *, seeds: Iterable[str] = ()) -> None:
        self.seeds = tuple(seeds)
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


# The implementations beside this module build on the types above, so they load last.
from .cache import RegistryCache  # noqa: E402
from .mdns import MdnsRegistry  # noqa: E402
