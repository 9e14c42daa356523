"""Cluster nodes in one process: serve and call by name, describe, deregister, membership, gossip."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import Actor, MicroError, NotFound
from trimicro.cluster.cluster import NODE_SERVICE, Cluster, start_cluster
from trimicro.cluster.registry import (
    MemoryRegistry,
    NodeInfo,
    Registry,
    Service,
    StaticRegistry,
    in_clusters,
    merge_nodes,
)
from trimicro.cluster.selector import RetryPolicy
from trimicro.cluster.service import idempotent
from trimicro.mailbox.codec import TypeRegistry
from trimicro.mailbox.logs import RATE_LIMIT
from trimicro.testing import InprocCluster, Serve, wait_converged, wait_member

TYPES = TypeRegistry()


@TYPES.message("test.Hello")
@attrs.frozen
class Hello:
    name: str


class Greeter(Actor):
    service_name = "Greeter"

    async def hello(self, msg: Hello) -> str:
        return f"hello {msg.name} from {self.context.node.id}"

    @idempotent
    async def whoami(self, body: Any) -> str:
        return self.context.node.id

    async def cluster(self, body: Any) -> list[str]:
        """Which node and which cluster answered (node ids repeat across clusters)."""
        return [self.context.node.id, self.context.node.extensions["cluster"].fingerprint]


@asynccontextmanager
async def nodes(n: int, home: Path, registry: Registry | None = None) -> AsyncIterator[list[Cluster]]:
    reg = registry or MemoryRegistry()
    async with AsyncExitStack() as stack:
        clusters = [
            await stack.enter_async_context(
                start_cluster(f"n{i}", registry=reg, home=home, seed=i, types=TYPES)
            )
            for i in range(n)
        ]
        yield clusters


async def test_serve_and_call_by_name_spreads_over_nodes(tmp_path: Path) -> None:
    async with nodes(3, tmp_path) as (a, b, client):
        await a.serve(Greeter, name="greeter", version="1.0")
        await b.serve(Greeter, name="greeter", version="1.0")
        seen = {await client.call("greeter", "Greeter.whoami", {}) for _ in range(40)}
        assert seen == {"n0", "n1"}
        assert (await client.call("greeter", "Greeter.hello", {"name": "Ada"})).startswith("hello Ada from n")
        assert (await client.call("greeter", None, Hello("Bob"))).startswith("hello Bob")  # by type
        assert (await client.ask("greeter", Hello("Cy"))).startswith("hello Cy")  # ask by name


async def test_describe_shows_endpoints_schemas_and_idempotency(trimicro_cluster: InprocCluster) -> None:
    greeter = Serve(Greeter, name="greeter", version="2.1", metadata={"team": "core"})
    await trimicro_cluster.add_node("n0", types=TYPES, services=[greeter])
    [svc] = await trimicro_cluster.client.describe("greeter")
    assert (svc.name, svc.version, svc.metadata) == ("greeter", "2.1", {"team": "core"})
    endpoints = {e.name: e for e in svc.endpoints}
    assert endpoints["Greeter.hello"].request == {"name": "str"}
    assert endpoints["Greeter.hello"].response == {"": "str"}
    assert endpoints["Greeter.whoami"].metadata == {"idempotent": "true"}
    assert [n.id for n in svc.nodes] == ["n0"]


async def test_stopping_a_service_deregisters_it(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    async with nodes(2, tmp_path, registry) as (a, _client):
        async with registry.watch("greeter") as events:
            ref = await a.serve(Greeter, name="greeter")
            assert (await events.__anext__()).type.value == "create"
            await a.node.stop(ref)
            with trio.fail_after(5):
                assert (await events.__anext__()).type.value == "delete"
        with pytest.raises(NotFound):
            await registry.get_service("greeter")


async def test_membership_converges_and_sees_a_leave(trimicro_cluster: InprocCluster) -> None:
    clusters = [trimicro_cluster.client, *[await trimicro_cluster.add_node() for _ in range(2)]]
    await wait_converged(clusters)
    late = await trimicro_cluster.add_node("late")
    await wait_converged([*clusters, late])
    await trimicro_cluster.stop_node(late)
    # "late" left gracefully: everyone marks it LEFT (not dead), promptly
    for c in clusters:
        assert await wait_member(c, "late", "left", timeout=5) == "left"


class OnlyNodes(MemoryRegistry):
    """A registry that forgets every service record except nodes': discovery by gossip only."""

    async def register(self, service: Service, ttl: float | None = None) -> None:
        if service.name == NODE_SERVICE:
            await super().register(service, ttl)


async def test_a_new_service_is_callable_through_gossip(tmp_path: Path) -> None:
    async with nodes(3, tmp_path, OnlyNodes()) as (a, b, client):
        await wait_converged([a, b, client])
        await b.serve(Greeter, name="greeter")
        with trio.fail_after(5):
            while True:
                try:
                    assert await client.call("greeter", "Greeter.whoami", {}) == "n1"
                    break
                except NotFound:
                    await client.membership.wait_changed()


def test_merge_keeps_the_described_record_and_all_nodes() -> None:
    from trimicro.cluster.registry import Endpoint, NodeInfo, merge_nodes

    described = Service("s", "1", {"k": "v"}, (Endpoint("S.x"),), (NodeInfo("a", "h:1"),))
    gossiped = Service("s", "1", nodes=(NodeInfo("b", "h:2"),))
    for records in ([described, gossiped], [gossiped, described]):
        [merged] = merge_nodes(records)
        assert merged.endpoints == (Endpoint("S.x"),)
        assert {n.id for n in merged.nodes} == {"a", "b"}


async def test_call_of_an_endpoint_no_node_offers_is_a_clear_404(tmp_path: Path) -> None:
    async with nodes(2, tmp_path) as (a, client):
        await a.serve(Greeter, name="greeter")
        with pytest.raises(NotFound, match=r"offers Greeter\.nope"):
            await client.call("greeter", "Greeter.nope", {})


async def test_the_cache_follows_the_registry_watch(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    async with nodes(3, tmp_path, registry) as (a, b, client):
        await a.serve(Greeter, name="greeter")
        assert await client.call("greeter", "Greeter.whoami", {}) == "n0"  # cached now (5 s TTL)
        async with registry.watch("greeter") as events:
            await b.serve(Greeter, name="greeter")
            await events.__anext__()
        await trio.testing.wait_all_tasks_blocked()
        [svc] = await client.cache.get_service("greeter")
        assert {n.id for n in svc.nodes} == {"n0", "n1"}  # without waiting out the TTL


def test_merge_never_puts_two_clusters_nodes_in_one_record() -> None:
    from trimicro.cluster.registry import Endpoint

    ours = Service("s", "1", endpoints=(Endpoint("S.x"),), nodes=(NodeInfo("n0", "h:1", cluster="a" * 32),))
    theirs = Service("s", "1", endpoints=(Endpoint("S.y"),), nodes=(NodeInfo("n0", "h:2", cluster="b" * 32),))
    merged = merge_nodes([ours, theirs])
    assert sorted(merged, key=lambda s: s.nodes[0].address) == [ours, theirs]


async def test_two_clusters_on_one_registry_never_call_list_or_join_each_other(tmp_path: Path) -> None:
    """Two clusters (two homes, so two authorities) announce the same services from the same
    node ids in one registry, as two copies of the examples on one machine do. Each side calls,
    lists and joins only its own nodes and never dials the other's: one attempt per call, so a
    dial refused by the handshake would fail the call."""
    registry = MemoryRegistry()
    async with nodes(2, tmp_path / "a", registry) as side_a, nodes(2, tmp_path / "b", registry) as side_b:
        for node in (*side_a, *side_b):
            await node.serve(Greeter, name="greeter")
        assert len(await registry.get_service("greeter")) == 2  # one record per cluster
        for own, home in ((side_a, tmp_path / "a"), (side_b, tmp_path / "b")):
            fingerprint = own[0].fingerprint
            addresses = {c.address for c in own}
            async with start_cluster(
                "client",
                registry=registry,
                home=home,
                membership=False,
                announce=False,
                retry=RetryPolicy(attempts=1),
                types=TYPES,
            ) as client:
                assert client.fingerprint == fingerprint
                answers = {tuple(await client.call("greeter", "Greeter.cluster", {})) for _ in range(40)}
                assert answers == {("n0", fingerprint), ("n1", fingerprint)}
                [greeter] = await client.describe("greeter")
                assert {n.address for n in greeter.nodes} == addresses
                listed = {s.name: {n.address for n in s.nodes} for s in await client.services()}
                assert listed == {"greeter": addresses, NODE_SERVICE: addresses}
            await wait_converged(list(own))
            for node in own:
                assert {m.address for m in node.membership.swim.members()} == addresses  # none joined


async def test_a_node_never_polls_another_clusters_auth_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cluster without an auth service beside one that has it: the rules fetch finds no auth
    service of its own (the defaults hold, silently) instead of warning, every refresh, that the
    other cluster's refused the handshake."""
    from trimicro.cluster.auth import AUTH_SERVICE, AuthService
    from trimicro.cluster.store import MemoryStore
    from trimicro.mailbox.secure.identity import dev_authority

    caplog.set_level(logging.WARNING, logger="trimicro")
    registry = MemoryRegistry()
    async with (
        start_cluster("theirs", registry=registry, home=tmp_path / "b") as other,
        start_cluster("ours", registry=registry, home=tmp_path / "a") as ours,
    ):
        key = dev_authority(tmp_path / "b").signing_key
        await other.serve(AuthService, MemoryStore(), key, name=AUTH_SERVICE)
        before = (ours.auth.epoch, ours.auth.version)
        await ours.auth_sync.sync_once()
        assert (ours.auth.epoch, ours.auth.version) == before
    assert [r.getMessage() for r in caplog.records] == []


async def test_a_record_that_names_no_cluster_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A seed built as ``NodeInfo(id, address)`` (no cluster) is not dialed by a node that
    knows its cluster: the call is a 404, and the log says why (a few times at most: the
    package logger's rate limit holds the repeats back). Before: the 404 alone, nothing logged."""
    caplog.set_level(logging.WARNING, logger="trimicro")
    seed = NodeInfo("seed1", f"127.0.0.1:{closed_port()}")
    static = StaticRegistry([Service("greeter", nodes=(seed,))])
    async with start_cluster(
        "client", registry=static, home=tmp_path, membership=False, announce=False, types=TYPES
    ) as client:
        for _ in range(20):
            with pytest.raises(NotFound):
                await client.call("greeter", "Greeter.whoami", {})
            client.cache._entries.clear()  # asked again: the record is seen again
    warned = [r.getMessage() for r in caplog.records if "names no cluster" in r.getMessage()]
    assert 1 <= len(warned) <= RATE_LIMIT.burst and "seed1" in warned[0], warned
    assert RATE_LIMIT.suppressed >= 20 - RATE_LIMIT.burst


def test_the_warnings_about_records_without_a_cluster_are_bounded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records come from a shared medium: however many name no cluster, a burst is logged,
    then one per interval that counts those held back. A record of another cluster (two
    clusters on one machine) is normal, and not logged."""
    now = [0.0]
    monkeypatch.setattr(RATE_LIMIT, "clock", lambda: now[0])
    caplog.set_level(logging.WARNING, logger="trimicro")
    ours, theirs = "a" * 32, "b" * 32
    for i in range(50):
        nodes = (NodeInfo(f"x{i}", "127.0.0.1:1"), NodeInfo(f"o{i}", "127.0.0.1:1", cluster=theirs))
        assert in_clusters([Service("s", nodes=nodes)], {ours}) == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == RATE_LIMIT.burst and all("names no cluster" in m for m in messages), messages
    assert "x0" in messages[0] and not any(f"o{i} " in m for i in range(50) for m in messages)
    now[0] += RATE_LIMIT.interval
    in_clusters([Service("s", nodes=(NodeInfo("x50", "127.0.0.1:1"),))], {ours})
    last = caplog.records[-1]
    assert "x50" in last.getMessage()
    assert last.getMessage().endswith(f"(suppressed {50 - RATE_LIMIT.burst} similar)")


class Unwatched(MemoryRegistry):
    """A backend without watch events: a cache learns of a change only when it asks."""

    @asynccontextmanager
    async def watch(self, service: str | None = None) -> AsyncIterator[AsyncIterator[Any]]:
        send, receive = trio.open_memory_channel[Any](0)
        async with send, receive:
            yield receive


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_retry_that_finds_the_service_gone_raises_the_failure_not_404(tmp_path: Path) -> None:
    """Every node the cache named failed, and the registry, asked again, no longer has the
    service (its node deregistered meanwhile): the caller gets the node's failure (503), not
    a 404 that says the service never existed. Before: ``service greeter not found``."""
    registry = Unwatched()
    async with start_cluster(
        "client", registry=registry, home=tmp_path, membership=False, announce=False, types=TYPES
    ) as client:
        dead = NodeInfo("dead", f"127.0.0.1:{closed_port()}", {}, client.fingerprint)
        await registry.register(Service("greeter", nodes=(dead,)))
        assert [n.id for s in await client.describe("greeter") for n in s.nodes] == ["dead"]  # cached
        await registry.deregister(Service("greeter", nodes=(dead,)))
        with pytest.raises(MicroError) as failed:
            await client.call("greeter", "Greeter.whoami", {}, timeout=5)
        assert failed.value.code == 503, failed.value


async def test_a_retry_looks_for_other_nodes_before_going_back_to_one_that_failed(tmp_path: Path) -> None:
    """The cache answers from memory for seconds; when every node it named has failed this
    call, the retry asks the registry again and finds the node that came up meanwhile,
    instead of dialing the dead one again and again."""
    registry = Unwatched()
    async with (
        nodes(1, tmp_path, registry) as (live,),
        start_cluster(
            "client", registry=registry, home=tmp_path, membership=False, announce=False, types=TYPES
        ) as client,
    ):
        dead = NodeInfo("dead", f"127.0.0.1:{closed_port()}", {}, client.fingerprint)
        await registry.register(Service("greeter", nodes=(dead,)))
        assert [n.id for s in await client.describe("greeter") for n in s.nodes] == ["dead"]  # cached
        await live.serve(Greeter, name="greeter")
        assert await client.call("greeter", "Greeter.whoami", {}) == "n0"
