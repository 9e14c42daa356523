"""Per-endpoint request counts, errors by code and latency, recorded around each handler.

:class:`EndpointRecorder` is a server middleware: a node that has metrics on puts it outermost
around its actors' handlers (never around the calls it makes). Every way a message reaches a
handler goes through it: a worker draining the mailbox, a direct ask, a request from another
node, a stream handler's task, a pub/sub delivery. What it keeps per endpoint is an
:class:`EndpointStats` of plain integers, found by the actor's class and the handler function
(two identity lookups, no string built per call; a subclass's inherited handler is its own
endpoint, ``Sub.method``, as the registry names it).

What it costs per served message, with metrics on: one dictionary lookup, a few integer
additions, two ``perf_counter`` readings and one ``bisect`` into the bucket bounds (figures in
docs/performance.md). A message that no handler takes, or an unknown endpoint, is refused before
any handler runs and so is not counted here (the caller's 404 and the node's dead letters are).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from trimicro.mailbox.errors import MicroError

__all__ = ["LATENCY_BUCKETS", "MAX_ENDPOINTS", "EndpointRecorder", "EndpointStats"]

#: Upper bounds (seconds) of the latency buckets: a local handler takes microseconds, a remote
#: request on loopback a few hundred, a slow dependency seconds; 10 s is the default ask timeout.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Endpoints one node keeps apart at most; later ones share the entry ``other`` (label sets
#: must stay bounded, and handler classes can be made at run time).
MAX_ENDPOINTS = 1000

#: The error code counted for an exception that is not a MicroError (the caller gets a 500).
UNTYPED = 500


class EndpointStats:
    """One endpoint's numbers. ``buckets[i]`` counts the calls that took at most ``bounds[i]``
    seconds and more than ``bounds[i - 1]`` (not cumulative; the last counts the rest)."""

    __slots__ = ("attributes", "backlog_max", "buckets", "endpoint", "errors", "requests", "service", "sum")

    def __init__(self, service: str, endpoint: str, buckets: int) -> None:
        self.service = service
        self.endpoint = endpoint
        self.requests = 0
        #: Go Micro error code -> count (500 for an exception that is not a MicroError).
        self.errors: dict[int, int] = {}
        self.buckets = [0] * buckets
        #: Seconds spent in the handler, in all.
        self.sum = 0.0
        #: The most messages seen waiting in the actor's mailbox when one of this endpoint's
        #: messages started (what queued behind it: a backlog's high-water mark).
        self.backlog_max = 0
        #: Its labels (OpenTelemetry attributes), built once (see ``EndpointRecorder.observe``).
        self.attributes = {"service": service, "endpoint": endpoint}


def _endpoint_name(cls: type, service: str, handler: Any) -> str:
    """``Service.method`` as the class's handler table names ``handler`` (the attribute's
    name, which a handler's ``__name__`` need not be); its ``__name__`` if the table has none."""
    table = getattr(cls, "_trimicro_handlers", None)
    for name, entry in getattr(table, "by_endpoint", {}).items():
        if entry[0] is handler and name.startswith(f"{service}."):
            return str(name)
    for name, fn in getattr(table, "by_stream", {}).items():
        if fn is handler and name.startswith(f"{service}."):
            return str(name)
    return f"{service}.{getattr(handler, '__name__', 'receive')}"


class EndpointRecorder:
    """The server middleware that fills :class:`EndpointStats` (see the module docstring).

    ``observe``, when set, is also called with each call's stats and duration in seconds: the
    cluster layer sets it to record into an OpenTelemetry histogram when the user gave a
    ``MeterProvider`` (OpenTelemetry has no asynchronous histogram to read ours with).
    """

    def __init__(
        self,
        bounds: Sequence[float] = LATENCY_BUCKETS,
        *,
        max_endpoints: int = MAX_ENDPOINTS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be increasing and not empty")
        self.bounds = tuple(float(b) for b in bounds)
        self.max_endpoints = max_endpoints
        self.clock = clock
        #: Actor class -> handler function -> its stats (no name built per call).
        self.by_class: dict[type, dict[Any, EndpointStats]] = {}
        self._entries = 0
        #: (service, endpoint) -> stats, each entry once, in order of first call.
        self.by_name: dict[tuple[str, str], EndpointStats] = {}
        self.observe: Callable[[EndpointStats, float], None] | None = None

    #: It awaits nothing but the rest of the chain: inline handlers stay inline (this is what
    #: ``middleware.passes_through`` sets; written out, because the node's ports import this
    #: package, which therefore imports nothing that leads back to a cell or a context).
    __trimicro_passes_through__ = True

    def stats(self) -> list[EndpointStats]:
        """Every endpoint served so far (a copy of the list; the stats are live)."""
        return list(self.by_name.values())

    def _stats_for(self, call: Any) -> EndpointStats:
        cls = type(call.actor)
        service = getattr(cls, "service_name", None) or cls.__name__
        key = (service, _endpoint_name(cls, service, call.handler))
        if len(self.by_name) >= self.max_endpoints and key not in self.by_name:
            key = ("other", "other")
        stats = self.by_name.get(key)
        if stats is None:
            stats = self.by_name[key] = EndpointStats(key[0], key[1], len(self.bounds) + 1)
        if self._entries < self.max_endpoints:
            self.by_class.setdefault(cls, {})[call.handler] = stats
            self._entries += 1
        return stats

    async def __call__(self, call: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        """Serve ``call`` (a :class:`~trimicro.actors.middleware.Call`) and count it."""
        handlers = self.by_class.get(call.actor.__class__)
        stats = None if handlers is None else handlers.get(call.handler)
        if stats is None:
            stats = self._stats_for(call)
        stats.requests += 1
        cell = getattr(call.actor, "_trimicro_cell", None)
        if cell is not None:
            waiting = len(cell.mailbox)
            if waiting > stats.backlog_max:
                stats.backlog_max = waiting
        clock = self.clock
        started = clock()
        try:
            return await call_next(call)
        except MicroError as exc:
            errors = stats.errors
            errors[exc.code] = errors.get(exc.code, 0) + 1
            raise
        except Exception:
            errors = stats.errors
            errors[UNTYPED] = errors.get(UNTYPED, 0) + 1
            raise
        finally:
            elapsed = clock() - started
            stats.buckets[bisect_left(self.bounds, elapsed)] += 1
            stats.sum += elapsed
            observe = self.observe
            if observe is not None:
                observe(stats, elapsed)
