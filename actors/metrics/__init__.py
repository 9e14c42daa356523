"""Metrics a node keeps about itself: plain integers bumped where things happen, read on demand.

Every :class:`~trimicro.actors.Node` owns one :class:`NodeMetrics` (``node.metrics``); nothing
is global, so two nodes in one process count apart. The design has two tiers, chosen so that a
node that nobody watches pays nothing measurable:

* **Always on, and free**: counts that change where the runtime already does something rare or
  per-frame (an actor failing or restarting, a dead letter, a link opening or closing, bytes a
  link reads or queues): one integer addition beside work that costs thousands of instructions.
  The hot local paths (``tell``, ``ask``, a worker draining a mailbox) are not touched at all.
* **On when asked** (``start_node(metrics=True)``, which ``start_cluster(metrics=...)`` and
  ``trimicro run --metrics`` set): per endpoint, the requests served, the errors by Go Micro
  code and a latency histogram, and the deepest backlog seen behind a served message. This is
  :class:`EndpointRecorder`, which the node wraps around each actor class's handler table
  only then (outside the node's and the class's middleware); a handler without ``await``
  still runs inline, and the calls a node makes are not touched.

Nothing here formats or exports anything: :func:`node_snapshot` copies the numbers into plain
data (dicts, lists, ints; safe to send over the wire, or to read from another thread, as an
OpenTelemetry metric reader does), and the cluster layer (:mod:`trimicro.cluster.metrics`)
turns that into Prometheus text, OpenTelemetry instruments and ``trimicro top``.
"""

from __future__ import annotations

from .counters import MAX_LABELS, NodeMetrics, bump, node_snapshot
from .endpoints import LATENCY_BUCKETS, MAX_ENDPOINTS, EndpointRecorder, EndpointStats

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_ENDPOINTS",
    "MAX_LABELS",
    "EndpointRecorder",
    "EndpointStats",
    "NodeMetrics",
    "bump",
    "node_snapshot",
]
