"""Cluster layer: services by name, discovery, membership, load balancing, the CLI.

Public surface: everything in ``__all__``; the submodules hold the details (``registry``,
``mdns``, ``cache``, ``swim``, ``membership``, ``selector``, ``service``, ``cli``).
"""

from .cluster import Cluster, call, start_cluster
from .mdns import MdnsRegistry
from .registry import Endpoint, Event, EventType, MemoryRegistry, NodeInfo, Registry, Service, StaticRegistry
from .selector import (
    CircuitBreaker,
    ConsistentHash,
    LeastOutstanding,
    NoNodes,
    RandomStrategy,
    RetryPolicy,
    RoundRobin,
    Selector,
)
from .service import idempotent

__all__ = [
    "CircuitBreaker",
    "Cluster",
    "ConsistentHash",
    "Endpoint",
    "Event",
    "EventType",
    "LeastOutstanding",
    "MdnsRegistry",
    "MemoryRegistry",
    "NoNodes",
    "NodeInfo",
    "RandomStrategy",
    "Registry",
    "RetryPolicy",
    "RoundRobin",
    "Selector",
    "Service",
    "StaticRegistry",
    "call",
    "idempotent",
    "start_cluster",
]
