"""The built-in strategies: which one of the candidate nodes gets a call (see the package's
docstring for why each exists). Each has ``pick(nodes, key)``, the package's ``Strategy``."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from trimicro.cluster.registry import NodeInfo

__all__ = ["ConsistentHash", "LeastOutstanding", "Outstanding", "RandomStrategy", "RoundRobin"]


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
