"""Streams, in one node and across two: items both ways, credit flow control, linked failure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.actors import (
    Actor,
    ActorRef,
    BadRequest,
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
from trimicro.actors.remote import COALESCE_MAX, Unreachable
from trimicro.actors.remote.batching import ItemsBatch, _bin, _items_of, _tells_of
from trimicro.mailbox.envelope import Envelope, Kind, decode_envelope, encode_envelope
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport import InprocTransport


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


@MODES
async def test_an_opener_that_closed_its_side_and_left_ends_a_handler_that_waits_elsewhere(mode: str) -> None:
    """A feed: the opener sends nothing (closes its side at once) and reads what the handler
    pushes when there is news. When it leaves, the handler ends then, not at its next send."""
    async with nodes(mode) as (caller, server):
        probe: dict[str, Any] = {"started": trio.Event(), "ended": trio.Event()}
        await server.spawn(Waiter, probe, name="w")
        async with open_stream(chat_ref(caller, server, "w"), "Waiter.wait") as stream:
            stream.close_send()
            await probe["started"].wait()
        with trio.fail_after(5):
            await probe["ended"].wait()


# ---- a stream's items travel in batches (SYSTEM ``items`` frames) -----------------------------


def _link(a: Node, b: Node) -> Any:
    link = a.remote.peers[b.id].link
    assert link is not None
    return link


async def test_items_queued_together_leave_in_few_frames_in_order() -> None:
    """Items of one stream sent one after the other share frames; items of two streams sent
    alternately still arrive each in its own order."""
    async with nodes("remote") as (a, b):
        await b.spawn(Chat, {}, name="chat")
        link = _link(a, b)
        async with (
            open_stream(a.remote_ref("b", "chat"), "Chat.echo", window=1024) as one,
            open_stream(a.remote_ref("b", "chat"), "Chat.echo", window=1024) as two,
        ):
            assert link.batch_items  # b's hello listed "items"
            sent = link.sent
            for i in range(200):
                await one.send(i)
            assert link.sent - sent < 20  # a few batches (split where send lets others run), not 200
            for i in range(100):
                await one.send(1000 + i)
                await two.send(i)
            one.close_send()
            two.close_send()
            assert [x async for x in one] == [2 * i for i in range(200)] + [
                2 * (1000 + i) for i in range(100)
            ]
            assert [x async for x in two] == [2 * i for i in range(100)]


async def test_a_peer_without_the_items_feature_gets_one_frame_per_item() -> None:
    """An older node ignores ``items`` frames: toward it every item is a STREAM_DATA frame."""
    async with nodes("remote") as (a, b):
        await b.spawn(Chat, {}, name="chat")
        link = _link(a, b)
        async with open_stream(a.remote_ref("b", "chat"), "Chat.echo") as stream:
            link.batch_items = False  # as if b's hello had not listed "items"
            assert not link.items_later(1, "application/msgpack", b"\x01")
            sent = link.sent
            for i in range(100):
                await stream.send(i)
            stream.close_send()
            assert [x async for x in stream] == [2 * i for i in range(100)]
            assert link.sent - sent >= 100


@pytest.mark.parametrize(
    "body",
    [b"\xc1", b"\x90", b"\x91\x01", b"\x81\xa1k\xc4\x00", b"\x91\xc4\x01\xc1"],
    ids=["invalid", "empty", "not-bin", "map", "bad-item"],
)
async def test_a_malformed_items_batch_fails_its_stream_and_the_link_lives(body: bytes) -> None:
    async with nodes("remote") as (a, b):
        probe: dict[str, Any] = {"held": trio.Event(), "ended_event": trio.Event()}
        await b.spawn(Chat, probe, name="chat")
        link = _link(a, b)
        async with open_stream(a.remote_ref("b", "chat"), "Chat.hold") as stream:
            await probe["held"].wait()
            [corr] = [c for c, s in link.streams.items() if s is stream]
            env = Envelope(Kind.SYSTEM, corr, None, None, "items", "application/msgpack", {}, 0, body)
            link.push(encode_envelope(env))
            with trio.fail_after(5):
                await probe["ended_event"].wait()
            assert isinstance(probe["ended"], BadRequest)
            with pytest.raises(BadRequest):
                await stream.receive()  # the opener's end ends too, with the handler's error
        async with open_stream(a.remote_ref("b", "chat"), "Chat.echo") as again:  # same link
            await again.send(4)
            assert await again.receive() == 8
        assert _link(a, b) is link and not link.closed


async def test_items_for_a_stream_that_is_over_are_ignored() -> None:
    async with nodes("remote") as (a, b):
        await b.spawn(Chat, {}, name="chat")
        link = _link(a, b)
        env = Envelope(
            Kind.SYSTEM, 999_999, None, None, "items", "application/msgpack", {}, 0, b"\x91\xc4\x01\x01"
        )
        link.push(encode_envelope(env))
        async with open_stream(a.remote_ref("b", "chat"), "Chat.echo") as stream:
            await stream.send(1)
            assert await stream.receive() == 2
        assert _link(a, b) is link


async def test_a_batch_beyond_the_granted_credit_fails_the_stream_and_stays_bounded() -> None:
    """A broken peer sending more items than it was granted, in one batch: the receiver keeps
    at most its window and ends the stream."""
    async with nodes("remote") as (a, b):
        gate = trio.Event()
        probe: dict[str, Any] = {"gate": gate, "done": trio.Event()}
        await b.spawn(Chat, probe, name="chat")
        link = _link(a, b)
        async with open_stream(a.remote_ref("b", "chat"), "Chat.sink") as stream:
            [corr] = [c for c, s in link.streams.items() if s is stream]
            await trio.testing.wait_all_tasks_blocked()  # the handler is waiting at its gate
            sink: Stream = probe["sink"]
            codec = a.remote.codec
            for i in range(sink.window + 10):  # past the credit, straight onto the link
                assert link.items_later(corr, codec.content_type, codec.encode(i))
            with pytest.raises(BadRequest, match="more items than its credit"):
                with trio.fail_after(5):
                    await stream.receive()
            assert len(sink._items) <= sink.window


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.lists(st.binary(max_size=8), max_size=40).map(msgpack.packb)))
def test_batch_decoders_return_bodies_or_a_clear_error(body: bytes) -> None:
    """Any bytes: the bodies of a well-formed batch, else BadRequest (never another error)."""
    for decode in (_items_of, lambda b: _tells_of(b)[1]):
        try:
            bodies = decode(body)
        except BadRequest:
            continue
        assert all(type(x) is bytes for x in bodies) and 1 <= len(bodies) <= COALESCE_MAX


def test_an_items_batch_decodes_to_what_was_queued() -> None:
    batch = ItemsBatch(7, "application/msgpack")
    parts = [bytes([i % 256]) * i for i in range(300)]
    batch.parts = [_bin(p) for p in parts]
    env = decode_envelope(batch.frame())
    assert (env.kind, env.corr, env.endpoint) == (Kind.SYSTEM, 7, "items")
    assert _items_of(env.body) == parts
