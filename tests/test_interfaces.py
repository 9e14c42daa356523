"""Broker, Auth and Selector: Protocols satisfied by their defaults, chosen once by start_cluster
(an instance, a factory, a URL, a name, $TRIMICRO_BROKER, ``trimicro --broker``)."""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from trimicro.actors import Actor, ActorRef
from trimicro.cluster import plugins
from trimicro.cluster.auth import Account, Auth, JwtAuth, PluggedGuard, Resource, Token
from trimicro.cluster.broker import Broker, Policy, PubSub, Subscription
from trimicro.cluster.cli import main
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MemoryRegistry, NodeInfo, Service
from trimicro.cluster.selector import BreakerSelector, LeastOutstanding, RoundRobin, Selector
from trimicro.mailbox.errors import Forbidden


class Echo(Actor):
    service_name = "Echo"

    async def echo(self, body: Any) -> Any:
        return body

    async def secret(self, body: Any) -> Any:
        return body


class RecordingBroker:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.cluster: Any = None

    async def start(self) -> None:
        self.calls.append(("start",))

    async def publish(
        self,
        topic: str,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        ack: bool = False,
        ack_timeout: float = 5.0,
        max_deliveries: int = 5,
    ) -> int:
        self.calls.append(("publish", topic, body, ack))
        return 7

    async def subscribe(
        self, pattern: str, ref: ActorRef, *, queue: str | None = None, policy: Policy = "block"
    ) -> Subscription:
        self.calls.append(("subscribe", pattern, queue))
        return Subscription(pattern, ref, queue, policy)

    def unsubscribe(self, sub: Subscription) -> None:
        self.calls.append(("unsubscribe", sub.pattern))

    async def close(self) -> None:
        self.calls.append(("close",))


class RecordingSelector:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

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
        self.calls.append(("select", services[0].name, key))
        return services[0].nodes[0]

    def mark(self, node_id: str, error: BaseException | None = None, *, now: float) -> None:
        self.calls.append(("mark", node_id, error))

    def reset(self, node_id: str | None = None) -> None:
        self.calls.append(("reset", node_id))


class RecordingAuth:
    """Grants everything but the endpoint ``Echo.secret``; records what it was asked."""

    def __init__(self) -> None:
        self.verified: list[tuple[str, Resource]] = []

    def inspect(self, token: str) -> Account:
        return Account("someone", "user", "", ())

    def verify(self, account: Account, resource: Resource) -> None:
        self.verified.append((account.id, resource))
        if resource.endpoint == "Echo.secret":
            raise Forbidden("no")

    async def generate(
        self,
        id: str,
        *,
        secret: str | None = None,
        scopes: Collection[str] = (),
        type: str = "user",
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[Account, str]:
        return Account(id, type, "", tuple(scopes)), secret or "s3cret"

    async def token(
        self, *, id: str | None = None, secret: str | None = None, refresh: str | None = None
    ) -> Token:
        return Token("a", "r", 0)


# Typed assignments: mypy checks that the fakes are what start_cluster takes.
_broker: Broker = RecordingBroker()
_selector: Selector = RecordingSelector()
_auth: Auth = RecordingAuth()


def one(tmp_path: Path, **options: Any) -> Any:
    options.setdefault("registry", MemoryRegistry())
    return start_cluster("one", home=tmp_path, membership=False, **options)


async def test_the_defaults_satisfy_the_protocols(tmp_path: Path) -> None:
    async with one(tmp_path) as cluster:
        assert type(cluster.pubsub) is PubSub and cluster.broker is cluster.pubsub
        assert isinstance(cluster.pubsub, Broker)
        assert type(cluster.authn) is JwtAuth and cluster.auth is cluster.authn.guard
        assert cluster.node.remote.guard is cluster.auth and type(cluster.auth) is not PluggedGuard
        assert isinstance(cluster.authn, Auth)
        assert type(cluster.selector) is BreakerSelector and isinstance(cluster.selector, Selector)
        assert cluster.selector.breaker is cluster.breaker


async def test_a_broker_instance_or_factory_is_used_started_and_closed(tmp_path: Path) -> None:
    fake = RecordingBroker()
    async with one(tmp_path, broker=fake) as cluster:
        assert cluster.pubsub is fake and fake.calls == [("start",)]
        assert await cluster.publish("a.b", 1) == 7
        assert await cluster.publish("a.b", 2, ack=True) == 7
    assert fake.calls == [("start",), ("publish", "a.b", 1, False), ("publish", "a.b", 2, True), ("close",)]

    built: list[Any] = []

    def factory(cluster: Any) -> RecordingBroker:
        made = RecordingBroker()
        made.cluster = cluster
        built.append(made)
        return made

    async with one(tmp_path, broker=factory) as cluster:
        assert built[0].cluster is cluster and cluster.pubsub is built[0]
    assert built[0].calls == [("start",), ("close",)]


async def test_the_broker_by_url_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("cluster://", "default://", "cluster"):
        async with one(tmp_path, broker=url) as cluster:
            assert type(cluster.pubsub) is PubSub
    monkeypatch.setenv("TRIMICRO_BROKER", "kafka://127.0.0.1:9092")
    with pytest.raises(plugins.UnknownScheme, match=r"'kafka'.*cluster://.*default://"):
        async with one(tmp_path):
            pass
    async with one(tmp_path, broker="cluster://") as cluster:  # given beats the environment
        assert type(cluster.pubsub) is PubSub


def test_the_cli_takes_broker_before_or_after_the_subcommand(tmp_path: Path) -> None:
    for argv in (
        ["--broker", "kafka://x", "services", "--wait", "0", "--registry", "memory://"],
        ["services", "--wait", "0", "--registry", "memory://", "--broker", "kafka://x"],
    ):
        err = io.StringIO()
        assert main(["--home", str(tmp_path), *argv], io.StringIO(), err) == 2
        assert err.getvalue().startswith("trimicro: no trimicro.broker plugin for scheme 'kafka'")
        assert "cluster://" in err.getvalue()


async def test_a_selector_instance_picks_and_hears_every_call(tmp_path: Path) -> None:
    fake = RecordingSelector()
    async with one(tmp_path, selector=fake) as cluster:
        await cluster.serve(Echo)
        assert await cluster.call("echo", "Echo.echo", 5, key="k") == 5
        assert fake.calls == [("select", "echo", "k"), ("mark", cluster.id, None)]


async def test_a_selector_by_name(tmp_path: Path) -> None:
    async with one(tmp_path, selector="roundrobin") as cluster:
        assert isinstance(cluster.selector.strategy, RoundRobin)
    async with one(tmp_path, selector="leastoutstanding") as cluster:
        strategy = cluster.selector.strategy
        assert isinstance(strategy, LeastOutstanding) and strategy.outstanding is cluster.outstanding
    with pytest.raises(ValueError, match=r"unknown selector 'fastest'.*roundrobin"):
        async with one(tmp_path, selector="fastest"):
            pass


async def test_an_auth_instance_decides_requests_from_other_nodes(tmp_path: Path) -> None:
    fake = RecordingAuth()
    registry = MemoryRegistry()
    async with (
        start_cluster("server", registry=registry, home=tmp_path, membership=False, auth=fake) as server,
        start_cluster("client", registry=registry, home=tmp_path, membership=False, announce=False) as client,
    ):
        assert server.authn is fake and isinstance(server.auth, PluggedGuard)
        assert server.node.remote.guard is server.auth
        await server.serve(Echo)
        assert await client.call("echo", "Echo.echo", 1) == 1
        assert Resource("service", "echo", "Echo.echo") in [r for _, r in fake.verified]
        with pytest.raises(Forbidden):
            await client.call("echo", "Echo.secret", 1)
        assert server.auth.denied == 1
        assert await client.call("echo", "Echo.echo", 2, headers={"authorization": "Bearer t"}) == 2
        assert fake.verified[-1][0] == "someone"  # the token's account came from inspect


async def test_auth_by_url_and_unknown_schemes(tmp_path: Path) -> None:
    async with one(tmp_path, auth="jwt://") as cluster:
        assert type(cluster.authn) is JwtAuth
    async with one(tmp_path, auth=False) as cluster:
        assert cluster.authn is None and cluster.auth is None
    with pytest.raises(plugins.UnknownScheme, match=r"'kerberos'.*jwt://"):
        async with one(tmp_path, auth="kerberos://"):
            pass
