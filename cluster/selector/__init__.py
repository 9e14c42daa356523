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
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Protocol, runtime_checkable

import attrs

from trimicro.actors.lowlevel import Unreachable
from trimicro.cluster.registry import NodeInfo, Service
from trimicro.mailbox.errors import MicroError, ServiceUnavailable

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


def _require_nodes(nodes: Sequence[NodeInfo]) -> None:
    if not nodes:
        raise ValueError("a strategy needs at least one node to pick from")


class RandomStrategy:
    """Uniformly random (Go Micro's default ``Random``)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def pick(self, nodes: Sequence[NodeInfo], key: str | None = None) -> NodeInfo:
        """A uniformly random node; ``key`` is ignored."""
        _require_nodes(nodes)
        return nodes[self.rng.randrange(len(nodes))]


class RoundRobin:
    """Each pick takes the next position in the given order (Go Micro's ``RoundRobin``).

    The counter is shared by all calls, so a list that changes between picks (nodes joining or
    leaving, nodes excluded for one call) still spreads picks, just not in a strict cycle.
    """

    def __init__(self, start: int = 0) -> None:
        self._next = start

    def pick(self, nodes: Sequence[NodeInfo], key: str | None = None) -> NodeInfo:
        """The node after the previously picked position; ``key`` is ignored."""
        _require_nodes(nodes)
        node = nodes[self._next % len(nodes)]
        self._next += 1
        return node


class Outstanding:
    """In-flight call counts per node id, kept by the ``call()`` layer for :class:`LeastOutstanding`."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def start(self, node_id: str) -> None:
        """A call to ``node_id`` was sent."""
        self._counts[node_id] = self._counts.get(node_id, 0) + 1

    def done(self, node_id: str) -> None:
        """A call to ``node_id`` finished (in any way); unmatched calls are ignored."""
        count = self._counts.get(node_id, 0) - 1
        if count > 0:
            self._counts[node_id] = count
        else:
            self._counts.pop(node_id, None)

    def count(self, node_id: str) -> int:
        """Calls to ``node_id`` now in flight."""
        return self._counts.get(node_id, 0)

    @contextmanager
    def track(self, node_id: str) -> Iterator[None]:
        """``start`` on entry and ``done`` on exit, however the block ends."""
        self.start(node_id)
        try:
            yield
        finally:
            self.done(node_id)


class LeastOutstanding:
    """Power of two random choices: sample two distinct nodes, take the one with fewer calls in flight."""

    def __init__(self, rng: random.Random | None = None, outstanding: Outstanding | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.outstanding = outstanding if outstanding is not None else Outstanding()

    def pick(self, nodes: Sequence[NodeInfo], key: str | None = None) -> NodeInfo:
        """The less loaded of two random nodes (the first sampled on a tie); ``key`` is ignored."""
        _require_nodes(nodes)
        if len(nodes) == 1:
            return nodes[0]
        i, j = self.rng.sample(range(len(nodes)), 2)
        first, second = nodes[i], nodes[j]
        if self.outstanding.count(second.id) < self.outstanding.count(first.id):
            return second
        return first


class ConsistentHash:
    """Rendezvous hashing: the node with the highest ``blake2b(key, node id)`` weight wins the key.

    The hash is stable across processes and Python versions (not ``hash()``), so every client
    sends a key to the same node. ``key`` is required.
    """

    @staticmethod
    def weight(key: str, node_id: str) -> int:
        """The 64-bit weight of ``node_id`` for ``key`` (length-prefixed, so no two pairs collide)."""
        key_bytes = key.encode()
        data = len(key_bytes).to_bytes(8, "big") + key_bytes + node_id.encode()
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")

    def pick(self, nodes: Sequence[NodeInfo], key: str | None) -> NodeInfo:
        """The node that wins ``key``; ``ValueError`` without a key."""
        if key is None:
            raise ValueError("ConsistentHash needs a routing key")
        _require_nodes(nodes)
        return max(nodes, key=lambda node: (self.weight(key, node.id), node.id))


# --------------------------------------------------------------------------------------------
# Filters


def filter_nodes(
    services: Sequence[Service],
    *,
    version: str | None = None,
    metadata: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> list[NodeInfo]:
    """The nodes of ``services`` that match (Go Micro's ``FilterVersion/FilterLabel/FilterEndpoint``).

    * ``version``: the record's version must equal it (``None``: any version).
    * ``metadata``: every pair must match the node's metadata, where a key the node does not
      set falls back to the service record's metadata (the node's own value wins).
    * ``endpoint``: the record must list an endpoint of that name (a record listing no
      endpoints does not match).

    Nodes keep their registry order; a node id listed by several records appears once (first wins).
    """
    wanted = dict(metadata or {})
    seen: set[str] = set()
    found: list[NodeInfo] = []
    for service in services:
        if version is not None and service.version != version:
            continue
        if endpoint is not None and all(ep.name != endpoint for ep in service.endpoints):
            continue
        for node in service.nodes:
            if node.id in seen:
                continue
            effective = {**service.metadata, **node.metadata}
            if all(effective.get(k) == v for k, v in wanted.items()):
                seen.add(node.id)
                found.append(node)
    return found


# --------------------------------------------------------------------------------------------
# Circuit breaker


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@attrs.define
class _Circuit:
    failures: int = 0  # consecutive failures while closed
    open_until: float | None = None  # None: closed
    open_for: float = 0.0  # the length of the current (last) open period
    last_failure: float = -math.inf
    trial: bool = False  # a half-open trial call was granted and has not reported yet


class CircuitBreaker:
    """Per-node breaker: skip a node after repeated failures, probe it again later.

    After ``failure_threshold`` consecutive failures the node is *open* for ``open_for``
    seconds. When that time has passed it is *half-open*: :meth:`allow` grants one trial call
    and then refuses again for another ``open_for`` period (so a trial whose result never
    comes back does not wedge the node). A failed trial re-opens it for twice as long, up to
    ``max_open_for``; a success closes it and resets the period.
    """

    def __init__(self, failure_threshold: int = 3, open_for: float = 1.0, max_open_for: float = 30.0) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if open_for <= 0 or max_open_for < open_for:
            raise ValueError("need 0 < open_for <= max_open_for")
        self.failure_threshold = failure_threshold
        self.open_for = open_for
        self.max_open_for = max_open_for
        self._circuits: dict[str, _Circuit] = {}
        #: Times a circuit opened (or re-opened after a failed trial).
        self.trips = 0

    def state(self, node_id: str, now: float) -> BreakerState:
        """The node's state at ``now`` (does not change anything)."""
        circuit = self._circuits.get(node_id)
        if circuit is None or circuit.open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < circuit.open_until else BreakerState.HALF_OPEN

    def would_allow(self, node_id: str, now: float) -> bool:
        """Whether :meth:`allow` would say yes, without using up a half-open trial."""
        return self.state(node_id, now) is not BreakerState.OPEN

    def allow(self, node_id: str, now: float) -> bool:
        """May a call go to ``node_id`` now? In half-open this claims the single trial call."""
        state = self.state(node_id, now)
        if state is BreakerState.HALF_OPEN:
            circuit = self._circuits[node_id]
            circuit.open_until = now + circuit.open_for  # no second trial until this one is due
            circuit.trial = True
            return True
        return state is BreakerState.CLOSED

    def success(self, node_id: str) -> None:
        """A call to ``node_id`` succeeded: close its breaker and forget its failures."""
        self._circuits.pop(node_id, None)

    def failure(self, node_id: str, now: float) -> None:
        """A call to ``node_id`` failed at ``now``."""
        circuit = self._circuits.setdefault(node_id, _Circuit())
        circuit.last_failure = now
        if circuit.open_until is None:
            circuit.failures += 1
            if circuit.failures >= self.failure_threshold:
                self._trip(circuit, now)
        elif circuit.trial or now >= circuit.open_until:
            self._trip(circuit, now)  # the trial failed (or the node failed once due): back off longer
        # else: a late report of a call sent before the breaker opened; the period stands.

    def mark_down(self, node_id: str, now: float) -> None:
        """Open the breaker at once (membership declared the node dead, or its link was lost)."""
        circuit = self._circuits.setdefault(node_id, _Circuit())
        circuit.last_failure = now
        if circuit.open_until is None or circuit.trial or now >= circuit.open_until:
            self._trip(circuit, now)

    def forget(self, node_id: str) -> None:
        """Drop all state of ``node_id`` (it left the registry)."""
        self._circuits.pop(node_id, None)

    def forget_all(self) -> None:
        """Drop the state of every node."""
        self._circuits.clear()

    def open_count(self, now: float) -> int:
        """How many nodes' circuits are open at ``now`` (half-open ones not counted)."""
        circuits = list(self._circuits.values())
        return sum(1 for c in circuits if c.open_until is not None and now < c.open_until)

    def last_failure(self, node_id: str) -> float:
        """When ``node_id`` last failed (``-inf`` if it never did or has recovered)."""
        circuit = self._circuits.get(node_id)
        return -math.inf if circuit is None else circuit.last_failure

    def _trip(self, circuit: _Circuit, now: float) -> None:
        self.trips += 1
        if circuit.open_until is None:
            circuit.open_for = self.open_for
        else:
            circuit.open_for = min(circuit.open_for * 2, self.max_open_for)
        circuit.open_until = now + circuit.open_for
        circuit.failures = 0
        circuit.trial = False


# --------------------------------------------------------------------------------------------
# Retries

# Codes that say "not now", never "not ever": unavailable/unreachable, overloaded, timed out.
_TRANSIENT = frozenset({408, 429, 502, 503, 504})


def node_trouble(exc: MicroError) -> bool:
    """Whether ``exc`` says the node, not the request, is in trouble (the breaker counts it)."""
    return exc.code in (503, 429) or isinstance(exc, Unreachable)


def maybe_delivered(exc: MicroError) -> bool:
    """Whether the request may have run. Only a failure to reach the node at all is known not
    to have: a 429 or 503 from the other side may come from the handler itself, so it counts
    as delivered (and is retried only for idempotent endpoints)."""
    if isinstance(exc, Unreachable):
        return exc.maybe_delivered
    return True


class RetryPolicy:
    """When to retry a failed call, how long to wait first, and a budget that caps retry storms.

    ``attempts`` counts every attempt, the first included (3: one call and up to two retries).
    The budget is a token bucket: each first attempt deposits ``budget_ratio`` tokens, each
    retry spends one, and it starts with ``budget_min`` tokens so a fresh client can retry at
    all; it holds at most ``budget_cap`` (default ``10 * budget_min``) so a long quiet spell
    cannot save up a storm. With the defaults, retries add at most ~20% load in steady state.
    """

    def __init__(
        self,
        attempts: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        budget_ratio: float = 0.2,
        budget_min: float = 10,
        budget_cap: float | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if backoff < 0 or max_backoff < 0 or budget_ratio < 0 or budget_min < 0:
            raise ValueError("backoff and budget parameters must not be negative")
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.budget_ratio = budget_ratio
        self.budget_min = budget_min
        self.budget_cap = max(budget_min, 10 * budget_min if budget_cap is None else budget_cap)
        self._tokens = float(budget_min)
        #: First attempts and retries made (each call is one request; every retry one more).
        self.requests = 0
        self.retries = 0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retrying after ``attempt`` failed attempts (1 after the first call).

        Exponential with full jitter: uniform in ``[0, min(max_backoff, backoff * 2**(attempt-1))]``.
        """
        if attempt < 1:
            raise ValueError("attempt counts failed attempts, starting at 1")
        ceiling = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 64))
        return rng.uniform(0.0, ceiling)

    @property
    def tokens(self) -> float:
        """Retries the budget still allows (may be below 1, or negative if overspent)."""
        return self._tokens

    def can_retry(self) -> bool:
        """Whether the budget has a whole token for one more retry."""
        return self._tokens >= 1.0

    def record_request(self) -> None:
        """A first attempt was made: deposit ``budget_ratio`` tokens."""
        self.requests += 1
        self._tokens = min(self.budget_cap, self._tokens + self.budget_ratio)

    def record_retry(self) -> None:
        """A retry was made: spend one token."""
        self.retries += 1
        self._tokens -= 1.0

    def should_retry(self, error: BaseException, *, delivered: bool, idempotent: bool) -> bool:
        """Whether ``error`` may be retried (attempt count and budget are checked elsewhere).

        * Only :class:`MicroError` is retried; anything else (a bug, cancellation) is not.
        * Not delivered (the request surely never reached a handler): retry the transient
          codes 408, 429, 502, 503, 504.
        * Possibly delivered: retry only if ``idempotent``, on the transient codes and 500
          (Go Micro's default ``RetryOnError`` retries 408 and 500).
        * Never other 4xx (400, 401, 403, 404, 409...): the same request fails the same way.
        """
        if not isinstance(error, MicroError):
            return False
        if not delivered:
            return error.code in _TRANSIENT
        return idempotent and (error.code in _TRANSIENT or error.code == 500)

    def may_retry(self, attempt: int, error: BaseException, *, delivered: bool, idempotent: bool) -> bool:
        """All three checks: attempts left after ``attempt`` tries, a retryable error, budget left."""
        return (
            attempt < self.attempts
            and self.should_retry(error, delivered=delivered, idempotent=idempotent)
            and self.can_retry()
        )


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
        elif isinstance(error, MicroError) and error.code < 500 and error.code not in _TRANSIENT:
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
