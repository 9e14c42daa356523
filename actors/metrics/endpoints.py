"""Per-endpoint request counts, errors by code and latency, recorded around each handler.

A node that has metrics on has its :class:`EndpointRecorder` wrap each actor class's handler
table once (:meth:`EndpointRecorder.wrap`, from ``Node.handlers_for``), outside the node's and
the class's middleware: every way a message reaches a handler looks it up in that table (a
worker draining the mailbox, a direct ask, a request from another node, a stream handler's
task, a pub/sub delivery), and the calls a node makes are never touched. Each wrapper holds its
endpoint's :class:`EndpointStats` of plain integers, so nothing is looked up per call.

Why a wrapper of its own and not a middleware: a middleware gets a :class:`~trimicro.actors.middleware.Call`
built per message (its fields, a copy of the headers, the kind of the message) before it runs;
the recorder needs none of that, and as a middleware it cost several times what it does as
a wrapper (docs/performance.md, "Metrics", has the A/B figures). What it costs per served
message: one coroutine frame, a few integer additions, two ``perf_counter`` readings and one
``bisect`` into the bucket bounds. A message that no handler takes, or an unknown endpoint, is
refused before any handler runs and so is not counted here (the caller's 404 and the node's
dead letters are).
"""

from __future__ import annotations

import functools
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
        #: Its labels, built once (``EndpointRecorder.observe`` gets them with the stats).
        self.attributes = {"service": service, "endpoint": endpoint}


class EndpointRecorder:
    """Counts and times every handler of the tables it wraps (see the module docstring).

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
        #: (service, endpoint) -> stats, in the order the endpoints were first wrapped.
        self.by_name: dict[tuple[str, str], EndpointStats] = {}
        self.observe: Callable[[EndpointStats, float], None] | None = None

    def stats(self) -> list[EndpointStats]:
        """Every endpoint of the tables wrapped so far (a copy of the list; the stats are live)."""
        return list(self.by_name.values())

    def _stats(self, service: str, endpoint: str) -> EndpointStats:
        key = (service, endpoint)
        if len(self.by_name) >= self.max_endpoints and key not in self.by_name:
            key = ("other", "other")
        stats = self.by_name.get(key)
        if stats is None:
            stats = self.by_name[key] = EndpointStats(key[0], key[1], len(self.bounds) + 1)
        return stats

    def wrap(self, table: Any) -> Any:
        """A copy of ``table`` (a :class:`~trimicro.actors.actor.HandlerTable`) whose handlers
        count and time themselves, each under its endpoint's name as the registry shows it
        (``Service.method``: the table's name for it, which the function's own need not be).
        Inline handlers stay inline: the wrapper awaits nothing but the handler."""
        service = str(table.service)
        names: dict[Any, str] = {}
        prefix = f"{service}."
        for name, (fn, _convert) in table.by_endpoint.items():
            if name.startswith(prefix):
                names.setdefault(fn, name)
        for name, fn in table.by_stream.items():
            if name.startswith(prefix):
                names.setdefault(fn, name)

        def wrap(fn: Any, stream: bool) -> Any:
            name = names.get(fn) or f"{service}.{getattr(fn, '__name__', 'receive')}"
            return self._timed(fn, self._stats(service, name))

        return table.wrapped(wrap, True)

    def _timed(self, fn: Callable[[Any, Any], Awaitable[Any]], stats: EndpointStats) -> Any:
        bounds, clock, buckets = self.bounds, self.clock, stats.buckets

        @functools.wraps(fn)
        async def handler(instance: Any, message: Any) -> Any:
            stats.requests += 1
            waiting = len(instance._trimicro_cell.mailbox)
            if waiting > stats.backlog_max:
                stats.backlog_max = waiting
            started = clock()
            try:
                return await fn(instance, message)
            except MicroError as exc:
                # A code a peer sent can be any int: only HTTP-like codes get a label of their
                # own (a bounded set), the rest count as untyped.
                code = exc.code if 100 <= exc.code <= 599 else UNTYPED
                errors = stats.errors
                errors[code] = errors.get(code, 0) + 1
                raise
            except Exception:
                errors = stats.errors
                errors[UNTYPED] = errors.get(UNTYPED, 0) + 1
                raise
            finally:
                elapsed = clock() - started
                buckets[bisect_left(bounds, elapsed)] += 1
                stats.sum += elapsed
                if self.observe is not None:
                    self.observe(stats, elapsed)

        return handler
