"""Streams, in one node and across two: items both ways, credit flow control, linked failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trimicro.actors import (
    Actor,
    ActorRef,
    Conflict,
    MicroError,
    Node,
    NotFound,
    ServiceUnavailable,
    Stream,
    StreamClosed,
    open_stream,
    start_node,
)
from trimicro.actors.remote import Unreachable
from trimicro.mailbox.identity import Authority, NodeIdentity
from trimicro.mailbox.inproc import InprocTransport


class Chat(Actor):
    service_name = "Chat"

    def __init__(self, probe: dict[str, Any]) -> None:
        self.probe = probe

    async def echo(self, stream: Stream) -> None:
        async for item in stream:
            await stream.send(item * 2)

    async def produce(self, stream: Stream) -> None:
        for i in range(stream.request["n"]):
            await stream.send(i)

    async def sink(self, stream: Stream) -> None:
        """Reads nothing until the test opens the gate, then everything."""
        self.probe["sink"] = stream
        await self.probe["gate"].wait()
        self.probe["got"] = [item async for item in stream]
        self.probe["done"].set()

    async def boom(self, stream: Stream) -> None:
        await stream.receive()
        raise Conflict("not today")

    async def first_only(self, stream: Stream) -> None:
        await stream.send(await stream.receive())

    async def hold(self, stream: Stream) -> None:
        """Waits for items forever; records how its stream ended."""
        self.probe["held"].set()
        try:
            async for _ in stream:
                pass
        except MicroError as exc:
            self.probe["ended"] = exc
            self.probe["ended_event"].set()
            raise


@asynccontextmanager
async def nodes(mode: str) -> AsyncIterator[tuple[Node, Node]]:
    """(caller node, server node): the same node for "local", two linked nodes for "remote"."""
    if mode == "local":
        async with start_node("solo") as node:
            yield node, node
        return
    authority = Authority.generate()
    tr = InprocTransport()
    async with (
        start_node("a", listen="a", transport=tr, identity=NodeIdentity.issue("a", authority)) as a,
        start_node("b", listen="b", transport=tr, identity=NodeIdentity.issue("b", authority)) as b,
    ):
        await a.connect("b")
        yield a, b


def chat_ref(caller: Node, server: Node, name: str = "chat") -> ActorRef:
    return caller.remote_ref(server.id, name)


MODES = pytest.mark.parametrize("mode", ["local", "remote"])


@MODES
async def test_items_flow_both_ways_and_end_explicitly(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        await server.spawn(Chat, {}, name="chat")
        async with open_stream(chat_ref(caller, server), "Chat.echo") as stream:
            got: list[int] = []
            async with trio.open_nursery() as nursery:

                async def reader() -> None:
                    got.extend([item async for item in stream])

                nursery.start_soon(reader)
                for i in range(500):
                    await stream.send(i)
                stream.close_send()
            assert got == [2 * i for i in range(500)]


@MODES
async def test_request_and_one_way_production(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        await server.spawn(Chat, {}, name="chat")
        async with open_stream(chat_ref(caller, server), "Chat.produce", {"n": 300}, window=8) as stream:
            assert [item async for item in stream] == list(range(300))


@MODES
async def test_slow_reader_stalls_the_writer_at_the_window(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        gate = trio.Event()
        probe: dict[str, Any] = {"gate": gate, "done": trio.Event()}
        await server.spawn(Chat, probe, name="chat")
        sent = 0
        async with (
            open_stream(chat_ref(caller, server), "Chat.sink") as stream,
            trio.open_nursery() as nursery,
        ):

            async def writer() -> None:
                nonlocal sent
                for i in range(1000):
                    await stream.send(i)
                    sent += 1
                stream.close_send()

            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            sink: Stream = probe["sink"]
            assert sent == sink.window  # exactly the granted credit, then the writer waits
            assert len(sink._items) <= sink.window  # memory stays bounded
            gate.set()
        with trio.fail_after(5):
            await probe["done"].wait()
        assert probe["got"] == list(range(1000))


@MODES
async def test_handler_error_reaches_the_opener_typed(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        await server.spawn(Chat, {}, name="chat")
        async with open_stream(chat_ref(caller, server), "Chat.boom") as stream:
            await stream.send(1)
            with pytest.raises(Conflict) as info:
                await stream.receive()
        assert (info.value.code, info.value.detail, info.value.id) == (409, "not today", "Chat")


@MODES
async def test_unknown_stream_endpoint_is_refused_at_open(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        await server.spawn(Chat, {}, name="chat")
        with pytest.raises(NotFound):
            async with open_stream(chat_ref(caller, server), "Chat.nope"):
                pass


@MODES
async def test_opener_leaving_cancels_the_handler_side(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        probe: dict[str, Any] = {"held": trio.Event(), "ended_event": trio.Event()}
        await server.spawn(Chat, probe, name="chat")
        async with open_stream(chat_ref(caller, server), "Chat.hold") as stream:
            await stream.send(1)
            await probe["held"].wait()
        with trio.fail_after(5):
            await probe["ended_event"].wait()
        assert isinstance(probe["ended"], StreamClosed)


@MODES
async def test_handler_actor_stopping_ends_the_opener_with_503(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        probe: dict[str, Any] = {"held": trio.Event(), "ended_event": trio.Event()}
        ref = await server.spawn(Chat, probe, name="chat")
        async with open_stream(chat_ref(caller, server), "Chat.hold") as stream:
            await probe["held"].wait()
            await server.stop(ref)
            with pytest.raises(ServiceUnavailable):
                await stream.receive()


@MODES
async def test_handler_finishing_early_stops_the_sender(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        await server.spawn(Chat, {}, name="chat")
        async with open_stream(chat_ref(caller, server), "Chat.first_only") as stream:
            await stream.send(7)
            assert await stream.receive() == 7
            with pytest.raises(trio.EndOfChannel):
                await stream.receive()
            with pytest.raises(StreamClosed):
                for i in range(1000):  # more than any credit: the send must fail, not hang
                    await stream.send(i)


async def test_link_loss_ends_streams_on_both_sides() -> None:
    async with nodes("remote") as (a, b):
        probe: dict[str, Any] = {"held": trio.Event(), "ended_event": trio.Event()}
        await b.spawn(Chat, probe, name="chat")
        async with open_stream(a.remote_ref("b", "chat"), "Chat.hold") as stream:
            await probe["held"].wait()
            for link in list(a.remote.peers["b"].links):
                await link.conn.inner.aclose()
            with pytest.raises(Unreachable):
                await stream.receive()
        with trio.fail_after(5):
            await probe["ended_event"].wait()
        assert isinstance(probe["ended"], ServiceUnavailable)


async def test_many_streams_share_a_link_and_a_stalled_one_blocks_no_other() -> None:
    async with nodes("remote") as (a, b):
        gate = trio.Event()
        probe: dict[str, Any] = {"gate": gate, "done": trio.Event()}
        await b.spawn(Chat, probe, name="stalled")
        await b.spawn(Chat, {}, name="chat")
        async with open_stream(a.remote_ref("b", "stalled"), "Chat.sink") as stalled:
            for i in range(64):  # fill the stalled stream's window
                await stalled.send(i)
            results: dict[int, list[int]] = {}

            async def one(k: int) -> None:
                async with open_stream(a.remote_ref("b", "chat"), "Chat.produce", {"n": 200}) as s:
                    results[k] = [item async for item in s]

            async with trio.open_nursery() as nursery:
                for k in range(20):
                    nursery.start_soon(one, k)
            assert results == {k: list(range(200)) for k in range(20)}
            link = a.remote.peers["b"].link
            assert link is not None and len(a.remote.peers["b"].links) == 1
            assert list(link.streams.values()) == [stalled]  # finished streams are forgotten
            gate.set()
            stalled.close_send()


class Waiter(Actor):
    """A stream handler that waits on something other than its stream."""

    def __init__(self, probe: dict[str, Any]) -> None:
        self.probe = probe

    async def wait(self, stream: Stream) -> None:
        self.probe["started"].set()
        try:
            await trio.sleep_forever()
        finally:
            self.probe["ended"].set()


@MODES
async def test_a_cancelled_stream_ends_a_handler_that_waits_elsewhere(mode: str) -> None:
    async with nodes(mode) as (caller, server):
        probe: dict[str, Any] = {"started": trio.Event(), "ended": trio.Event()}
        await server.spawn(Waiter, probe, name="w")
        async with open_stream(chat_ref(caller, server, "w"), "Waiter.wait"):
            await probe["started"].wait()
        with trio.fail_after(5):
            await probe["ended"].wait()
