"""A cluster node's readiness checks: membership joined, registry reachable, store open.

``start_cluster`` adds them to the node's :class:`~trimicro.actors.lowlevel.Health` (the actor
layer answers ``SYSTEM health`` with them, the gateway's ``/health/ready`` reads them, and
``trimicro health`` prints them):

- ``registry``: the registry answers a lookup of the ``trimicro.node`` records now (not the
  cluster's cache), and a registry that answers lookups from a local copy of its server's data
  (NATS) answers its optional ``ping()``, a round trip to the server; and this node's own record
  was announced (``announce=True``);
- ``store`` (with ``store=``): the store answers a read (a missing key is an answer; a closed
  store raises 503);
- ``membership`` (a member): SWIM runs and this node is alive in its own view (not ``left``);
  the detail counts the members alive and suspect, and says so when seeds have not answered.

An application adds its own with ``cluster.node.health.add(name, probe)``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Protocol

import trio

from trimicro.actors import Node
from trimicro.actors.lowlevel import NotReady
from trimicro.mailbox.errors import NotFound

from .registry import NODE_SERVICE, NodeInfo, Registry

__all__ = ["STORE_PROBE_KEY", "Host", "add_checks"]

#: The key the store check reads (it need not exist: "not found" is an answer).
STORE_PROBE_KEY = "trimicro/health"


class Host(Protocol):
    """What the checks read of the cluster node (:class:`~trimicro.cluster.Cluster` is one)."""

    @property
    def node(self) -> Node: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def id(self) -> str: ...

    def accepts(self, info: NodeInfo) -> bool: ...

    store: Any
    membership: Any
    announced: bool


def add_checks(cluster: Host, *, membership: bool, announce: bool) -> None:
    """Add the checks that apply to this node (before the parts they check have started: each
    fails with "starting" until then)."""
    health = cluster.node.health
    health.add("registry", functools.partial(registry_check, cluster, announce))
    if cluster.store is not None:
        health.add("store", functools.partial(store_check, cluster.store))
    if membership:
        health.add("membership", functools.partial(membership_check, cluster))


async def registry_check(cluster: Host, announce: bool) -> str:
    started = trio.current_time()
    ping = getattr(cluster.registry, "ping", None)
    if ping is not None:  # a registry that answers lookups from a local copy (NATS)
        await ping()
    try:
        records = await cluster.registry.get_service(NODE_SERVICE)
        nodes = sum(1 for s in records for n in s.nodes if cluster.accepts(n))  # of this cluster
    except NotFound:
        nodes = 0
    took = (trio.current_time() - started) * 1000
    if announce and not cluster.announced:
        raise NotReady("this node is not announced yet", id=cluster.id)
    return f"answered in {took:.0f} ms ({nodes} node{'s' if nodes != 1 else ''} announced)"


async def store_check(store: Any) -> str:
    with contextlib.suppress(NotFound):  # "not found" is an answer
        await store.read(STORE_PROBE_KEY)
    return f"open ({type(store).__name__})"


async def membership_check(cluster: Host) -> str:
    membership = cluster.membership
    if membership is None:
        raise NotReady("membership is starting", id=cluster.id)
    me = membership.member(cluster.id)
    state = "unknown" if me is None else me.state.name.lower()
    if state != "alive":
        raise NotReady(f"this node is {state} in its own membership view", id=cluster.id)
    states = [m["state"] for m in membership.view()]
    alive, suspect = states.count("alive"), states.count("suspect")
    detail = f"{alive} member{'s' if alive != 1 else ''} alive" + (f", {suspect} suspect" if suspect else "")
    if membership.seeds is not None and alive + suspect <= 1:
        # Not a failure: the first node of a cluster whose nodes all list each other as seeds
        # is alone until the second starts, and must take traffic meanwhile.
        detail += " (alone: no seed answered yet)"
    return detail
