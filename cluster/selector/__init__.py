"""Client-side load balancing: which node of a service gets the next call, and whether to retry.

This is Go Micro's ``selector`` package (``Random`` and ``RoundRobin`` strategies, the
``Filter`` helpers for version, metadata and endpoint) plus the pieces Go Micro leaves to
wrappers: a per-node circuit breaker, a least-outstanding strategy and a retry policy with a
retry budget. Everything here is sans-I/O: no trio, no sleeping, no clock. The caller passes
``now`` (``trio.current_time()`` in production, plain numbers in tests) and a
:class:`random.Random`, so every decision is reproducible.

Why these strategies:

* :class:`RandomStrategy` (the default, as in Go Micro): stateless, needs no coordination
  between clients, and spreads load evenly enough once there are many clients.
* :class:`RoundRobin`: Go Micro's other built-in; an even spread from a single client.
* :class:`LeastOutstanding`: "power of two random choices" over in-flight counts. Sampling two
  nodes and taking the less loaded one avoids both the herding of "always the least loaded"
  and the blindness of random to slow nodes, at O(1) per pick.
* :class:`ConsistentHash`: rendezvous (highest-random-weight) hashing for sticky routing (a
  cache, a shard, an actor that keeps state per key). A key keeps its node while that node
  lives; when a node leaves only its own keys move, and when a node joins only the keys it
  wins move to it. No ring, no virtual nodes, and excluding a failed node falls through to
  the key's second-best node.

The interface is :class:`Selector` (a Protocol: ``select``, ``mark``, ``reset``; Go Micro's
``Select(service) -> Next``, ``Mark(node, err)``, ``Reset(service)``, adapted: the cluster's
``call()`` asks ``select`` once per attempt, passing the nodes this call already tried in
``exclude``, which is what Go Micro's ``Next`` closure remembers). :func:`selector_named` builds
the default for a strategy name (``"random"``, the default as in Go Micro, ``"roundrobin"``,
``"leastoutstanding"``, ``"hash"``); ``start_cluster(selector=...)`` takes such a name or any
object with these three methods, chosen once at start.

A :class:`BreakerSelector` (the default) ties them together: filter the registry records, skip nodes this call
already tried and nodes whose breaker is open, let the strategy pick. Like Go Micro it never
refuses while matching nodes exist: when every breaker is open it falls back to the node that
failed least recently. :class:`RetryPolicy` tells the ``call()`` layer whether an error may be
retried (see :meth:`RetryPolicy.should_retry` for the rules) and how long to back off.

Layout, as Go Micro's packages: this module holds the interfaces (:class:`Selector`,
:class:`Strategy`), the default (:class:`BreakerSelector`, :func:`selector_named`) and its
error; the implementations sit beside it, independent of each other (:mod:`.strategies`,
:mod:`.filters`, :mod:`.breaker`, :mod:`.retry`), and are re-exported here, so
``from trimicro.cluster.selector import RoundRobin`` keeps working.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from trimicro.cluster.registry import NodeInfo, Service
from trimicro.mailbox.errors import MicroError, ServiceUnavailable

from .breaker import BreakerState, CircuitBreaker
from .filters import filter_nodes
from .retry import TRANSIENT, RetryPolicy, maybe_delivered, node_trouble
from .strategies import ConsistentHash, LeastOutstanding, Outstanding, RandomStrategy, RoundRobin

__all__ = [
    "STRATEGIES",
    "BreakerSelector",
    "BreakerState",
    "CircuitBreaker",
    "ConsistentHash",
    "LeastOutstanding",
    "NoNodes",
    "Outstanding",
    "RandomStrategy",
    "RetryPolicy",
    "RoundRobin",
    "Selector",
    "Strategy",
    "filter_nodes",
    "maybe_delivered",
    "node_trouble",
    "selector_named",
]


class NoNodes(ServiceUnavailable):
    """503: no node of the service matches the request (none registered, or none pass the filters)."""


# --------------------------------------------------------------------------------------------
# Strategies


class Strategy(Protocol):
    """Picks one node out of a non-empty candidate list (Go Micro's ``selector.Strategy``)."""

    def pick(self, nodes: Sequence[NodeInfo], key: str | None) -> NodeInfo:
        """Return one of ``nodes`` (never empty); ``key`` is the routing key, if any."""
        ...


# --------------------------------------------------------------------------------------------
# Selector


def _describe(
    services: Sequence[Service],
    version: str | None,
    metadata: Mapping[str, str] | None,
    endpoint: str | None,
) -> str:
    names = sorted({svc.name for svc in services})
    text = f"no nodes of service {', '.join(names) if names else '(none registered)'}"
    wanted = [f"version={version}"] if version is not None else []
    wanted += [f"{k}={v}" for k, v in sorted((metadata or {}).items())]
    wanted += [f"endpoint={endpoint}"] if endpoint is not None else []
    return f"{text} matching {', '.join(wanted)}" if wanted else text


@runtime_checkable
class Selector(Protocol):
    """Which node gets the next attempt of a call (Go Micro's ``selector.Selector``).

    Sans-I/O: the caller passes the registry records and ``now``. ``select`` raises
    :class:`NoNodes` (503) when no node matches; ``mark`` hears how an attempt went (``error``
    ``None``: it succeeded; the cluster marks only node trouble: 503, 429, unreachable);
    ``reset`` forgets what was learnt about one node (``None``: about every node).
    """

    def select(
        self,
        services: Sequence[Service],
        *,
        now: float,
        key: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        exclude: Collection[str] = (),
    ) -> NodeInfo: ...

    def mark(self, node_id: str, error: BaseException | None = None, *, now: float) -> None: ...

    def reset(self, node_id: str | None = None) -> None: ...


class BreakerSelector:
    """Filters, circuit breaker and strategy in one ``select``: the default :class:`Selector`."""

    def __init__(
        self,
        strategy: Strategy | None = None,
        breaker: CircuitBreaker | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.strategy: Strategy = strategy if strategy is not None else RandomStrategy(self.rng)
        self.breaker = breaker if breaker is not None else CircuitBreaker()

    def select(
        self,
        services: Sequence[Service],
        *,
        now: float,
        key: str | None = None,
        version: str | None = None,
        metadata: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        exclude: Collection[str] = (),
    ) -> NodeInfo:
        """Pick the node for one attempt of a call.

        Among the nodes that pass :func:`filter_nodes`, drop those in ``exclude`` (already tried
        by this call) unless that drops them all, then let the strategy pick among those the
        breaker allows (claiming a half-open trial for the one picked). If every breaker is
        open, return the candidate that failed least recently. :class:`NoNodes` only when no
        node matches at all.
        """
        matching = filter_nodes(services, version=version, metadata=metadata, endpoint=endpoint)
        if not matching:
            raise NoNodes(_describe(services, version, metadata, endpoint), id="selector")
        fresh = [node for node in matching if node.id not in exclude] or matching
        allowed = [node for node in fresh if self.breaker.would_allow(node.id, now)]
        if allowed:
            node = self.strategy.pick(allowed, key)
            self.breaker.allow(node.id, now)
            return node
        return min(fresh, key=lambda node: (self.breaker.last_failure(node.id), node.id))

    def report(self, node_id: str, *, now: float, error: BaseException | None = None) -> None:
        """Feed one attempt's outcome to the breaker.

        ``None`` or a 4xx answer other than 408/429 is a success (the node answered); a 5xx,
        408, 429 or any non-:class:`MicroError` exception counts as a failure. Non-``Exception``
        base exceptions (cancellation, KeyboardInterrupt) say nothing about the node.
        """
        if error is None:
            self.breaker.success(node_id)
        elif not isinstance(error, Exception):
            return
        elif isinstance(error, MicroError) and error.code < 500 and error.code not in TRANSIENT:
            self.breaker.success(node_id)
        else:
            self.breaker.failure(node_id, now)

    def mark(self, node_id: str, error: BaseException | None = None, *, now: float) -> None:
        """:meth:`report` in the :class:`Selector` protocol's words."""
        self.report(node_id, now=now, error=error)

    def reset(self, node_id: str | None = None) -> None:
        """Close the breaker of ``node_id`` (``None``: of every node) and forget its failures."""
        if node_id is None:
            self.breaker.forget_all()
        else:
            self.breaker.forget(node_id)


#: The strategy names :func:`selector_named` (and ``start_cluster(selector=...)``) knows.
STRATEGIES = ("random", "roundrobin", "leastoutstanding", "hash")


def selector_named(
    name: str,
    *,
    breaker: CircuitBreaker | None = None,
    rng: random.Random | None = None,
    outstanding: Outstanding | None = None,
) -> BreakerSelector:
    """The default selector with the strategy called ``name`` (see :data:`STRATEGIES`).

    ``outstanding`` is the in-flight count the ``call()`` layer keeps (for
    ``"leastoutstanding"``); an unknown name is a ``ValueError`` naming the known ones.
    """
    rng = rng if rng is not None else random.Random()
    strategy: Strategy
    if name == "random":
        strategy = RandomStrategy(rng)
    elif name == "roundrobin":
        strategy = RoundRobin()
    elif name == "leastoutstanding":
        strategy = LeastOutstanding(rng, outstanding)
    elif name == "hash":
        strategy = ConsistentHash()
    else:
        raise ValueError(f"unknown selector {name!r}; known: {', '.join(STRATEGIES)}")
    return BreakerSelector(strategy, breaker, rng)
