"""A cluster node: an actor node plus a registry, membership, and calls to services by name.

``async with start_cluster("n1") as cluster:`` starts a node that listens on loopback, announces
itself in the registry (mDNS on 127.0.0.1 by default), joins the membership (SWIM over the
nodes' secure links), and on exit deregisters its services, leaves the membership and stops.

- ``await cluster.serve(Greeter, name="greeter", version="1.0")`` spawns the service actor and
  registers it (name, version, metadata, endpoints with their schemas, this node); it is
  deregistered when the actor stops or the cluster exits.
- ``await cluster.call("greeter", "Greeter.hello", {"name": "Ada"})`` resolves the service through
  the registry cache, selects a node, asks it, and retries on another node when the failure
  allows it (:mod:`.client`, Go Micro's client; a :class:`Cluster` is a :class:`~.client.Client`).

Every record this node announces names its cluster (the fingerprint of the authority that
certified it), and every lookup keeps only nodes of clusters this node trusts: another cluster
serving the same names on the same machine is invisible, instead of a node that fails the
handshake (see :mod:`trimicro.cluster.registry`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trimicro.actors import ActorRef, Node, Restart, start_node
from trimicro.actors.lowlevel import Cell, Identity, register_node
from trimicro.mailbox.codec import TypeRegistry
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.logs import get_logger

from .auth.guard import fetch_state
from .client import Client, call
from .health import add_checks
from .introspect import DESCRIBE_NAME, Describe, endpoint_schemas
from .membership import Membership
from .metrics import Exports, check_options, start_exports
from .registry import (
    NODE_SERVICE,
    NodeInfo,
    Registry,
    Service,
    belongs,
    in_clusters,
)
from .selector import (
    STRATEGIES,
    RetryPolicy,
    Selector,
    Strategy,
)
from .service import describe_endpoints

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


class Cluster(Client):
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
        super().__init__(node, registry, strategy=strategy, retry=retry, seed=seed, selector=selector)
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
        #: What this node exports of its metrics (:mod:`trimicro.cluster.metrics`): ``address``
        #: is where ``/metrics`` is served, if it is.
        self.metrics: Exports | None = None
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

    async def _follow_registry(self) -> None:
        """Keep the registry cache current from the backend's watch (new nodes without a refresh)."""
        try:
            async with self.registry.watch() as events:
                async for event in events:
                    self.cache.apply(event)
        except MicroError as exc:  # the cache still refreshes every few seconds
            log.warning("registry watch ended: %s", exc)

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
    metrics: bool | str = False,
    meter_provider: Any = None,
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

    ``metrics=True`` counts requests, errors and latency per endpoint (the node's other counts
    are always kept); ``metrics="127.0.0.1:9464"`` also serves them for Prometheus at
    ``http://127.0.0.1:9464/metrics`` (``cluster.metrics.address``; port 0 picks one), and
    ``meter_provider`` (an OpenTelemetry ``MeterProvider``) gets them as instruments. See
    :mod:`trimicro.cluster.metrics` and docs/observability.md.
    """
    from . import plugins

    check_options(metrics)
    if metrics or meter_provider is not None:
        node_options["metrics"] = True
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
            cluster.metrics = await start_exports(
                cluster, nursery, metrics=metrics, meter_provider=meter_provider
            )
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
                    cluster.metrics.close()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for opened in owned:
                if hasattr(opened, "aclose"):
                    await opened.aclose()
    if body_error is not None:
        raise body_error
