"""A cluster node: an actor node plus a registry, membership, and calls to services by name.

``async with start_cluster("n1") as cluster:`` starts a node that listens on loopback, announces
itself in the registry (mDNS on 127.0.0.1 by default), joins the membership (SWIM over the
nodes' secure links), and on exit deregisters its services, leaves the membership and stops.

- ``await cluster.serve(Greeter, name="greeter", version="1.0")`` spawns the service actor and
  registers it (name, version, metadata, endpoints with their schemas, this node); it is
  deregistered when the actor stops or the cluster exits.
- ``await cluster.call("greeter", "Greeter.hello", {"name": "Ada"})`` resolves the service through
  the registry cache, selects a node (random by default; round robin, least outstanding,
  consistent hashing by ``key``), asks it, and retries on another node with backoff when the
  failure allows it (see :class:`~trimicro.cluster.selector.RetryPolicy`), within one deadline.
  A retry never goes back to a node this call already tried while another candidate exists.

Every record this node announces names its cluster (the fingerprint of the authority that
certified it), and every lookup keeps only nodes of clusters this node trusts: another cluster
serving the same names on the same machine is invisible, instead of a node that fails the
handshake (see :mod:`trimicro.cluster.registry`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trimicro.actors import ActorRef, Node, Restart, Stream, ask, open_stream, start_node
from trimicro.actors.lowlevel import Cell, Identity, current_cell, register_node
from trimicro.mailbox.codec import TypeRegistry
from trimicro.mailbox.errors import MicroError, NotFound
from trimicro.mailbox.logs import get_logger

from .auth.guard import fetch_state
from .health import add_checks
from .introspect import DESCRIBE_NAME, DESCRIBE_PATH, Describe, endpoint_schemas
from .membership import SYSTEM_PATH, Membership
from .registry import (
    NODE_SERVICE,
    NodeInfo,
    Registry,
    RegistryCache,
    Service,
    belongs,
    clusters_of,
    in_clusters,
)
from .selector import (
    STRATEGIES,
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
from .service import IDEMPOTENT, describe_endpoints

if TYPE_CHECKING:
    from .auth import Auth
    from .auth.guard import Host as AuthHost
    from .broker import Broker
    from .broker import Host as BrokerHost
    from .membership import Host as MembershipHost
    from .store import Store
    from .store.service import Caller as StoreCaller

__all__ = ["NODE_SERVICE", "Cluster", "call", "start_cluster"]

log = get_logger(__package__)


class Cluster:
    """One node's view of the cluster. Create it with :func:`start_cluster`."""

    def __init__(
        self,
        node: Node,
        registry: Registry,
        nursery: trio.Nursery,
        *,
        ttl: float,
        strategy: Strategy | None,
        retry: RetryPolicy | None,
        seed: int | None,
        selector: Selector | str | None = None,
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
        self.ttl = ttl
        self._nursery = nursery
        self._served: dict[str, tuple[Service, ActorRef]] = {}
        self._service_paths: dict[str, str] = {}  # actor path -> service name (for auth rules)
        #: Full JSON Schemas of the endpoints served here, by service (:mod:`.introspect`).
        self.schemas: dict[str, dict[str, dict[str, Any]]] = {}
        #: The node's :class:`~trimicro.cluster.auth.AuthGuard` (``None`` with ``auth=False``).
        self.auth: Any = None
        #: What keeps :attr:`auth` current (:class:`~trimicro.cluster.auth.AuthSync`), if anything.
        self.auth_sync: Any = None
        #: The :class:`~trimicro.cluster.auth.Auth` behind :attr:`auth` (``None`` with ``auth=False``).
        self.authn: Auth | None = None
        self.membership: Any = None
        #: Pub/sub on this node: the :class:`~trimicro.cluster.broker.Broker`
        #: (:class:`~trimicro.cluster.broker.PubSub` by default).
        self.pubsub: Any = None
        #: The store ``start_cluster`` was given (``store=``), if any.
        self.store: Store | None = None
        self.announced = False
        node.extensions["cluster"] = self
        node.remote.resolve = self.address_of

    @property
    def broker(self) -> Broker:
        """The node's :class:`~trimicro.cluster.broker.Broker` (the same object as :attr:`pubsub`)."""
        broker: Broker = self.pubsub
        return broker

    @property
    def id(self) -> str:
        return self.node.id

    @property
    def address(self) -> str:
        return self.node.address or ""

    async def fetch_auth_state(self, *, timeout: float) -> None:
        """Fetch the auth service's rules and revocations into this node's guard now (the
        broker does, once, on a node that follows no auth service before judging a publish)."""
        if self.auth is not None:
            await fetch_state(self, self.auth, timeout=timeout)

    def service_of(self, path: str) -> str | None:
        """The service name served by the local actor at ``path`` (``None`` if none is)."""
        return self._service_paths.get(path)

    def address_of(self, node_id: str) -> str | None:
        """Where node ``node_id`` listens, from membership or the registry cache (a hint)."""
        if self.membership is not None:
            address: str | None = self.membership.address_of(node_id)
            if address:
                return address
        return None

    # ---- serving -------------------------------------------------------------------------------

    async def serve(
        self,
        factory: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        version: str = "latest",
        metadata: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Start a service actor on this node and register it; returns its ref."""
        cls = factory if isinstance(factory, type) else None
        if name is None:
            if cls is None:
                raise ValueError("name= is required when the factory is not an Actor class")
            name = (getattr(cls, "service_name", None) or cls.__name__).lower()
        if name in self._served:
            raise ValueError(f"service {name} is already served on this node")
        ref = await self.node.spawn(factory, *args, name=name, restart=Restart.PERMANENT, **kwargs)
        cell = ref.binding
        instance = cell.instance if isinstance(cell, Cell) else None
        endpoints = describe_endpoints(type(instance)) if instance is not None else ()
        record = Service(
            name,
            version,
            dict(metadata or {}),
            endpoints,
            (NodeInfo(self.node.id, self.address, {"path": ref.path}, self.fingerprint),),
        )
        await self.registry.register(record, ttl=self.ttl)
        log.info("registered service %s version %s at %s", name, version, self.address or "(no address)")
        self._served[name] = (record, ref)
        self._service_paths[ref.path] = name
        if instance is not None:
            self.schemas[name] = endpoint_schemas(type(instance))
        self._announce()
        self.node.spawn_system(self._deregister_when_stopped, name, record, ref)
        return ref

    async def _deregister_when_stopped(self, name: str, record: Service, ref: ActorRef) -> None:
        cell = ref.binding
        if isinstance(cell, Cell):
            await cell.stopped_event().wait()
        if self._served.get(name, (None, None))[1] == ref:
            del self._served[name]
            self._service_paths.pop(ref.path, None)
            self.schemas.pop(name, None)
            self._announce()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.registry.deregister(record)
            log.info("deregistered service %s (its actor stopped)", name)

    async def _refresh_registrations(self) -> None:
        """Re-register before the TTL lapses (the registry forgets nodes that stop doing so)."""
        while True:
            await trio.sleep(self.ttl / 3)
            for record, _ in list(self._served.values()):
                try:
                    await self.registry.register(record, ttl=self.ttl)
                except MicroError as exc:
                    log.warning("re-registering %s failed: %s", record.name, exc)
            if not self.announced:
                continue
            try:
                await self.registry.register(self._node_record(), ttl=self.ttl)
            except MicroError as exc:
                log.warning("re-registering node %s failed: %s", self.node.id, exc)

    def _node_record(self) -> Service:
        node = NodeInfo(self.node.id, self.address, {}, self.fingerprint)
        return Service(NODE_SERVICE, "1", {}, (), (node,))

    def accepts(self, info: NodeInfo) -> bool:
        """Whether ``info`` names a node of a cluster this node trusts."""
        return belongs(info, self.clusters)

    def services_digest(self) -> str:
        """``name@version`` of every service served here (gossiped through membership)."""
        return ",".join(f"{name}@{record.version}" for name, (record, _) in sorted(self._served.items()))

    def _announce(self) -> None:
        if self.membership is not None:
            self.membership.services_changed()

    # ---- calling -------------------------------------------------------------------------------

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

    async def _follow_registry(self) -> None:
        """Keep the registry cache current from the backend's watch (new nodes without a refresh)."""
        try:
            async with self.registry.watch() as events:
                async for event in events:
                    self.cache.apply(event)
        except MicroError as exc:  # the cache still refreshes every few seconds
            log.warning("registry watch ended: %s", exc)

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

    async def publish(self, topic: str, body: Any, **options: Any) -> int:
        """Publish on ``topic`` (see :meth:`~trimicro.cluster.broker.PubSub.publish`)."""
        pubsub = self.pubsub
        if options:
            result: int = await pubsub.publish(topic, body, **options)
            return result
        return await pubsub.publish(topic, body)  # type: ignore[no-any-return]  # the hot path

    async def subscribe(self, pattern: str, ref: ActorRef, **options: Any) -> Any:
        """Subscribe the local actor ``ref`` (see :meth:`~trimicro.cluster.broker.PubSub.subscribe`)."""
        return await self.pubsub.subscribe(pattern, ref, **options)

    async def services(self) -> list[Service]:
        """Every service in the registry (with its live nodes) that this node's clusters serve."""
        return in_clusters(await self.registry.list_services(), self.clusters)

    async def describe(self, name: str) -> list[Service]:
        return await self.cache.get_service(name)


if TYPE_CHECKING:  # the Protocols the abstractions declare of their node: a Cluster is each

    def _is_their_host(cluster: Cluster) -> tuple[AuthHost, BrokerHost, MembershipHost, StoreCaller]:
        return cluster, cluster, cluster, cluster


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


@asynccontextmanager
async def start_cluster(
    name: str | None = None,
    *,
    registry: Registry | str | None = None,
    interfaces: Sequence[str] | None = None,
    seeds: Sequence[str] = (),
    store: Store | str | None = None,
    broker: Broker | Callable[[Cluster], Broker] | str | None = None,
    selector: Selector | str | None = None,
    listen: str | None = "127.0.0.1:0",
    home: Path | None = None,
    identity: Identity | None = None,
    membership: bool = True,
    announce: bool = True,
    ttl: float = 30.0,
    strategy: Strategy | None = None,
    retry: RetryPolicy | None = None,
    seed: int | None = None,
    types: TypeRegistry | None = None,
    auth: Auth | str | bool = True,
    auth_refresh: float | None = 5.0,
    audience: str | None = None,
    config_file: str | PathLike[str] | None = None,
    **node_options: Any,
) -> AsyncIterator[Cluster]:
    """Run a cluster node for the duration of the block (see the module docstring).

    ``registry`` defaults to mDNS bound to 127.0.0.1: nothing leaves the machine unless
    ``interfaces`` names the addresses to announce on (``interfaces=["10.0.0.1"]`` is
    ``registry="mdns://10.0.0.1"``; then listen on one of them too). ``seeds`` are
    ``host:port`` addresses of members on other hosts, joined with their members and asked
    again every 2 s (:mod:`trimicro.cluster.membership.seeds`); a ``static://HOST:PORT,...``
    registry adds its seeds to them. See docs/hosts.md. A client-only node (the CLI) passes
    ``listen=None, membership=False, announce=False``. ``types`` names the message classes that
    cross nodes (``start_node``'s ``registry``). Other options go to ``start_node`` (such as
    ``middleware``: the node's, around every call it makes, publishes included, and around
    every handler of its actors; see :mod:`trimicro.actors.middleware`).

    ``auth`` (on by default) authenticates and authorizes every request from another node
    (:mod:`trimicro.cluster.auth`); the rules and revocations are fetched from the ``auth``
    service every ``auth_refresh`` seconds (``None``: never; the rules stay what
    ``cluster.auth.apply`` sets). ``audience`` names the cluster in tokens' ``aud`` claim:
    with one, only tokens meant for it are taken (and its auth service issues such tokens);
    without, tokens that carry an ``aud`` are refused (RFC 7519 4.1.3). Give every node the same.

    ``registry`` and ``store`` (:attr:`Cluster.store`; none by default), and the ``transport``
    and ``codecs`` options of ``start_node``, take an instance or a URL (``"mdns://"``,
    ``"lmdb:///var/lib/app"``, ``codecs="msgpack,json"``): see :mod:`trimicro.cluster.plugins`.
    Left out, each comes from ``$TRIMICRO_REGISTRY``, ``$TRIMICRO_STORE``, ``$TRIMICRO_TRANSPORT``,
    ``$TRIMICRO_CODEC`` if set, else from the ``[plugins]`` table of the config file
    ``config_file`` (else ``$TRIMICRO_CONFIG``; see :func:`trimicro.cluster.plugins.configured`)
    (``store=""``: none even so). What a URL built, the cluster closes. The same order holds
    for ``broker`` and ``auth``: argument, environment, config file, default.

    ``broker`` (:attr:`Cluster.pubsub`) is a :class:`~trimicro.cluster.broker.Broker`, a
    factory called with the :class:`Cluster`, or a URL of the ``trimicro.broker`` group (else
    ``$TRIMICRO_BROKER``, else ``cluster://``: the cluster's own :class:`PubSub`); the cluster
    starts it and closes it. ``auth`` is ``True`` (``$TRIMICRO_AUTH``, else ``jwt://``: the
    cluster's tokens and rules), ``False`` (none), a URL of the ``trimicro.auth`` group or an
    :class:`~trimicro.cluster.auth.Auth`. ``selector`` is a
    :class:`~trimicro.cluster.selector.Selector` or a strategy name (``"random"``, the default,
    ``"roundrobin"``, ``"leastoutstanding"``, ``"hash"``). Each is chosen once, at start.
    """
    from . import plugins

    if isinstance(selector, str) and selector not in STRATEGIES:
        raise plugins.PluginError(f"unknown selector {selector!r}; known: {', '.join(STRATEGIES)}")
    # URLs whose factories take the node are checked before it starts, and loaded after.
    broker_url = None
    if broker is None or isinstance(broker, str):
        broker_url = plugins.require(
            "broker",
            plugins.configured("broker", broker, "cluster://", config_file=config_file) or "cluster://",
        )
    auth_url = None
    if auth is True or (isinstance(auth, str) and auth):
        given = auth if isinstance(auth, str) else None
        chosen = plugins.configured("auth", given, "jwt://", config_file=config_file)
        auth_url = plugins.require("auth", chosen or "jwt://")

    if interfaces and registry is None:
        registry = "mdns://" + ",".join(interfaces)
    chosen_registry, own_registry = plugins.choose("registry", registry, "mdns://", config_file=config_file)
    chosen_store, own_store = plugins.choose("store", store, config_file=config_file)
    registry_: Registry = chosen_registry
    store_: Store | None = chosen_store
    transport, _ = plugins.choose("transport", node_options.pop("transport", None), config_file=config_file)
    if transport is not None:
        node_options["transport"] = transport
    codecs = node_options.pop("codecs", None) or plugins.configured("codec", config_file=config_file)
    if codecs is not None:
        node_options["codecs"] = plugins.codec_set(codecs, types)
    owned: list[Any] = [x for x, own in ((store_, own_store), (registry_, own_registry)) if own]
    body_error: BaseException | None = None  # re-raised as itself, as start_node does
    try:
        async with (
            start_node(
                name, listen=listen, home=home, identity=identity, seed=seed, registry=types, **node_options
            ) as node,
            trio.open_nursery() as nursery,
        ):
            register_node(nursery, node.id)  # its tasks' log records name the node
            cluster = Cluster(
                node,
                registry_,
                nursery,
                ttl=ttl,
                strategy=strategy,
                retry=retry,
                seed=seed,
                selector=selector,
            )
            cluster.store = store_
            add_checks(cluster, membership=membership, announce=announce)
            if auth:  # False, None or "": no auth
                from .auth.default import guard_for

                if auth_url is not None:
                    auth = plugins.load(
                        "auth", auth_url, cluster=cluster, audience=audience, refresh=auth_refresh
                    )
                cluster.authn, cluster.auth = guard_for(cluster, auth, audience=audience)
                node.remote.guard = cluster.auth
                cluster.auth_sync = getattr(cluster.authn, "sync", None)
                if cluster.auth_sync is not None:
                    nursery.start_soon(cluster.auth_sync.run)
            await node.spawn(Describe, cluster.schemas, name=DESCRIBE_NAME)
            if membership:
                all_seeds = [*seeds, *getattr(registry_, "seeds", ())]
                cluster.membership = Membership(cluster, seeds=all_seeds)
                await nursery.start(cluster.membership.run)
            if broker_url is not None:
                cluster.pubsub = plugins.load("broker", broker_url, cluster=cluster)
            elif callable(broker) and (isinstance(broker, type) or not hasattr(broker, "publish")):
                cluster.pubsub = broker(cluster)  # a factory (a class too)
            else:
                cluster.pubsub = broker
            await cluster.pubsub.start()
            if announce:
                await registry_.register(cluster._node_record(), ttl=ttl)
                log.info("node %s announced at %s", cluster.id, cluster.address or "(no address)")
            cluster.announced = announce
            nursery.start_soon(cluster._refresh_registrations)
            nursery.start_soon(cluster._follow_registry)
            try:
                yield cluster
            except BaseException as exc:
                body_error = exc
            finally:
                node.health.state = "stopping"  # not ready while it deregisters and leaves
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for record, _ in list(cluster._served.values()):
                        await registry_.deregister(record)
                    if announce:
                        await registry_.deregister(cluster._node_record())
                    if cluster.membership is not None:
                        cluster.membership.leave()
                    await cluster.pubsub.close()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for opened in owned:
                if hasattr(opened, "aclose"):
                    await opened.aclose()
    if body_error is not None:
        raise body_error
