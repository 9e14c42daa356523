"""Cluster layer: services by name, discovery, membership, load balancing, the CLI.

Public surface: everything in ``__all__``; the submodules hold the details (``registry``,
``mdns``, ``cache``, ``swim``, ``membership``, ``selector``, ``service``, ``store``, ``config``,
``auth``, ``cli``).
"""

from .auth import AUTH_SERVICE, AuthGuard
from .auth_service import AuthService
from .cluster import Cluster, call, start_cluster
from .config import (
    Change,
    Config,
    ConfigActor,
    ConfigChanged,
    GetConfig,
    WatchConfig,
    default_sources,
    generate_secret_key,
    open_config,
    seal,
)
from .config_sources import (
    Defaults,
    EnvSource,
    FileSource,
    FlagSource,
    Source,
    StoreSource,
    write_store_config,
)
from .mdns import MdnsRegistry
from .registry import Endpoint, Event, EventType, MemoryRegistry, NodeInfo, Registry, Service, StaticRegistry
from .rules import Access, Resource, Rule, Rules
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
from .tokens import Account, issue_token, verify_token

__all__ = [
    "AUTH_SERVICE",
    "Access",
    "Account",
    "AuthGuard",
    "AuthService",
    "Change",
    "CircuitBreaker",
    "Cluster",
    "Config",
    "ConfigActor",
    "ConfigChanged",
    "ConsistentHash",
    "Defaults",
    "Endpoint",
    "EnvSource",
    "Event",
    "EventType",
    "FileSource",
    "FlagSource",
    "GetConfig",
    "LeastOutstanding",
    "MdnsRegistry",
    "MemoryRegistry",
    "NoNodes",
    "NodeInfo",
    "RandomStrategy",
    "Registry",
    "Resource",
    "RetryPolicy",
    "RoundRobin",
    "Rule",
    "Rules",
    "Selector",
    "Service",
    "Source",
    "StaticRegistry",
    "StoreSource",
    "WatchConfig",
    "call",
    "default_sources",
    "generate_secret_key",
    "idempotent",
    "issue_token",
    "open_config",
    "seal",
    "start_cluster",
    "verify_token",
    "write_store_config",
]
