"""What the gateway knows between requests: the services it last read, whether it is ready,
per-endpoint counts and latencies, recent errors and dead letters, for the OpenAPI document,
``/health/ready`` and the dashboard.

Every collection is bounded (latencies per endpoint, errors, dead letters), so a busy or
failing cluster costs the gateway a fixed amount of memory.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trimicro.actors import MicroError
from trimicro.mailbox.logs import get_logger

from ..registry import Endpoint, Service
from .options import GatewayOptions

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["EndpointStats", "GatewayState"]

log = get_logger(__package__)

#: Latencies kept per endpoint for its percentiles; requests counted over RATE_WINDOW seconds.
SAMPLES = 512
RATE_WINDOW = 10.0


@attrs.define
class EndpointStats:
    """One endpoint's calls through this gateway."""

    calls: int = 0
    errors: int = 0
    samples: deque[tuple[float, float]] = attrs.field(factory=lambda: deque(maxlen=SAMPLES))

    def record(self, now: float, latency: float, failed: bool) -> None:
        self.calls += 1
        self.errors += failed
        self.samples.append((now, latency))

    def summary(self, now: float) -> dict[str, Any]:
        lat = sorted(s[1] for s in self.samples)
        recent = sum(1 for t, _ in self.samples if now - t <= RATE_WINDOW)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

        return {
            "calls": self.calls,
            "errors": self.errors,
            "rate": round(recent / RATE_WINDOW, 2),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        }


class GatewayState:
    """The gateway's shared view; :meth:`follow` keeps it current while the gateway runs."""

    def __init__(self, cluster: Cluster, options: GatewayOptions) -> None:
        self.cluster = cluster
        self.options = options
        self.services: list[Service] = []
        self.ready = False
        self.stats: dict[str, EndpointStats] = {}
        self.errors: deque[dict[str, Any]] = deque(maxlen=options.recent)
        self.dead_letters: deque[dict[str, Any]] = deque(maxlen=options.recent)
        self._changed = trio.Event()
        #: Full endpoint schemas the services' nodes gave, by (name, version); see :meth:`describe`.
        self.described: dict[tuple[str, str], dict[str, Any]] = {}
        self._described_for: dict[tuple[str, str], tuple[str, ...]] = {}
        self._names: frozenset[str] = frozenset()
        self._endpoints: dict[tuple[str, str], Endpoint] = {}
        self._methods: dict[tuple[str, str], dict[str, Endpoint]] = {}

    # ---- what requests record --------------------------------------------------------------------

    def record(self, service: str, endpoint: str, started: float, error: MicroError | None) -> None:
        now = trio.current_time()
        key = f"{service} {endpoint}"
        stats = self.stats.get(key)
        if stats is None:
            if len(self.stats) >= 4096:  # names come from clients: bounded like everything else
                return
            stats = self.stats[key] = EndpointStats()
        stats.record(now, now - started, error is not None)
        if error is not None:
            self.errors.append(
                {"at": time.time(), "service": service, "endpoint": endpoint, **error.to_fields()}
            )
            self.changed()

    def changed(self) -> None:
        """Wake whoever waits in :meth:`wait_changed` (the dashboard's event stream)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    # ---- the registry ----------------------------------------------------------------------------

    async def refresh(self) -> list[Service]:
        """Read every service from the registry now; the gateway is ready after the first answer."""
        found = [s for s in await self.cluster.services() if not s.name.startswith("trimicro.")]
        found.sort(key=lambda s: (s.name, s.version))
        if _digest(found) != _digest(self.services):
            self.services = found
            self.changed()
        self.services = found
        self._index(found)
        if not self.ready:
            self.ready = True
            self.changed()
        return found

    async def describe(self, timeout: float = 2.0) -> None:
        """Ask one node of each service whose record changed for its full endpoint schemas
        (:mod:`trimicro.cluster.introspect`); a node that does not answer leaves the type names
        of the registry in the document (remembered until the record changes, so a silent node
        costs one timeout per change, not one per read)."""
        current: dict[tuple[str, str], tuple[str, ...]] = {}
        for s in self.services:
            key = (s.name, s.version)
            endpoints = tuple(e.name for e in s.endpoints)
            current[key] = endpoints
            if self._described_for.get(key) == endpoints or not s.nodes:
                continue
            self._described_for[key] = endpoints
            try:
                with trio.fail_after(timeout):
                    found = await self.cluster.describe_node(s.nodes[0], s.name, timeout=timeout)
            except (MicroError, trio.TooSlowError) as exc:
                log.info("service %s did not describe its endpoints: %s", s.name, exc)
                continue
            if isinstance(found, dict):
                self.described[key] = found
                self.changed()
        for gone in set(self._described_for) - set(current):  # bounded by the registry's services
            self._described_for.pop(gone, None)
            self.described.pop(gone, None)

    def endpoint(self, service: str, name: str) -> Endpoint | None:
        """The endpoint ``name`` of ``service`` (``Greeter.hello``, or ``hello`` alone when one
        endpoint of the service has that method), from the last registry answer: one dict
        lookup per request (the index is rebuilt when the registry's answer changes)."""
        found = self._endpoints.get((service, name))
        if found is None and "." not in name:
            by_method = self._methods.get((service, name.lower()))
            if by_method is not None and len(by_method) == 1:
                found = next(iter(by_method.values()))
        return found

    def knows(self, service: str) -> bool:
        return service in self._names

    def _index(self, services: list[Service]) -> None:
        self._names = frozenset(s.name for s in services)
        self._endpoints = {}
        self._methods = {}
        for s in services:
            for e in s.endpoints:
                self._endpoints.setdefault((s.name, e.name), e)
                method = e.name.split(".", 1)[-1].lower()
                self._methods.setdefault((s.name, method), {}).setdefault(e.name, e)

    async def follow(self) -> None:
        """Re-read the registry every ``refresh`` seconds, pass on membership changes, and keep
        the cluster's dead letters (runs for the gateway's lifetime)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._poll)
            if self.cluster.membership is not None:
                nursery.start_soon(self._membership)
            nursery.start_soon(self._dead_letters)

    async def _poll(self) -> None:
        while True:
            with trio.move_on_after(max(self.options.refresh, 1.0) * 5):
                try:
                    await self.refresh()
                    await self.describe()
                except MicroError as exc:
                    log.warning("reading the registry failed: %s", exc)
            await trio.sleep(self.options.refresh)

    async def _membership(self) -> None:
        while True:
            await self.cluster.membership.wait_changed()
            self.changed()

    async def _dead_letters(self) -> None:
        try:
            async with self.cluster.pubsub.messages("$dead.>", buffer=self.options.queue) as messages:
                async for msg in messages:
                    self.dead_letters.append({"at": time.time(), "topic": msg.topic, "body": _text(msg.body)})
                    self.changed()
        except (MicroError, AttributeError) as exc:  # a broker without dead letters
            log.info("not following dead letters: %s", exc)

    # ---- the dashboard's snapshot ----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, as one JSON-ready document."""
        from .openapi import endpoint_schemas

        now = trio.current_time()
        cluster = self.cluster
        members = cluster.membership.view() if cluster.membership is not None else []
        topics: dict[str, list[dict[str, Any]]] = {}
        pubsub = cluster.pubsub
        # This node's own subscriptions (the HTTP clients' SSE subscriptions) first, then the
        # interest other nodes announced; a broker that keeps neither (NATS) shows none.
        local = pubsub.local_interest() if hasattr(pubsub, "local_interest") else []
        interest = [(cluster.id, local), *sorted(getattr(pubsub, "remote_interest", {}).items())]
        for node_id, entries in interest:
            for pattern, queue, count in entries:
                topics.setdefault(pattern, []).append({"node": node_id, "queue": queue, "subscribers": count})
        return {
            "gateway": {"node": cluster.id, "ready": self.ready},
            "services": [
                {
                    "name": s.name,
                    "version": s.version,
                    "nodes": [{"id": n.id, "address": n.address} for n in s.nodes],
                    "endpoints": [
                        {
                            "name": e.name,
                            "stream": e.stream,
                            "request": endpoint_schemas(
                                e, self.described.get((s.name, s.version), {}).get(e.name)
                            )[0],
                        }
                        for e in s.endpoints
                    ],
                }
                for s in self.services
            ],
            "members": members,
            "topics": [{"pattern": p, "interest": i} for p, i in sorted(topics.items())],
            "stats": {k: v.summary(now) for k, v in sorted(self.stats.items())},
            "errors": list(self.errors)[::-1],
            "dead_letters": list(self.dead_letters)[::-1],
        }


def _digest(services: list[Service]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return [
        (s.name, s.version, tuple(sorted(n.id for n in s.nodes)), tuple(e.name for e in s.endpoints))
        for s in services
    ]


def _text(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | None | dict | list) else repr(value)
