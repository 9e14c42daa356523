"""Metrics of a cluster node: for Prometheus at ``/metrics``, for OpenTelemetry, for ``trimicro top``.

The numbers are counted where things happen, as plain integers on the objects that own them
(the node's :class:`~trimicro.actors.lowlevel.NodeMetrics`, per-endpoint stats when metrics are
on, and the counters of membership, store, pub/sub and selector), and read only when someone
asks. This package reads them:

- :func:`~.snapshot.cluster_snapshot` copies them into one plain-data snapshot;
- :data:`~.catalog.CATALOG` names every exported metric once (name, kind, unit, labels, help);
- :mod:`.prometheus` renders the Prometheus text format (prometheus_client, the ``metrics``
  extra; its docstring says why that and not OpenTelemetry's exporter) and :mod:`.http` serves
  it at ``/metrics`` on trio, on the address the user opts into (loopback unless told otherwise);
- :mod:`.otel` registers the same metrics as OpenTelemetry instruments on a ``MeterProvider`` the
  user configures (for OTLP);
- :mod:`.service` is the system actor every node runs so that ``trimicro top`` (:mod:`.top`)
  can read the snapshot over the cluster's links.

``start_cluster(metrics=True)`` turns per-endpoint metrics on; ``metrics="127.0.0.1:9464"``
also serves ``/metrics`` there (``cluster.metrics.address`` is where, port 0 chosen);
``meter_provider=`` adds the OpenTelemetry instruments. docs/observability.md lists the metrics.
"""

from __future__ import annotations

from .catalog import CATALOG, Metric, Snapshot
from .exports import Exports, check_options, start_exports
from .service import METRICS_NAME, METRICS_PATH, MetricsActor
from .snapshot import cluster_snapshot

__all__ = [
    "CATALOG",
    "METRICS_NAME",
    "METRICS_PATH",
    "Exports",
    "Metric",
    "MetricsActor",
    "Snapshot",
    "check_options",
    "cluster_snapshot",
    "start_exports",
]
