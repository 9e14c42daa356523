"""A whole cluster in one trio run: a memory registry, an in-process transport, several nodes.

``async with open_cluster() as cluster:`` gives an :class:`InprocCluster`;
``await cluster.add_node(services=[Greeter])`` starts a full cluster node (membership, links,
auth, the broker: everything :func:`~trimicro.cluster.start_cluster` starts) that reaches the
others over :class:`~trimicro.mailbox.transport.inproc.InprocTransport` (memory channels, no
sockets, no ports) and finds them in one :class:`~trimicro.cluster.MemoryRegistry` (no mDNS);
``await cluster.client.call("greeter", "Greeter.hello", {...})`` calls a service by name from a
node that serves nothing. Every node stops at the end of the block, the last started first.

All the nodes share one development identity in ``home`` (a temporary folder by default), so
they trust each other; each node records the messages its actors handle
(:attr:`InprocCluster.probes`). :meth:`InprocCluster.partition` and
:meth:`InprocCluster.isolate` cut nodes off from each other (:mod:`.faults`). Under
pytest-trio's ``autojump_clock`` the cluster's timers (membership probes, TTLs, retries,
backoff) run in virtual time.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from trimicro.actors import ActorRef
from trimicro.cluster import Cluster, MemoryRegistry, start_cluster
from trimicro.mailbox.transport.inproc import InprocTransport

from .faults import NodeTransport, Partitions
from .probes import DEFAULT_TIMEOUT, MessageProbe, wait_converged

__all__ = ["InprocCluster", "Serve", "open_cluster"]


@attrs.frozen
class Serve:
    """A service for :meth:`InprocCluster.add_node` with more than its class: its ``name``,
    ``version``, ``metadata`` and the factory's ``args``/``kwargs``."""

    factory: Callable[..., Any]
    name: str | None = None
    version: str = "latest"
    metadata: dict[str, str] = attrs.field(factory=dict)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)


class InprocCluster:
    """Nodes of one cluster in this trio run. Create it with :func:`open_cluster`."""

    def __init__(self, nursery: trio.Nursery, home: Path, options: dict[str, Any]) -> None:
        self._nursery = nursery
        self._stops: dict[str, tuple[trio.Event, trio.Event]] = {}
        #: Where the shared development identity lives.
        self.home = home
        #: The registry every node announces in and looks up (inspect it, or watch it).
        self.registry = MemoryRegistry()
        #: What carries the nodes' links (each node dials through a :class:`~.faults.NodeTransport`).
        self.transport = InprocTransport()
        #: The network faults in force (see :meth:`partition`).
        self.partitions = Partitions()
        #: Every node started, in order (the client, once made, included).
        self.nodes: list[Cluster] = []
        #: Each node's :class:`~.probes.MessageProbe`, by node id.
        self.probes: dict[str, MessageProbe] = {}
        self._options = options
        self._client: Cluster | None = None
        self._numbers = itertools.count(1)
        self._used: set[str] = set()

    def __getitem__(self, node_id: str) -> Cluster:
        """The running node ``node_id`` (``KeyError`` if there is none)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    async def add_node(
        self, name: str | None = None, *, services: Sequence[Any] = (), **options: Any
    ) -> Cluster:
        """Start a node serving ``services`` (actor classes, or :class:`Serve` for a name,
        version or arguments); ``options`` go to :func:`~trimicro.cluster.start_cluster` over
        those of :func:`open_cluster`. ``name`` is the node's id; by default ``n1``, ``n2``...
        (never one used before in this cluster: a new node is not mistaken for a stopped one)."""
        node_id = name or self._next_name()
        probe = MessageProbe()
        merged = {**self._options, **options}
        merged["middleware"] = [probe, *merged.get("middleware", ())]
        merged.setdefault("seed", len(self.nodes))
        merged.setdefault("listen", node_id)
        stop, stopped = trio.Event(), trio.Event()
        node: Cluster = await self._nursery.start(self._run_node, node_id, merged, stop, stopped)
        self._stops[node.id] = (stop, stopped)
        self._used.add(node.id)
        self.nodes.append(node)
        self.probes[node.id] = probe
        for service in services:
            await self.serve(node, service)
        return node

    def _next_name(self) -> str:
        return next(name for name in (f"n{i}" for i in self._numbers) if name not in self._used)

    async def _run_node(
        self,
        node_id: str,
        options: dict[str, Any],
        stop: trio.Event,
        stopped: trio.Event,
        *,
        task_status: trio.TaskStatus[Cluster] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # Each node lives in a task of the cluster's nursery, not in the caller's: a node's
        # nurseries must close in the task that opened them, and add_node's caller (a test)
        # is not the task that closes the cluster (a fixture's, under pytest-trio).
        try:
            async with start_cluster(
                node_id,
                registry=self.registry,
                transport=NodeTransport(self.transport, node_id, self.partitions),
                home=self.home,
                **options,
            ) as node:
                task_status.started(node)
                await stop.wait()
        finally:
            stopped.set()

    async def partition(self, a: Cluster | str, b: Cluster | str) -> None:
        """Cut nodes ``a`` and ``b`` off from each other until :meth:`heal`: their links close
        and they cannot dial each other (each sees the other ``suspect``, then ``dead``)."""
        await self.partitions.cut(_id(a), _id(b))

    async def isolate(self, node: Cluster | str) -> None:
        """Cut ``node`` off from every other node (to the others, as if its process died)."""
        for other in self.nodes:
            if other.id != _id(node):
                await self.partitions.cut(_id(node), other.id)

    def heal(self) -> None:
        """Remove every cut; the nodes link again as they next dial."""
        self.partitions.heal()

    async def stop_node(self, node: Cluster | str) -> None:
        """Stop one node as its process would on SIGTERM: it deregisters, leaves the
        membership (the others see it ``left``) and closes its links."""
        node_id = _id(node)
        stop, stopped = self._stops.pop(node_id)
        stop.set()
        await stopped.wait()
        self.nodes = [n for n in self.nodes if n.id != node_id]
        if self._client is not None and self._client.id == node_id:
            self._client = None

    async def aclose(self) -> None:
        """Stop every node, the last started first (what the end of :func:`open_cluster` does)."""
        for node_id in reversed(list(self._stops)):
            await self.stop_node(node_id)

    async def serve(self, node: Cluster, service: Any) -> ActorRef:
        """Serve ``service`` (an actor class or a :class:`Serve`) on ``node``."""
        spec = service if isinstance(service, Serve) else Serve(service)
        return await node.serve(
            spec.factory,
            *spec.args,
            name=spec.name,
            version=spec.version,
            metadata=spec.metadata,
            **spec.kwargs,
        )

    @property
    def client(self) -> Cluster:
        """A node that serves nothing, to call the services from (started by
        :meth:`start_client`, which :func:`open_cluster` calls)."""
        if self._client is None:
            raise RuntimeError("no client node: open_cluster(client=False) was asked for")
        return self._client

    async def start_client(self, name: str = "client") -> Cluster:
        """Start the :attr:`client` node."""
        self._client = await self.add_node(name)
        return self._client

    async def converged(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until every node sees every other alive and linked (see
        :func:`~.probes.wait_converged`)."""
        await wait_converged(self.nodes, timeout=timeout)


def _id(node: Cluster | str) -> str:
    return node if isinstance(node, str) else node.id


@asynccontextmanager
async def open_cluster(
    *, home: Path | None = None, client: bool = True, **options: Any
) -> AsyncIterator[InprocCluster]:
    """Run an :class:`InprocCluster` for the block. ``options`` go to every node's
    :func:`~trimicro.cluster.start_cluster` (``types=``, ``auth=``, ``ttl=``...); with
    ``client`` (the default) a node named ``client`` is started first, to call from."""
    with ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trimicro-")))
        async with trio.open_nursery() as nursery:
            cluster = InprocCluster(nursery, home, options)
            try:
                if client:
                    await cluster.start_client()
                yield cluster
            finally:
                with trio.CancelScope(shield=True):
                    await cluster.aclose()
