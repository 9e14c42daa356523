"""The system actor every cluster node runs so that others can read its metrics over the wire.

``trimicro top`` asks it, on each node, for a snapshot (``Metrics.snapshot``) through the
cluster's own authenticated links: that works on every node, whether or not it serves
``/metrics`` over HTTP, across hosts, with nothing more to open or to know than the node's id.
Only accounts with scope ``admin`` may ask (built-in rules in :mod:`trimicro.cluster.auth.guard`
that no operator rule overrides): a snapshot names the node's actors' paths and its peers,
which the registry does not show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trimicro.actors import Actor

from .catalog import Snapshot

__all__ = ["METRICS_NAME", "METRICS_PATH", "MetricsActor"]

METRICS_NAME = "trimicro-metrics"
METRICS_PATH = f"/user/{METRICS_NAME}"


class MetricsActor(Actor):
    """Answers ``Metrics.snapshot`` with the node's snapshot (:func:`~.snapshot.cluster_snapshot`)."""

    service_name = "Metrics"

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self.source = source

    async def snapshot(self, body: Any) -> dict[str, Any]:
        return self.source()
