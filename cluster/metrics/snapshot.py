"""A cluster node's numbers as plain data: the actor node's (:func:`trimicro.actors.lowlevel.node_snapshot`)
and those of the abstractions the cluster wires to it (membership, store, pub/sub, selector).

Each abstraction counts its own events as integers on its own object (``Membership.transitions``,
``PubSub.delivered``, ``RetryPolicy.retries``, a store's ``reads``...); this module only reads
them, by attribute, so it imports none of them, and a plugin that keeps no such counts (a NATS
broker, say) is simply left out of the snapshot. Run it on the node's trio thread (the
exporters do): the breaker's state is read against trio's clock.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio

from trimicro.actors import Node
from trimicro.actors.lowlevel import node_snapshot

from .catalog import Snapshot

__all__ = ["Host", "cluster_snapshot"]


class Host(Protocol):
    """What the snapshot reads of a cluster node (:class:`trimicro.cluster.Cluster` is one)."""

    @property
    def node(self) -> Node: ...

    @property
    def membership(self) -> Any: ...

    @property
    def pubsub(self) -> Any: ...

    @property
    def store(self) -> Any: ...

    @property
    def retry(self) -> Any: ...

    @property
    def breaker(self) -> Any: ...


def _members(membership: Any) -> dict[str, Any] | None:
    if membership is None:
        return None
    states: dict[str, int] = {}
    for member in membership.swim.members():
        state = member.state.name.lower()
        states[state] = states.get(state, 0) + 1
    return {"states": states, "transitions": dict(membership.transitions)}


def _store(store: Any) -> dict[str, int] | None:
    if store is None or not hasattr(store, "reads"):
        return None
    return {"read": store.reads, "write": store.writes, "delete": store.deletes, "list": store.lists}


def _pubsub(broker: Any) -> dict[str, int] | None:
    if broker is None or not hasattr(broker, "delivered"):
        return None
    return {"delivered": broker.delivered, "redelivered": broker.redelivered, "dropped": broker.dropped}


def cluster_snapshot(host: Host) -> Snapshot:
    """Everything :data:`~.catalog.CATALOG` reads, as plain data (see the module docstring)."""
    snap = node_snapshot(host.node)
    snap["members"] = _members(host.membership)
    snap["store"] = _store(host.store)
    snap["pubsub"] = _pubsub(host.pubsub)
    snap["selector"] = {
        "calls": host.retry.requests,
        "retries": host.retry.retries,
        "trips": host.breaker.trips,
        "open_circuits": host.breaker.open_count(trio.current_time()),
    }
    return snap
