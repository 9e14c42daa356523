"""The gateway's health routes: ``/health/live`` and ``/health/ready``, also as Kubernetes'
``/livez`` and ``/readyz``.

Live is the HTTP server and the trio loop answering: 200 always. Ready is the gateway's node
ready by its own checks (``node``, ``registry``, ``membership``: :mod:`trimicro.cluster.health`,
the same report ``trimicro health`` prints) plus the gateway's: its view of the services loaded
(the registry's first answer). 200 with the checks when all pass, else 503 with the same body,
``status`` naming what is wrong (``starting`` until the view has loaded, ``not ready`` after).

Probes come from outside (a load balancer, anyone who can reach the port), and a report runs
every check: one is computed at a time and reused for :data:`MAX_AGE` seconds, so a flood of
probes costs the node one report a second.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from trimicro.actors.lowlevel import Check, Health, Report

from .state import GatewayState

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["MAX_AGE", "Readiness"]

#: Seconds a readiness report is reused for.
MAX_AGE = 1.0


class Readiness:
    """The node's report, computed at most once per :data:`MAX_AGE`, with the gateway's check."""

    def __init__(self, cluster: Cluster, state: GatewayState) -> None:
        self.health: Health = cluster.node.health
        self.state = state
        self._lock = trio.Lock()
        self._last: Report | None = None
        self._at = -math.inf

    async def report(self) -> Report:
        async with self._lock:
            if self._last is None or trio.current_time() - self._at > MAX_AGE:
                self._last = await self.health.report()
                self._at = trio.current_time()
            node = self._last
        view = self._view()
        checks = (*node.checks, view)
        return Report(node.node, True, bool(node.ready) and view.ok, checks)

    def _view(self) -> Check:
        if self.state.ready:
            return Check("gateway", True, f"cluster view loaded ({len(self.state.services)} services)")
        return Check("gateway", False, "waiting for the registry's first answer")

    async def body(self) -> tuple[dict[str, Any], int]:
        """The JSON body of ``/health/ready`` and its status code."""
        report = await self.report()
        doc = report.to_dict()
        doc["services"] = len(self.state.services)
        if report.ready:
            doc["status"] = "ready"
            return doc, 200
        doc["status"] = "starting" if not self.state.ready else "not ready"
        return doc, 503
