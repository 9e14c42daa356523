"""The actor layer's low-level API: what a layer built on it (the cluster) may use beyond
:mod:`trimicro.actors`, in the manner of :mod:`trio.lowlevel`.

:mod:`trimicro.actors` is the surface for applications. Plumbing above the runtime (pub/sub
delivering straight into mailboxes, the auth guard hooked into every inbound request, the
cluster's calls, pub/sub's middleware) needs more: cells and their offer results, the
:data:`Mail` a mailbox holds, the links and peers of remoting, the ``authorization`` metadata,
the middleware kinds and composition, the node's metrics and their snapshot, a node's
health checks and the health request, the logging setup. Everything here is a re-export:
the modules that define these names (``cell``, ``mail``, ``remote``, ``actor``,
``middleware``, ``metrics``) are private to the cluster and may be split or moved; this
module is the stable place to import them from, and import-linter forbids
``trimicro.cluster`` any other way in.
"""

from __future__ import annotations

from .actor import HandlerTable, handler_table
from .cell import DEAD, FULL, OK, STOPPING, Cell, current_cell
from .health import Check, Health, NotReady, Report
from .logs import configure as configure_logging
from .logs import printable, register_node
from .logs import unconfigure as unconfigure_logging
from .mail import Mail
from .metadata import MAX_PROPAGATED, MAX_PROPAGATED_BYTES, header_rule
from .metrics import EndpointRecorder, EndpointStats, NodeMetrics, node_snapshot
from .middleware import Kind, Side, compose
from .remote import (
    AUTHORIZATION,
    OUT_HIGH_WATER,
    Guard,
    Identity,
    Link,
    LinkPort,
    Peer,
    Remoting,
    Unreachable,
    forward_auth,
)
from .remote.health import ask_health

__all__ = [
    "AUTHORIZATION",
    "DEAD",
    "FULL",
    "MAX_PROPAGATED",
    "MAX_PROPAGATED_BYTES",
    "OK",
    "OUT_HIGH_WATER",
    "STOPPING",
    "Cell",
    "Check",
    "EndpointRecorder",
    "EndpointStats",
    "Guard",
    "HandlerTable",
    "Health",
    "Identity",
    "Kind",
    "Link",
    "LinkPort",
    "Mail",
    "NodeMetrics",
    "NotReady",
    "Peer",
    "Remoting",
    "Report",
    "Side",
    "Unreachable",
    "ask_health",
    "compose",
    "configure_logging",
    "current_cell",
    "forward_auth",
    "handler_table",
    "header_rule",
    "node_snapshot",
    "printable",
    "register_node",
    "unconfigure_logging",
]
