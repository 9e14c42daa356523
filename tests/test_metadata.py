"""Metadata propagation: headers of a request being served travel on the calls its handler makes,
through local and remote hops alike, save hop-by-hop ones; the caller's own headers win; a node
option restricts the rest; publish carries them to subscribers (docs/protocol.md §3.5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trimicro.actors import Actor, ActorRef, Node, Stream, ask, open_stream, start_node, tell
from trimicro.actors.metadata import (
    AUTHORIZATION,
    HOP_HEADERS,
    MAX_PROPAGATED,
    MAX_PROPAGATED_BYTES,
    propagate,
)
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport import TcpTransport

#: What a CLI call sends: a trace id and a tenant to propagate, and hop-by-hop keys that must not.
INBOUND = {
    "x-trace-id": "trace-1",
    "x-tenant": "acme",
    "credit": "7",
    "timeout": "3",
    "content-type": "text/plain",
    ":authority": "gateway",
    "trimicro-hop": "1",
}
PROPAGATED = {"x-trace-id": "trace-1", "x-tenant": "acme"}


class Sink(Actor):
    """Actor C, on the second node: shows what metadata reached it."""

    service_name = "Sink"

    def __init__(self, seen: trio.MemorySendChannel[dict[str, str]]) -> None:
        self.seen = seen

    async def look(self, body: dict[str, Any]) -> dict[str, str]:
        return self.context.headers

    async def note(self, body: dict[str, Any]) -> None:
        self.seen.send_nowait(self.context.headers)


class Middle(Actor):
    """Actor B, local to A: calls C on the other node, with the caller's explicit headers."""

    service_name = "Middle"

    def __init__(self, sink: ActorRef) -> None:
        self.sink = sink

    async def look(self, body: dict[str, Any]) -> dict[str, str]:
        result: dict[str, str] = await ask(
            self.sink, body, endpoint="Sink.look", headers=body.get("explicit")
        )
        return result

    async def note(self, body: dict[str, Any]) -> None:
        await tell(self.sink, body, endpoint="Sink.note")

    async def watch(self, stream: Stream) -> None:
        await stream.send(stream.headers)


class Front(Actor):
    """Actor A: reached by the CLI-style call, hands over to B on its own node."""

    service_name = "Front"

    def __init__(self, middle: ActorRef) -> None:
        self.middle = middle

    async def look(self, body: dict[str, Any]) -> dict[str, str]:
        result: dict[str, str] = await ask(self.middle, body, endpoint="Middle.look")
        return result

    async def note(self, body: dict[str, Any]) -> None:
        await tell(self.middle, body, endpoint="Middle.note")

    async def streamed(self, body: dict[str, Any]) -> dict[str, str]:
        async with open_stream(self.middle, "Middle.watch") as stream:
            result: dict[str, str] = await stream.receive()
            return result


@asynccontextmanager
async def chain(
    authority: Authority, **a_options: Any
) -> AsyncIterator[tuple[Node, ActorRef, trio.MemoryReceiveChannel[dict[str, str]]]]:
    """Node ``a`` holds A and B, node ``b`` holds C; returns a third node (the caller, as the CLI
    is) and A's ref as that caller sees it. Every hop after the first is a nested call."""
    transport = TcpTransport()
    send, receive = trio.open_memory_channel[dict[str, str]](16)

    def start(name: str, **kw: Any) -> Any:
        identity = NodeIdentity.issue(name, authority)
        return start_node(name, listen="127.0.0.1:0", transport=transport, identity=identity, **kw)

    async with start("a", **a_options) as a, start("b") as b, start("cli") as cli:
        assert a.address is not None and b.address is not None
        await a.connect(b.address)
        await cli.connect(a.address)
        await b.spawn(Sink, send, name="sink")
        middle = await a.spawn(Middle, a.remote_ref("b", "sink"), name="middle")
        await a.spawn(Front, middle, name="front")
        yield cli, cli.remote_ref("a", "front"), receive


@pytest.fixture
def authority() -> Authority:
    return Authority.generate()


async def test_trace_id_follows_a_local_then_a_remote_hop(authority: Authority) -> None:
    async with chain(authority) as (_, front, _seen):
        got = await ask(front, {}, endpoint="Front.look", headers=INBOUND)
        assert got == PROPAGATED  # CLI -> A (node a) -> B (local) -> C (node b); no hop-by-hop key


async def test_a_tell_chain_carries_it_too(authority: Authority) -> None:
    async with chain(authority) as (_, front, seen):
        await tell(front, {}, endpoint="Front.note", headers=INBOUND)
        with trio.fail_after(10):
            assert await seen.receive() == PROPAGATED


async def test_a_local_stream_opened_while_serving_carries_it(authority: Authority) -> None:
    async with chain(authority) as (_, front, _seen):
        got = await ask(front, {}, endpoint="Front.streamed", headers=INBOUND)
        assert got == PROPAGATED


async def test_headers_the_caller_passes_win(authority: Authority) -> None:
    async with chain(authority) as (_, front, _seen):
        got = await ask(
            front, {"explicit": {"x-trace-id": "mine", "credit": "2"}}, endpoint="Front.look", headers=INBOUND
        )
        assert got == {"x-trace-id": "mine", "x-tenant": "acme", "credit": "2"}


async def test_authorization_travels_whatever_the_rule(authority: Authority) -> None:
    async with chain(authority, propagate_headers=()) as (_, front, _seen):
        got = await ask(front, {}, endpoint="Front.look", headers={**INBOUND, AUTHORIZATION: "Bearer t"})
        assert got == {AUTHORIZATION: "Bearer t"}  # the empty allow-list: today's behaviour


async def test_a_node_restricts_propagation_by_allow_list(authority: Authority) -> None:
    async with chain(authority, propagate_headers={"x-trace-id", "credit"}) as (_, front, _seen):
        got = await ask(front, {}, endpoint="Front.look", headers=INBOUND)
        assert got == {"x-trace-id": "trace-1"}  # x-tenant not allowed; credit is hop-by-hop anyway


async def test_a_node_restricts_propagation_by_predicate(authority: Authority) -> None:
    async with chain(authority, propagate_headers=lambda key: key != "x-tenant") as (_, front, _seen):
        got = await ask(front, {}, endpoint="Front.look", headers=INBOUND)
        assert got == {"x-trace-id": "trace-1"}


async def test_a_bad_rule_is_refused_at_start() -> None:
    with pytest.raises(TypeError, match="collection of keys"):
        async with start_node(propagate_headers="x-trace-id"):
            pass


class Publisher(Actor):
    service_name = "Publisher"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def emit(self, body: dict[str, Any]) -> int:
        return await self.cluster.publish("orders", body)


class Collector(Actor):
    def __init__(self, got: trio.MemorySendChannel[Message]) -> None:
        self.got = got

    async def on_message(self, msg: Message) -> None:
        self.got.send_nowait(msg)


async def test_publish_carries_it_to_subscribers(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    send, receive = trio.open_memory_channel[Message](4)
    async with AsyncExitStack() as stack:
        n0, n1 = [
            await stack.enter_async_context(start_cluster(f"n{i}", registry=registry, home=tmp_path))
            for i in range(2)
        ]
        await n1.subscribe("orders", await n1.node.spawn(Collector, send))
        with trio.fail_after(10):
            while not any(p == "orders" for p, _, _ in n0.pubsub.remote_interest.get("n1", [])):
                await n0.pubsub.wait_interest()
        publisher = await n0.node.spawn(Publisher, n0)
        assert await ask(publisher, {}, endpoint="Publisher.emit", headers=INBOUND) == 1
        with trio.fail_after(10):
            msg = await receive.receive()
        assert msg.headers == PROPAGATED


keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-:", min_size=1, max_size=12)
maps = st.dictionaries(keys, st.text(max_size=200), max_size=64)


@given(maps, st.one_of(st.none(), maps))
def test_propagation_rule(inbound: dict[str, str], explicit: dict[str, str] | None) -> None:
    out = propagate(inbound, explicit)
    if out is None:
        assert explicit is None
        return
    for key, value in (explicit or {}).items():
        assert out[key] == value  # the caller's own headers win
    carried = {k: v for k, v in out.items() if not explicit or k not in explicit}
    for key, value in carried.items():
        assert inbound[key] == value
        assert key not in HOP_HEADERS and not key.startswith((":", "trimicro-"))
    rest = {k: v for k, v in carried.items() if k != AUTHORIZATION}
    assert len(rest) <= MAX_PROPAGATED
    assert sum(len(k.encode()) + len(v.encode()) for k, v in rest.items()) <= MAX_PROPAGATED_BYTES
