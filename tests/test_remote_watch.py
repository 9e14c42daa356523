"""Death watch from other nodes, on the watched side: bounded, cleaned up, only the peer's own,
and connections that never finish their handshake are capped (real processes where the
failure was seen across processes: a hostile peer flooding a node)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import test_remote
import trio
import trio.testing
from procs import Proc, python_process
from test_remote import REGISTRY, Counter, Get, pair
from watch_peer import TARGETS

from trimicro.actors import ActorRef, Node, Terminated, TooManyRequests, ask, cell, lifecycle, start_node
from trimicro.actors.remote.watch import MAX_REMOTE_WATCHES
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.secure.identity import Authority, NodeIdentity

WATCH_PEER = Path(__file__).resolve().parent / "watch_peer.py"
MiB = 1 << 20
#: ``start_node``'s documented default for ``max_handshakes``.
DEFAULT_MAX_HANDSHAKES = 256


class Watcher(test_remote.Watcher):
    """Watches the ref it is sent; unwatches ``{"ref": ref}``."""

    async def unwatch(self, body: dict[str, ActorRef]) -> None:
        self.context.unwatch(body["ref"])


@asynccontextmanager
async def watch_peer(home: Path) -> AsyncIterator[Proc]:
    """The node ``victim`` in its own process (see tests/watch_peer.py)."""
    async with python_process(str(WATCH_PEER), str(home), "victim") as peer:
        with trio.fail_after(30):
            first = await peer.line()
        assert first.startswith("address "), first
        peer.address = first.split(" ", 1)[1]
        yield peer


def watch_frame(target: ActorRef, watcher: ActorRef, op: str = "watch") -> bytes:
    return encode_envelope(Envelope(Kind.SYSTEM, 0, target, watcher, op))


# ---- the flood, across processes -----------------------------------------------------------------

FLOOD = 200_000  # watch frames from one peer, as in the report
PACE = 10_000  # frames between two round trips: the flooding peer reads its answers


async def _flood(hostile: Node, frames: int, targets: int) -> None:
    """``frames`` watch frames from ``hostile`` (each for another watcher), spread over the
    victim's first ``targets`` actors, reading a round trip every :data:`PACE` frames."""
    link = hostile.remote.peer("victim").link
    assert link is not None
    names = TARGETS[:targets]
    ping = hostile.remote_ref("victim", "target")
    for i in range(frames):
        target = ActorRef("victim", f"/user/{names[i % targets]}", 0)
        await link.send(watch_frame(target, ActorRef("hostile", f"/temp/w{i}", i + 1)))
        if i % PACE == PACE - 1:  # (on the same link: after the watches before it)
            assert await ask(ping, {}, endpoint="Target.ping", timeout=60) == "pong"


async def test_a_watch_flood_is_capped_per_peer_and_all_of_it_goes_with_the_link(tmp_path: Path) -> None:
    """A peer sends 200,000 ``watch`` frames (each for another watcher, spread over five
    actors): the node keeps MAX_REMOTE_WATCHES of them (the peer's cap: below what the five
    actors' own caps would let in) and refuses the rest, and when the link closes every one
    goes: the watcher sets and the bindings are back to their baseline, and so is the memory,
    within what the allocators keep. Twice: a second flood from the same node (a new link) is
    capped and cleaned the same, nothing adds up.

    Before: 200,000 watchers (+101 MiB) during, 134,464 (+83 MiB) after the link closed."""
    assert len(TARGETS) * cell.MAX_REMOTE_WATCHERS > MAX_REMOTE_WATCHES  # the peer's cap is what binds
    async with watch_peer(tmp_path) as peer, start_node("observer", home=tmp_path) as observer:
        await observer.connect(peer.address)
        probe = observer.remote_ref("victim", "probe")
        base = await ask(probe, {}, endpoint="Probe.stats")
        for _ in range(2):
            async with start_node("hostile", home=tmp_path) as hostile:
                await hostile.connect(peer.address)
                await _flood(hostile, FLOOD, len(TARGETS))
                during = await ask(
                    hostile.remote_ref("victim", "probe"), {}, endpoint="Probe.stats", timeout=60
                )
                assert during["watchers"] == MAX_REMOTE_WATCHES
                assert during["rss"] - base["rss"] < 64 * MiB  # (65,536 watchers: about 36 MiB)
            gone = await ask(probe, {"node": "hostile"}, endpoint="Probe.gone", timeout=60)
            assert gone["watchers"] == 0
            assert gone["remote_actors"] == base["remote_actors"]
            assert gone["rss"] - base["rss"] < 40 * MiB  # (8-16 MiB here: arenas kept for reuse)
        assert await ask(observer.remote_ref("victim", "target"), {}, endpoint="Target.ping") == "pong"


async def test_a_peers_watches_of_one_actor_leave_room_for_local_watchers(tmp_path: Path) -> None:
    """A peer floods ONE actor with more watches than an actor may have watchers: it gets
    ``cell.MAX_REMOTE_WATCHERS`` of them, and an actor of the watched node can still watch it.

    Before: the peer's 65,536 watches filled the actor's set, and every local
    ``context.watch`` of it was refused with 429."""
    async with watch_peer(tmp_path) as peer, start_node("hostile", home=tmp_path) as hostile:
        await hostile.connect(peer.address)
        await _flood(hostile, cell.MAX_WATCHERS + PACE, 1)
        probe = hostile.remote_ref("victim", "probe")
        during = await ask(probe, {}, endpoint="Probe.stats", timeout=60)
        assert during["each"][0] == cell.MAX_REMOTE_WATCHERS < cell.MAX_WATCHERS
        assert await ask(probe, {}, endpoint="Probe.watch") == "ok"


# ---- unauthenticated connections, across processes ---------------------------------------------


async def _dial_raw(address: str) -> socket.socket:
    """A TCP connection that sends nothing (a handshake never started), non-blocking."""
    host, port = address.rsplit(":", 1)
    sock = socket.socket()
    sock.setblocking(False)
    sock.connect_ex((host, int(port)))
    await trio.lowlevel.wait_writable(sock)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    return sock


def _open(sock: socket.socket) -> bool:
    """Whether the peer has not closed ``sock`` (nothing to read, no end of stream)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


async def test_connections_that_never_finish_the_handshake_are_capped(tmp_path: Path) -> None:
    """The node in the other process holds 256 connections in their handshake (it gives each
    60 s); the next one is closed at once, while the 256 stay open and an established link
    goes on serving. Once they are gone, new nodes connect again."""
    async with watch_peer(tmp_path) as peer, start_node("client", home=tmp_path) as client:
        await client.connect(peer.address)  # established before the idle connections
        probe = client.remote_ref("victim", "probe")
        idle = [await _dial_raw(peer.address) for _ in range(DEFAULT_MAX_HANDSHAKES)]
        extra = await _dial_raw(peer.address)  # accepted after them (the accept queue is FIFO)
        try:
            with trio.fail_after(20):  # (well before the 60 s its handshake would be given)
                await trio.lowlevel.wait_readable(extra)
            assert not _open(extra)
            assert all(_open(sock) for sock in idle)
            assert await ask(probe, {}, endpoint="Probe.handshakes") == DEFAULT_MAX_HANDSHAKES
            assert await ask(client.remote_ref("victim", "target"), {}, endpoint="Target.ping") == "pong"
        finally:
            for sock in (*idle, extra):
                sock.close()
        with trio.fail_after(20):
            while await ask(probe, {}, endpoint="Probe.handshakes"):  # each a round trip, no sleep
                pass
        async with start_node("late", home=tmp_path) as late:
            await late.connect(peer.address)
            assert await ask(late.remote_ref("victim", "target"), {}, endpoint="Target.ping") == "pong"


async def test_max_handshakes_is_a_node_option() -> None:
    with pytest.raises(ValueError, match="max_handshakes"):
        async with start_node("n", max_handshakes=0):
            pass
    async with start_node("n", max_handshakes=3) as node:
        assert node.remote.max_handshakes == 3
    async with start_node("n") as node:
        assert node.remote.max_handshakes == DEFAULT_MAX_HANDSHAKES


# ---- watches of one peer, in one process ---------------------------------------------------------


async def _terminated(receive: trio.MemoryReceiveChannel[Terminated]) -> Terminated:
    with trio.fail_after(5):
        return await receive.receive()


async def test_beyond_a_peers_cap_a_watch_is_refused_with_429_and_the_watcher_told() -> None:
    async with pair(Authority.generate()) as (a, b, _):
        b.remote.max_watches = 2
        for name in ("t1", "t2", "t3"):
            await b.spawn(Counter, name=name)
        send, receive = trio.open_memory_channel[Terminated](10)
        watcher = await a.spawn(Watcher, send, name="watcher")
        watching = b.remote.peer("a").watching
        for name in ("t1", "t2"):
            await ask(watcher, a.remote_ref("b", name))
        with trio.fail_after(5):  # (each watch is sent by a task of its own: in any order)
            while len(watching) < 2:
                await trio.testing.wait_all_tasks_blocked()
        await ask(watcher, a.remote_ref("b", "t3"))
        got = await _terminated(receive)
        assert got.ref.path == "/user/t3"
        assert got.reason == "watch refused: 429 more than 2 watches from node a"
        # The two within the cap hold: a stop is told as usual.
        await b.stop(b.ref("t1"))
        got = await _terminated(receive)
        assert got.ref.path == "/user/t1" and got.reason is None
        assert len(watching) == 1  # the stopped actor's watch left the count


async def test_an_actor_has_a_bounded_number_of_watchers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "MAX_WATCHERS", 2)
    async with pair(Authority.generate()) as (a, b, _):
        target = await b.spawn(Counter, name="t")
        send, receive = trio.open_memory_channel[Terminated](10)
        local = [await b.spawn(Watcher, send) for _ in range(2)]
        for w in local:
            await ask(w, target)
        third = await b.spawn(Watcher, send)
        with pytest.raises(TooManyRequests):
            await ask(third, target)  # the local watch fails in the watching actor's handler
        remote = await a.spawn(Watcher, send, name="remote")
        await ask(remote, a.remote_ref("b", "t"))
        got = await _terminated(receive)
        assert got.reason is not None and got.reason.startswith("watch refused: 429 ")
        assert not b.remote.peer("a").watching  # a refused watch is not counted
        await ask(local[0], {"ref": target}, endpoint="Watcher.unwatch")
        await ask(remote, a.remote_ref("b", "t"))  # room again
        await ask(a.remote_ref("b", "t"), Get())  # same link, after the watch
        assert len(b.remote.peer("a").watching) == 1
        await b.stop(target)
        assert {(await _terminated(receive)).reason for _ in range(2)} == {None}


async def test_a_peer_can_neither_undo_nor_take_over_another_nodes_watch() -> None:
    """Refs are equal whatever their binding: a watcher ref of node ``a`` sent by node ``c``
    used to take ``a``'s place (the notice went to ``c``), and ``c``'s unwatch undid ``a``'s."""
    authority = Authority.generate()
    async with (
        pair(authority) as (a, b, address),
        start_node(
            "c", transport=b.remote.transport, identity=NodeIdentity.issue("c", authority), registry=REGISTRY
        ) as c,
    ):
        await c.connect(address)
        link = c.remote.peer("b").link
        assert link is not None
        t1 = await b.spawn(Counter, name="t1")
        t2 = await b.spawn(Counter, name="t2")
        send, receive = trio.open_memory_channel[Terminated](10)
        watcher = await a.spawn(Watcher, send, name="watcher")
        # c names a's watcher first: it must not be the entry a's own watch finds there.
        link.push(watch_frame(ActorRef("b", "/user/t1", 0), watcher))
        await ask(c.remote_ref("b", "t1"), Get())  # same link, after it
        await ask(watcher, a.remote_ref("b", "t1"))
        await ask(watcher, a.remote_ref("b", "t2"))
        await ask(a.remote_ref("b", "t1"), Get())  # a's watches have arrived
        link.push(watch_frame(ActorRef("b", "/user/t2", 0), watcher, op="unwatch"))
        await ask(c.remote_ref("b", "t2"), Get())
        await b.stop(t1)
        await b.stop(t2)
        seen = {(await _terminated(receive)).ref.path for _ in range(2)}
        assert seen == {"/user/t1", "/user/t2"}  # both told to a's watcher, through a


async def test_unwatching_leaves_the_watched_node_holding_nothing() -> None:
    """Two local watchers of one remote actor: the peer is sent one watch, naming the first.
    When the first unwatches, the watch moves to the second; when the second does, the peer
    holds nothing (it used to keep the first one's watcher, which the unwatch did not name)."""
    async with pair(Authority.generate()) as (a, b, _):
        target = await b.spawn(Counter, name="t")
        cell_t = b.cells["/user/t"]
        remote_t = a.remote_ref("b", "t")
        send, receive = trio.open_memory_channel[Terminated](10)
        first = await a.spawn(Watcher, send, name="first")
        second = await a.spawn(Watcher, send, name="second")
        await ask(first, remote_t)
        await ask(second, remote_t)
        await ask(remote_t, Get())
        assert cell_t._watchers == {first}
        await ask(first, {"ref": remote_t}, endpoint="Watcher.unwatch")
        await ask(remote_t, Get())
        assert cell_t._watchers == {second}
        await ask(second, {"ref": remote_t}, endpoint="Watcher.unwatch")
        await ask(remote_t, Get())
        assert not cell_t._watchers
        assert not b.remote.peer("a").watching
        # And watching again works as before.
        await ask(second, remote_t)
        await ask(remote_t, Get())
        await b.stop(target)
        got = await _terminated(receive)
        assert got.ref == remote_t and got.reason is None
