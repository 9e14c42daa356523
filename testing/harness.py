"""Unit-testing one actor in isolation (Nameko's ``worker_factory`` and ``entrypoint_hook``).

``async with unit(Checkout, stock=FakeRef(replies={"Stock.reserve": 1})) as h:`` starts
a node of its own (no network), replaces what the actor talks to by fakes, spawns the actor,
and gives a :class:`ActorHarness` to drive it:

- ``await h.call("Checkout.buy", {"item": "book"})`` calls a handler by endpoint name with a
  map (structured into the handler's type, as a remote caller's body would be) or a typed body;
  ``await h.ask(Buy("book"))`` by message type; ``await h.tell(...)`` returns once the handler
  has finished, so the test looks at the outcome without sleeping;
- :class:`FakeRef` stands in for another actor: it records every tell and ask it gets and
  answers asks as scripted (a value, a function of the message, or an exception to raise);
  any :class:`FakeRef` among ``unit``'s arguments is spawned first and passed on as its ref;
- ``services={"payments": FakeRef(...)}`` answers the actor's calls by service name
  (``trimicro.cluster.call`` and ``self.context.node.extensions["cluster"].call``), and
  :attr:`ActorHarness.published` records what it publishes (:class:`FakeCluster`);
  ``await h.publish("orders.new", body)`` delivers a message to its subscriptions and returns
  once it has been handled;
- ``await h.advance(30)`` runs 30 s of the actor's timers, in order, in no real time (trio's
  ``MockClock``: pytest-trio's ``autojump_clock`` or ``mock_clock`` fixture).

The actor runs on a real node and its messages take the real paths (mailbox, handler lookup,
body structuring, supervision): what passes here passes for the same reasons in production.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Generic, TypeVar, cast

import attrs
import trio
import trio.testing

from trimicro.actors import Actor, ActorRef, Call, Next, Node, NotFound, ask, open_stream, start_node, tell
from trimicro.actors.lowlevel import Cell
from trimicro.cluster.broker import Message, Subscription
from trimicro.cluster.broker.topics import matches, validate_pattern, validate_subject
from trimicro.cluster.store import MemoryStore, Store

from .probes import DEFAULT_TIMEOUT, Delivery, MessageProbe, Recorder

__all__ = ["ActorHarness", "FakeCluster", "FakeRef", "Published", "Received", "ServiceCall", "unit"]

A = TypeVar("A", bound=Actor)

_names = itertools.count(1)


@attrs.frozen
class Received:
    """A message a :class:`FakeRef` got: ``kind`` is ``"ask"`` or ``"tell"``; ``endpoint`` is
    ``None`` for a message sent by type."""

    kind: str
    endpoint: str | None
    message: Any
    sender: ActorRef | None


async def _answer(script: Any, message: Any) -> Any:
    if isinstance(script, BaseException):
        raise script
    if callable(script) and not isinstance(script, type):
        result = script(message)
        return await result if inspect.isawaitable(result) else result
    return script


class _FakeActor(Actor):
    """The actor behind a :class:`FakeRef`: answers as scripted, records through the class
    middleware (the only place that knows whether a message was asked or told)."""

    fake: ClassVar[FakeRef]

    async def receive(self, message: Any) -> Any:
        fake = type(self).fake
        return await _answer(fake.replies.get(type(message), fake.default), message)


async def _record(call: Call, call_next: Next) -> Any:
    type(call.actor).fake.received.append(Received(call.kind.value, call.endpoint, call.message, call.sender))
    return await call_next(call)


def _endpoint_handler(fake: FakeRef, endpoint: str) -> Callable[[Any, Any], Any]:
    async def handler(self: Any, body: Any) -> Any:
        return await _answer(fake.replies.get(endpoint, fake.default), body)

    return handler


class FakeRef:
    """A stand-in for an actor that the unit under test tells and asks.

    ``replies`` scripts the answers to asks, keyed by endpoint name (``"Payments.charge"``:
    such keys are the endpoints the fake serves, all of one service) or by message type; a
    reply is a value, a function of the message (sync or async) or an exception instance to
    raise (a :class:`~trimicro.actors.MicroError` reaches the asker as that error). Other
    messages get ``default``. Edit :attr:`replies` at any time to change an answer; the set of
    endpoints is fixed once the fake is spawned.
    """

    def __init__(
        self, name: str | None = None, *, replies: Mapping[Any, Any] | None = None, default: Any = None
    ) -> None:
        self.name = name or f"fake-{next(_names)}"
        self.replies: dict[Any, Any] = dict(replies or {})
        self.default = default
        #: Every message received, in order (see :class:`Received`).
        self.received: Recorder[Received] = Recorder(f"message to {self.name}")
        self._ref: ActorRef | None = None

    @property
    def ref(self) -> ActorRef:
        """The fake's ref (it exists once the fake is spawned)."""
        if self._ref is None:
            raise RuntimeError(f"{self.name} is not spawned: pass it to unit() or await fake.spawn(node)")
        return self._ref

    @property
    def tells(self) -> list[Any]:
        """The bodies of the messages told, in order."""
        return [r.message for r in self.received if r.kind == "tell"]

    @property
    def asks(self) -> list[Any]:
        """The bodies of the messages asked, in order."""
        return [r.message for r in self.received if r.kind == "ask"]

    async def wait_tells(self, count: int, *, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        """The bodies of the first ``count`` messages told, once they have arrived (a tell
        returns before its message is handled: wait for it, never sleep)."""
        told = await self.received.wait_count(
            count, lambda r: r.kind == "tell", timeout=timeout, what=f"{count} tells to {self.name}"
        )
        return [r.message for r in told]

    def _actor_class(self) -> type[_FakeActor]:
        endpoints = [k for k in self.replies if isinstance(k, str)]
        services = {e.rpartition(".")[0] for e in endpoints if "." in e}
        if len(services) > 1:
            raise ValueError(f"{self.name}: endpoints of one service only, got {sorted(services)}")
        namespace: dict[str, Any] = {"fake": self, "middleware": (_record,), "__module__": __name__}
        for endpoint in endpoints:
            method = endpoint.rpartition(".")[2]
            if not method.isidentifier() or method.startswith("_"):
                raise ValueError(f"{self.name}: {endpoint!r} is not an endpoint name (Service.method)")
            namespace[method] = _endpoint_handler(self, endpoint)
        namespace["service_name"] = services.pop() if services else "Fake"
        return type(f"Fake_{self.name.replace('-', '_')}", (_FakeActor,), namespace)

    async def spawn(self, node: Node) -> ActorRef:
        """Start the fake on ``node`` under its name; returns its ref."""
        if self._ref is not None:
            raise RuntimeError(f"{self.name} is already spawned")
        self._ref = await node.spawn(self._actor_class(), name=self.name)
        return self._ref

    async def wait_for(
        self, match: Callable[[Any], bool] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Received:
        """The first message received whose body ``match`` accepts (already, or within
        ``timeout`` seconds); else :class:`~.probes.ProbeTimeout` listing what came."""
        return await self.received.wait_for(
            None if match is None else (lambda r: bool(match(r.message))), timeout=timeout
        )


@attrs.frozen
class Published:
    """A message the unit published: ``topic``, ``body`` and the options given."""

    topic: str
    body: Any
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ServiceCall:
    """A call by service name the unit made."""

    service: str
    endpoint: str | None
    body: Any


class FakeCluster:
    """What an actor under :func:`unit` finds as its node's cluster: calls by service name go
    to the fakes in ``services`` (a missing service is :class:`~trimicro.actors.NotFound`, as
    in a cluster that does not serve it), publishes are recorded and delivered to the node's
    own subscribers, ``store`` is a memory store. Actors reach it as a real cluster's
    ``publish``/``subscribe``/``call``/``ask``/``open_stream``/``store``.
    """

    def __init__(self, node: Node, services: Mapping[str, ActorRef], store: Store) -> None:
        self.node = node
        self.services = dict(services)
        self.store = store
        self.published: Recorder[Published] = Recorder("publish")
        self.calls: Recorder[ServiceCall] = Recorder("call by service name")
        #: The subscriptions of the node's actors (see :meth:`subscribe`).
        self.subscriptions: list[Subscription] = []

    @property
    def id(self) -> str:
        """The node's id (as a real cluster's ``id``)."""
        return self.node.id

    def _ref(self, service: str) -> ActorRef:
        ref = self.services.get(service)
        if ref is None:
            raise NotFound(f"service {service} not found (give unit() services={{{service!r}: ...}})")
        return ref

    async def publish(self, topic: str, body: Any, **options: Any) -> int:
        """Record the publish (:attr:`published`) and tell it, as a broker
        :class:`~trimicro.cluster.broker.Message`, to the node's actors subscribed to a
        matching pattern; returns how many were told."""
        validate_subject(topic)
        self.published.append(Published(topic, body, options))
        headers = dict(options.get("headers") or {})
        told = 0
        for sub in list(self.subscriptions):
            if matches(sub.pattern, topic):
                await tell(sub.ref, Message(topic, body, headers, self.node.id))
                told += 1
        await trio.lowlevel.checkpoint()
        return told

    async def subscribe(self, pattern: str, ref: ActorRef, **options: Any) -> Subscription:
        """Subscribe the actor ``ref`` to ``pattern`` (``orders.*``, ``orders.>``); queue
        groups and policies are accepted and ignored (one node, no slow subscribers)."""
        validate_pattern(pattern)
        sub = Subscription(pattern, ref, options.get("queue"))
        self.subscriptions.append(sub)
        await trio.lowlevel.checkpoint()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription made with :meth:`subscribe`."""
        self.subscriptions = [s for s in self.subscriptions if s is not sub]

    async def call(self, service: str, endpoint: str | None, body: Any = None, **options: Any) -> Any:
        """Record the call (:attr:`calls`) and ask the fake serving ``service``."""
        self.calls.append(ServiceCall(service, endpoint, body))
        timeout = options.get("timeout")
        return await ask(self._ref(service), body, endpoint=endpoint, timeout=timeout)

    async def ask(self, service: str, message: Any, **options: Any) -> Any:
        """``call`` by message type."""
        return await self.call(service, None, message, **options)

    @asynccontextmanager
    async def open_stream(
        self, service: str, endpoint: str, request: Any = None, **options: Any
    ) -> AsyncIterator[Any]:
        """Open a stream with ``endpoint`` of the fake serving ``service``."""
        self.calls.append(ServiceCall(service, endpoint, request))
        async with open_stream(self._ref(service), endpoint, request, timeout=options.get("timeout")) as s:
            yield s


class ActorHarness(Generic[A]):
    """One actor under test on a node of its own; made by :func:`unit`."""

    def __init__(self, node: Node, ref: ActorRef, probe: MessageProbe, cluster: FakeCluster) -> None:
        #: The node the actor runs on (spawn more actors on it, read ``node.dead_letters``).
        self.node = node
        #: The actor's ref.
        self.ref = ref
        #: Every message handled by the actors of the node (the unit and the fakes).
        self.probe = probe
        #: The unit's cluster: scripted services, published messages, a memory store.
        self.cluster = cluster

    @property
    def actor(self) -> A:
        """The actor instance (its state, for assertions; a restart replaces it)."""
        cell = self.ref.binding
        if not isinstance(cell, Cell) or cell.instance is None:
            raise RuntimeError(f"{self.ref.path} is not running")
        return cast(A, cell.instance)

    @property
    def published(self) -> list[Published]:
        """What the actor published, in order."""
        return self.cluster.published.items

    async def publish(self, topic: str, body: Any, *, timeout: float = DEFAULT_TIMEOUT) -> list[Delivery]:
        """Publish ``body`` on ``topic`` as another service would, and return once every
        subscribed actor of the node has handled it (their :class:`~.probes.Delivery`\\ s)."""
        before = {id(d) for d in self.probe.deliveries}
        told = await self.cluster.publish(topic, body)

        def ours(d: Delivery) -> bool:
            return (
                id(d) not in before and d.kind == "subscribe" and getattr(d.message, "topic", None) == topic
            )

        found = await self.probe.deliveries.wait_count(
            told, ours, timeout=timeout, what=f"deliveries of {topic}"
        )
        return [await d.finished(timeout) for d in found]

    @property
    def handled(self) -> list[Delivery]:
        """The messages the actor handled, in order (timer ticks included)."""
        return self.probe.to(self.ref)

    async def call(self, endpoint: str, body: Any = None, **options: Any) -> Any:
        """Ask the handler of ``endpoint`` (``"Counter.add"``) with ``body``: a map is
        structured into the handler's type as a caller's JSON would be. Options go to ``ask``."""
        return await ask(self.ref, body, endpoint=endpoint, **options)

    async def ask(self, message: Any, **options: Any) -> Any:
        """Ask the handler chosen by the type of ``message``."""
        return await ask(self.ref, message, **options)

    async def tell(
        self, message: Any, *, endpoint: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Delivery:
        """Tell ``message`` and wait until the handler has finished with it; the
        :class:`~.probes.Delivery` says what it returned or raised (a tell's caller never
        sees it otherwise)."""
        before = {id(d) for d in self.handled}
        await tell(self.ref, message, endpoint=endpoint)

        def ours(d: Delivery) -> bool:
            if id(d) in before or d.path != self.ref.path or d.kind != "tell":
                return False
            return d.endpoint == endpoint if endpoint is not None else d.message is message

        delivery = await self.probe.deliveries.wait_for(
            ours, timeout=timeout, what=f"tell to {self.ref.path}"
        )
        return await delivery.finished(timeout)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of trio time pass, every timer and sleep due in them firing in order,
        then return once the node is idle. Needs trio's ``MockClock`` (pytest-trio's
        ``autojump_clock`` or ``mock_clock`` fixture); takes no real time."""
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, trio.testing.MockClock):
            raise RuntimeError("advance() needs trio's MockClock: use pytest-trio's autojump_clock fixture")
        threshold = clock.autojump_threshold
        clock.autojump_threshold = 0
        try:
            await trio.sleep(seconds)
        finally:
            clock.autojump_threshold = threshold
        await trio.testing.wait_all_tasks_blocked()

    async def settle(self) -> None:
        """Return once every task of the test's trio run is blocked (the node is idle)."""
        await trio.testing.wait_all_tasks_blocked()


def _fakes(values: Any) -> list[FakeRef]:
    return [v for v in values if isinstance(v, FakeRef)]


def _ref_of(value: Any) -> Any:
    return value.ref if isinstance(value, FakeRef) else value


@asynccontextmanager
async def unit(
    factory: Callable[..., A],
    *args: Any,
    name: str | None = None,
    services: Mapping[str, FakeRef | ActorRef] | None = None,
    store: Store | None = None,
    node_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[ActorHarness[A]]:
    """Run the actor ``factory(*args, **kwargs)`` alone on a node for the block.

    Any :class:`FakeRef` among ``args``, ``kwargs`` and ``services`` is spawned first and
    replaced by its ref (the actor's constructor gets an :class:`~trimicro.actors.ActorRef`).
    ``services`` answers calls by service name; ``store`` (a fresh
    :class:`~trimicro.cluster.store.MemoryStore` by default) is the cluster's store;
    ``node_options`` go to :func:`~trimicro.actors.start_node`. ``name`` is the actor's name
    (the class name in lower case by default). Everything stops at the end of the block.
    """
    options = dict(node_options or {})
    probe = MessageProbe()
    options["middleware"] = [probe, *options.get("middleware", ())]
    async with start_node(options.pop("name", "unit"), **options) as node:
        for fake in _fakes([*args, *kwargs.values(), *(services or {}).values()]):
            if fake._ref is None:
                await fake.spawn(node)
        refs = {service: _ref_of(v) for service, v in (services or {}).items()}
        cluster = FakeCluster(node, refs, store if store is not None else MemoryStore())
        node.extensions["cluster"] = cluster
        actor_name = name or (factory.__name__.lower() if isinstance(factory, type) else None)
        ref = await node.spawn(
            factory,
            *[_ref_of(a) for a in args],
            name=actor_name,
            **{k: _ref_of(v) for k, v in kwargs.items()},
        )
        yield ActorHarness(node, ref, probe, cluster)
