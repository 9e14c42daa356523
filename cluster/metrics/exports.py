"""Starting what a cluster node exports: the snapshot actor, ``/metrics``, the OpenTelemetry
instruments (``start_cluster(metrics=..., meter_provider=...)``)."""

from __future__ import annotations

import functools
from typing import Any

import attrs
import trio

from .otel import Instruments
from .service import METRICS_NAME, MetricsActor
from .snapshot import Host, cluster_snapshot

__all__ = ["Exports", "check_options", "start_exports"]

_EXTRA = "serving /metrics needs the metrics extra: pip install 'trimicro[metrics]'"


@attrs.define
class Exports:
    """What a node exports. ``address`` is where ``/metrics`` is served (``host:port``), if it is."""

    address: str | None = None
    instruments: Instruments | None = None

    def close(self) -> None:
        if self.instruments is not None:
            self.instruments.close()


def check_options(metrics: bool | str) -> None:
    """Refuse a bad ``/metrics`` address, or a missing extra, before the node starts."""
    if isinstance(metrics, str) and metrics:
        from .http import parse_address

        parse_address(metrics)
        try:
            import h11  # noqa: F401
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ImportError(_EXTRA) from None


async def start_exports(
    host: Host, nursery: trio.Nursery, *, metrics: bool | str, meter_provider: Any = None
) -> Exports:
    """Spawn the node's :class:`~.service.MetricsActor` (every node has one, for ``trimicro
    top``); serve ``/metrics`` when ``metrics`` is an address; register the instruments on
    ``meter_provider`` when one is given."""
    source = functools.partial(cluster_snapshot, host)
    await host.node.spawn(MetricsActor, source, name=METRICS_NAME)
    exports = Exports()
    if isinstance(metrics, str) and metrics:
        from .http import serve_metrics
        from .prometheus import Exposition

        exports.address = await nursery.start(serve_metrics, metrics, Exposition(source).render)
    if meter_provider is not None:
        exports.instruments = Instruments(meter_provider, source, host.node.metrics.endpoints)
    return exports
