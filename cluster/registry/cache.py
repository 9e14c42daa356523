"""A registry cache: fast lookups, kept fresh by watch, and the last known data when the backend fails.

Go Micro's ``registry/cache`` does the same: every call resolves a service by name, and asking
the backend (mDNS, a database) each time would put a network round trip in front of every call.
Entries are refreshed from the backend at most every ``ttl`` seconds and updated at once by
watch events; if a refresh fails, the stale entry is served (with a warning) rather than failing
the call, since the nodes it names are checked by the handshake anyway.

Only nodes of the clusters given as ``clusters`` (authority fingerprints, see
:func:`~trimicro.cluster.registry.in_clusters`) get in, from lookups and from watch events
alike: another cluster's record on the same machine is dropped before anything dials it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import trio

from trimicro.mailbox.errors import MicroError, NotFound
from trimicro.mailbox.logs import get_logger

from . import Event, EventType, NodeInfo, Registry, Service, in_clusters, merge_nodes

__all__ = ["RegistryCache"]

log = get_logger(__package__)


class RegistryCache:
    """Caches ``get_service`` results of a :class:`Registry` for ``ttl`` seconds, keeping only
    nodes of ``clusters`` (empty: every node)."""

    def __init__(self, registry: Registry, *, ttl: float = 5.0, clusters: Collection[str] = ()) -> None:
        self.registry = registry
        self.ttl = ttl
        self.clusters = frozenset(clusters)
        self._entries: dict[str, tuple[float, list[Service]]] = {}
        #: Extra sources of records (membership gossip) merged into every answer.
        self.extra: list[Callable[[str], list[Service]]] = []
        #: Node filter (membership: drop nodes known dead), applied to every answer.
        self.node_filter: Callable[[NodeInfo], bool] | None = None

    def invalidate(self, name: str | None = None) -> None:
        if name is None:
            self._entries.clear()
        else:
            self._entries.pop(name, None)

    def apply(self, event: Event) -> None:
        """Fold a watch event into the cache (so a new node is callable without a refresh)."""
        name = event.service.name
        entry = self._entries.get(name)
        if entry is None:
            return
        ours = in_clusters([event.service], self.clusters)
        if not ours:
            return  # another cluster's node (its id may even equal one of ours)
        fetched, services = entry
        if event.type is EventType.DELETE:
            gone = {(n.cluster, n.id) for s in ours for n in s.nodes}
            services = [
                s.with_nodes(n for n in s.nodes if (n.cluster, n.id) not in gone)
                if s.version == event.service.version
                else s
                for s in services
            ]
        else:
            services = merge_nodes([*services, *ours])
        self._entries[name] = (fetched, services)

    async def get_service(self, name: str, *, refresh: bool = False) -> list[Service]:
        """The service's records (nodes filtered); ``NotFound`` if no live node offers it.

        ``refresh`` asks the backend even if the entry is younger than ``ttl`` (a retry that has
        tried every node it knew), still serving the entry if the backend fails."""
        now = trio.current_time()
        entry = self._entries.get(name)
        services: list[Service] = []
        if entry is None or refresh or now - entry[0] >= self.ttl:
            try:
                services = in_clusters(await self.registry.get_service(name), self.clusters)
                if not services:  # only other clusters' nodes: as good as none
                    raise NotFound(f"service {name} not found", id="registry")
                self._entries[name] = (now, services)
            except NotFound:
                self._entries.pop(name, None)
            except MicroError as exc:
                if entry is None:
                    raise
                log.warning("registry lookup of %s failed (%s); serving the last known nodes", name, exc)
                services = entry[1]
        else:
            services = entry[1]
        for source in self.extra:
            services = merge_nodes([*services, *source(name)])
        keep = self.node_filter
        if keep is not None:
            services = [s.with_nodes(n for n in s.nodes if keep(n)) for s in services]
        services = [s for s in services if s.nodes]
        if not services:
            raise NotFound(f"service {name} not found", id="registry")
        return services
