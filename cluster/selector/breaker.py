"""The per-node circuit breaker the default selector consults: sans-I/O, ``now`` passed in."""

from __future__ import annotations

import math
from enum import Enum

import attrs

__all__ = ["BreakerState", "CircuitBreaker"]


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
