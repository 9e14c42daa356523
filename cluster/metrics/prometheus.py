"""The Prometheus text exposition of a node's metrics, with prometheus_client's data model and
encoders (the ``metrics`` extra).

Why prometheus_client, and not OpenTelemetry's Prometheus exporter: the exporter needs the
OpenTelemetry SDK in every node, registers itself in prometheus_client's process-wide
``REGISTRY`` (two nodes in one process, as tests and embedded uses run them, would collide),
serves HTTP from a thread of its own instead of the node's trio loop, and is still a beta
package whose name mangling has changed between releases. prometheus_client alone is a small,
stable, pure-Python library: here each node has a private ``CollectorRegistry`` holding one
custom collector that reads a fresh snapshot per scrape (so nothing is kept twice), and the
library's encoders write the classic text format, or OpenMetrics when the scraper asks for it.
Users of OpenTelemetry get the same metrics through :mod:`.otel` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from .catalog import CATALOG, Snapshot

__all__ = ["Exposition"]

#: Units Prometheus spells out in a family's name (the others are in the help only).
_UNITS = {"s": "seconds", "By": "bytes"}


def _le(bound: float) -> str:
    return repr(float(bound))


class _Collector:
    """A prometheus_client collector over a snapshot function (a fresh snapshot per scrape)."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        snap = self.source()
        bounds = [*(_le(b) for b in snap.get("bounds", ())), "+Inf"]
        for metric in CATALOG:
            unit = _UNITS.get(metric.unit, "")
            labels = list(metric.labels)
            family: CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily
            if metric.kind == "histogram":
                family = HistogramMetricFamily(metric.prom, metric.help, labels=labels, unit=unit)
                for values, (cumulative, total) in metric.read(snap):
                    buckets = list(zip(bounds, cumulative, strict=True))
                    family.add_metric([values[k] for k in labels], buckets, total)
            else:
                kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                family = kind(metric.prom, metric.help, labels=labels, unit=unit)
                for values, value in metric.read(snap):
                    family.add_metric([values[k] for k in labels], value)
            yield family


class Exposition:
    """A node's ``/metrics`` document: ``render(accept)`` gives ``(body, content type)``."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(source))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The text format (``text/plain; version=0.0.4``), or OpenMetrics if ``accept`` asks."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
