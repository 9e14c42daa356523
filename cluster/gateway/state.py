"""What the gateway knows between requests: the services it last read, whether it is ready,
per-endpoint counts and latencies, recent errors and dead letters, for the OpenAPI document,
``/health/ready`` and the dashboard.

Every collection is bounded (latencies per endpoint, errors, dead letters), so a busy or
failing cluster costs the gateway a fixed amount of memory.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trimicro.actors import MicroError

from ..registry import Endpoint, Service
from .options import GatewayOptions

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["EndpointStats", "GatewayState"]

log = logging.getLogger("trimicro.gateway")

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
        if not self.ready:
            self.ready = True
            self.changed()
        return found

    def endpoint(self, service: str, name: str) -> Endpoint | None:
        """The endpoint ``name`` of ``service`` (``Greeter.hello``, or ``hello`` alone when one
        endpoint of the service has that method), from the last registry answer."""
        found = [e for s in self.services if s.name == service for e in s.endpoints]
        for e in found:
            if e.name == name:
                return e
        if "." not in name:
            matches = {e.name: e for e in found if e.name.split(".", 1)[-1].lower() == name.lower()}
            if len(matches) == 1:
                return next(iter(matches.values()))
        return None

    def knows(self, service: str) -> bool:
        return any(s.name == service for s in self.services)

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
        for node_id, entries in sorted(getattr(cluster.pubsub, "remote_interest", {}).items()):
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
                        {"name": e.name, "stream": e.stream, "request": endpoint_schemas(e)[0]}
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
