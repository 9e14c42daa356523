"""The node's metrics as OpenTelemetry instruments, on a ``MeterProvider`` the user configures
(``start_cluster(meter_provider=...)``): for OTLP, or any reader and exporter of the SDK.

Counters and gauges are asynchronous instruments (observable counters and gauges): they cost
nothing between collections, and at a collection their callbacks read one snapshot of the node
(:func:`~.snapshot.cluster_snapshot`, taken once per collection and shared by the callbacks).
A periodic reader collects on a thread of its own; the snapshot is then taken on the node's trio
thread (``trio.from_thread``), never by reading the runtime's objects from another thread. The
latency histogram is the exception: OpenTelemetry has no asynchronous histogram, so the
endpoint recorder also records each call's duration into a synchronous one (only when a meter
provider was given). Names, units and attributes are :data:`~.catalog.CATALOG`'s; the endpoint
metrics' attributes are OpenTelemetry's RPC ones (``rpc.system``, ``rpc.service``,
``rpc.method``, ``error.type``, ``rpc.trimicro.error_code``: :func:`~.catalog.rpc_attributes`).

Only the API (opentelemetry-api) is used here; the SDK is the user's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from trimicro.actors.lowlevel import EndpointRecorder, EndpointStats

from .catalog import CATALOG, Metric, Snapshot

__all__ = ["Instruments"]

#: A snapshot serves every callback of one collection: callbacks that run within this many
#: seconds of the first share it.
SHARED_FOR = 0.5


class Instruments:
    """The instruments registered on one meter for one node; :meth:`close` silences them (a
    MeterProvider cannot unregister instruments: they report nothing once the node is gone)."""

    def __init__(
        self,
        meter_provider: Any,
        source: Callable[[], Snapshot],
        recorder: EndpointRecorder | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self.source = source
        self.clock = clock
        self.closed = False
        self._token = trio.lowlevel.current_trio_token()
        self._taken = -float("inf")
        self._snapshot: Snapshot | None = None
        self.meter = meter_provider.get_meter("trimicro")
        for metric in CATALOG:
            if metric.kind == "histogram":
                if recorder is not None:
                    self._histogram(metric, recorder)
            elif metric.kind == "counter":
                self.meter.create_observable_counter(
                    metric.name, callbacks=[self._callback(metric)], unit=metric.unit, description=metric.help
                )
            else:
                self.meter.create_observable_gauge(
                    metric.name, callbacks=[self._callback(metric)], unit=metric.unit, description=metric.help
                )

    def _histogram(self, metric: Metric, recorder: EndpointRecorder) -> None:
        histogram = self.meter.create_histogram(
            metric.name,
            unit=metric.unit,
            description=metric.help,
            explicit_bucket_boundaries_advisory=list(recorder.bounds),
        )
        record = histogram.record
        to_attributes = metric.attributes or dict
        #: Each endpoint's attributes, made at its first call (endpoints are bounded).
        known: dict[EndpointStats, dict[str, Any]] = {}

        def observe(stats: EndpointStats, seconds: float) -> None:
            attributes = known.get(stats)
            if attributes is None:
                attributes = known[stats] = to_attributes(stats.attributes)
            record(seconds, attributes)

        recorder.observe = observe

    def _callback(self, metric: Metric) -> Callable[[Any], Iterable[Any]]:
        def callback(options: Any) -> Iterable[Any]:
            snap = self.snapshot()
            if snap is None:
                return []
            to_attributes = metric.attributes
            if to_attributes is None:
                return [self._observation(value, labels) for labels, value in metric.read(snap)]
            return [self._observation(value, to_attributes(labels)) for labels, value in metric.read(snap)]

        return callback

    def snapshot(self) -> Snapshot | None:
        """The collection's shared snapshot, taken on the node's trio thread; ``None`` once the
        node is gone."""
        if self.closed:
            return None
        now = self.clock()
        if self._snapshot is None or now - self._taken > SHARED_FOR:
            try:
                trio.lowlevel.current_task()
            except RuntimeError:  # a reader's thread
                try:
                    self._snapshot = trio.from_thread.run_sync(self.source, trio_token=self._token)
                except trio.RunFinishedError:
                    self.closed = True
                    return None
            else:
                self._snapshot = self.source()
            self._taken = now
        return self._snapshot

    def close(self) -> None:
        self.closed = True
        self._snapshot = None
