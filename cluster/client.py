"""Go Micro's client, on a cluster node: call a service by name, on a node the selector picks.

A call resolves the service through the registry cache (only nodes of clusters this node trusts),
selects a node (random by default; round robin, least outstanding, consistent hashing by ``key``;
the circuit breaker keeps failing nodes out), asks it, and retries on another node with backoff
when the failure allows it (see :class:`~trimicro.cluster.selector.RetryPolicy`), within one
deadline. A retry never goes back to a node this call already tried while another candidate
exists. :class:`Client` holds that state and those calls; :class:`~.cluster.Cluster` is one and
adds serving, membership, pub/sub and the wiring.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trimicro.actors import ActorRef, Node, Stream, ask, open_stream
from trimicro.actors.lowlevel import current_cell
from trimicro.mailbox.errors import MicroError, NotFound

from .introspect import DESCRIBE_PATH
from .membership import SYSTEM_PATH
from .registry import NodeInfo, Registry, RegistryCache, Service, clusters_of
from .selector import (
    BreakerSelector,
    CircuitBreaker,
    Outstanding,
    RetryPolicy,
    Selector,
    Strategy,
    maybe_delivered,
    node_trouble,
    selector_named,
)
from .service import IDEMPOTENT

__all__ = ["Client", "call"]


class Client:
    """Calls to services by name from one node (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        registry: Registry,
        *,
        strategy: Strategy | None,
        retry: RetryPolicy | None,
        seed: int | None,
        selector: Selector | str | None,
    ) -> None:
        self.node = node
        self.registry = registry
        #: This node's cluster (its authority's fingerprint; ``""`` if the identity names none)
        #: and every cluster whose nodes it may call (the authorities it trusts).
        self.fingerprint, self.clusters = clusters_of(node.remote.identity)
        self.cache = RegistryCache(registry, clusters=self.clusters)
        self.rng = random.Random(seed)
        self.breaker = CircuitBreaker()
        self.outstanding = Outstanding()
        self.selector: Selector
        if selector is None or isinstance(selector, str):
            if selector is None or strategy is not None:
                self.selector = BreakerSelector(strategy, self.breaker, self.rng)
            else:
                self.selector = selector_named(
                    selector, breaker=self.breaker, rng=self.rng, outstanding=self.outstanding
                )
        else:
            self.selector = selector
        self.retry = retry or RetryPolicy()

    def _ref_for(self, info: NodeInfo, service: str) -> ActorRef:
        path = info.metadata.get("path") or f"/user/{service}"
        if info.id == self.node.id:
            return self.node.ref(path)
        peer = self.node.remote.peer(info.id)
        if peer.address is None and info.address:
            peer.address = info.address  # a hint: the handshake checks the node id
        return self.node.remote_ref(info.id, path)

    async def ask(self, service: str, message: Any, **options: Any) -> Any:
        """``ask`` by service name: ``await cluster.ask("greeter", Hello("Ada"))`` (handler by type)."""
        return await self.call(service, None, message, **options)

    async def call(
        self,
        service: str,
        endpoint: str | None,
        body: Any = None,
        *,
        timeout: float | None = None,
        key: str | None = None,
        version: str | None = None,
        metadata: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Call ``endpoint`` of ``service`` on a selected node, retrying on another when allowed.

        ``endpoint=None`` sends ``body`` by type (as ``ask`` does). Raises the handler's typed
        error, ``NotFound`` when no node offers the service, ``RequestTimeout`` at the deadline.
        """
        node = self.node
        total = node.ask_timeout if timeout is None else timeout
        deadline = trio.current_time() + total
        tried: set[str] = set()
        attempt = 0
        self.retry.record_request()
        known_tried = False  # every node of the last answer failed this call
        last: MicroError | None = None
        while True:
            # Before going back to a node that failed, ask the registry itself for others: the
            # cache (watch events aside) holds an answer for seconds.
            try:
                services = await self.cache.get_service(service, refresh=known_tried)
            except NotFound:
                if last is None:
                    raise
                raise last from None  # gone from the registry since (deregistered): the failure is the news
            info = self._select(services, key, version, metadata, endpoint, tried)
            ref = self._ref_for(info, service)
            self.outstanding.start(info.id)
            try:
                result = await ask(
                    ref,
                    body,
                    endpoint=endpoint,
                    timeout=max(0.001, deadline - trio.current_time()),
                    headers=headers,
                )
            except MicroError as exc:
                if node_trouble(exc):
                    self.selector.mark(info.id, exc, now=trio.current_time())
                attempt += 1
                delivered = maybe_delivered(exc)
                idem = _is_idempotent(services, endpoint)
                left = deadline - trio.current_time()
                if (
                    attempt >= self.retry.attempts
                    or left <= 0
                    or not self.retry.should_retry(exc, delivered=delivered, idempotent=idem)
                    or not self.retry.can_retry()
                ):
                    raise
                self.retry.record_retry()
                last = exc
                tried.add(info.id)
                known_tried = all(n.id in tried for s in services for n in s.nodes)
                await trio.sleep(min(self.retry.delay(attempt, self.rng), left))
                continue
            finally:
                self.outstanding.done(info.id)
            self.selector.mark(info.id, None, now=0.0)
            return result

    def _select(
        self,
        services: list[Service],
        key: str | None,
        version: str | None,
        metadata: dict[str, str] | None,
        endpoint: str | None,
        tried: set[str],
    ) -> NodeInfo:
        # Filtered by endpoint only among records that list endpoints: records learnt from
        # membership gossip list none (a node without the endpoint answers 404 anyway).
        if endpoint is not None:
            offering = [
                s for s in services if not s.endpoints or any(e.name == endpoint for e in s.endpoints)
            ]
            if not offering:
                name = services[0].name if services else "?"
                raise NotFound(f"no node of service {name} offers {endpoint}", id="selector")
            services = offering
        # ``tried`` is a soft exclusion: a node tried already is picked again if it is the only one.
        return self.selector.select(
            services, now=trio.current_time(), key=key, version=version, metadata=metadata, exclude=tried
        )

    @asynccontextmanager
    async def open_stream(
        self,
        service: str,
        endpoint: str,
        request: Any = None,
        *,
        key: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[Stream]:
        """Open a stream with ``endpoint`` of a selected node of ``service``."""
        services = await self.cache.get_service(service)
        info = self._select(services, key, version, None, endpoint, set())
        ref = self._ref_for(info, service)
        async with open_stream(ref, endpoint, request, timeout=timeout, headers=headers) as stream:
            yield stream

    async def call_node(
        self, info: NodeInfo, endpoint: str, body: Any = None, *, timeout: float = 5.0
    ) -> Any:
        """Call the cluster system actor of one particular node (membership view and such)."""
        ref = self._ref_for(NodeInfo(info.id, info.address, {"path": SYSTEM_PATH}), "")
        return await ask(ref, body, endpoint=endpoint, timeout=timeout)

    async def describe_node(self, info: NodeInfo, service: str, *, timeout: float = 5.0) -> Any:
        """The full endpoint schemas of ``service`` as the node ``info`` serves it (:mod:`.introspect`)."""
        ref = self._ref_for(NodeInfo(info.id, info.address, {"path": DESCRIBE_PATH}), "")
        return await ask(ref, {"service": service}, endpoint="describe", timeout=timeout)


def _is_idempotent(services: list[Service], endpoint: str | None) -> bool:
    if endpoint is None:
        return False
    return any(
        e.name == endpoint and e.metadata.get(IDEMPOTENT) == "true" for s in services for e in s.endpoints
    )


async def call(service: str, endpoint: str | None, body: Any = None, **kwargs: Any) -> Any:
    """``Cluster.call`` from inside an actor, through the cluster of the actor's node."""
    cell = current_cell.get()
    cluster = None if cell is None else cell.node.extensions.get("cluster")
    if cluster is None:
        raise NotFound("call() outside a cluster node's actor: use cluster.call()", id="cluster")
    return await cluster.call(service, endpoint, body, **kwargs)
