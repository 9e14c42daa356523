"""Flow control of tells per target actor, across real OS processes over TCP on 127.0.0.1.

A producer on this node floods a slow actor on the peer (10 ms a message, a mailbox of 16) while
this node calls another actor there: the calls must not wait behind the flood, and every tell of
the flood must be accounted for. Also: an ask ends by its deadline whatever it waits for.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from flow_peer import rss_kib, timed_asks
from procs import Proc, python_process

from trimicro.actors import RequestTimeout, ask, start_node, tell
from trimicro.actors.remote import OUT_HIGH_WATER

PEER = Path(__file__).resolve().parent / "flow_peer.py"

#: Bounds of the flood, in count and time.
MAX_FLOOD = 200_000
ASKS = 1000


@asynccontextmanager
async def flow_peer(home: Path, name: str) -> AsyncIterator[Proc]:
    async with python_process(str(PEER), str(home), name) as peer:
        with trio.fail_after(30):
            first = await peer.line()
        assert first.startswith("address "), first
        peer.address = first.split(" ", 1)[1]
        yield peer


@pytest.mark.parametrize("body_size", [100, 16 * 1024, 256 * 1024])
async def test_asks_to_another_actor_pass_a_flooded_slow_actor(tmp_path: Path, body_size: int) -> None:
    """The acceptance run of issue 17: while this node floods the slow actor, 1,000 asks to
    another actor on the same node all succeed, quickly (p99 measured generously here: the
    machine is shared); both nodes' memory stays bounded and every tell is accounted for.
    With tells of 100 B to 256 KiB: credit counted in tells alone let big ones fill the peer's
    backlog bound (and stop its reader) before the window."""
    async with flow_peer(tmp_path, "svc") as peer, start_node("client", home=tmp_path) as node:
        await node.connect(peer.address)
        slow = node.remote_ref("svc", "slow")
        echo = node.remote_ref("svc", "echo")
        control = node.remote_ref("svc", "control")
        assert await ask(echo, 0, endpoint="Echo.ping") == 0
        peer_rss = [await ask(control, None, endpoint="Control.rss")]
        own_rss = [rss_kib()]
        sent = 0
        flooding = trio.Event()
        padding = b"x" * body_size

        async def flood() -> None:
            nonlocal sent
            while sent < MAX_FLOOD:
                await tell(slow, [sent, padding], endpoint="Slow.work")  # (a cancelled one was not sent)
                sent += 1
                if sent == 200:  # far more than the mailbox holds: the actor is backed up
                    flooding.set()

        async with node.dead_letters.subscribe() as letters:
            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood)
                    await flooding.wait()
                    latencies = await timed_asks(echo, control, ASKS, peer_rss, own_rss)
                    nursery.cancel_scope.cancel()
                # Every tell the flood sent reaches the actor (sped up now so that the test ends).
                await ask(control, None, endpoint="Control.fast")
                done = await ask(control, {"n": sent, "timeout": 60}, endpoint="Control.handled", timeout=70)
            own_letters = 0
            while True:
                try:
                    letters.receive_nowait()
                except trio.WouldBlock:
                    break
                own_letters += 1
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"\nflood of {sent} tells of {body_size} B; asks p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms; "
            f"rss peer {peer_rss[0]}->{max(peer_rss)} KiB, own {own_rss[0]}->{max(own_rss)} KiB; "
            f"handled {done['handled']} dead letters peer {done['dead_letters']} own {own_letters}"
        )
        assert len(latencies) == ASKS
        assert p99 < 0.25  # the acceptance figure is 50 ms; see the report for the measured one
        assert done["handled"] + done["dead_letters"] + own_letters == sent
        assert done["handled"] == sent  # nothing was lost on the way
        assert sent > ASKS // 10  # the flood went on during the asks (paced by the actor)
        # Bounded memory: the flood holds at most a window of tells on either side.
        assert max(peer_rss) - peer_rss[0] < 64 * 1024
        assert max(own_rss) - own_rss[0] < 64 * 1024


async def test_an_ask_ends_by_its_deadline_while_it_waits_for_room_to_send(tmp_path: Path) -> None:
    """The peer stops reading (SIGSTOP): tells fill the link's send queue and an ask behind them
    waits for room; it must still end with 408 at its deadline, not when the link dies."""
    async with flow_peer(tmp_path, "svc") as peer, start_node("client", home=tmp_path) as node:
        await node.connect(peer.address)
        echo = node.remote_ref("svc", "echo")
        assert await ask(echo, 0, endpoint="Echo.ping") == 0
        link = node.remote.peer("svc").link
        assert link is not None
        peer.signal(signal.SIGSTOP)
        try:
            async with trio.open_nursery() as nursery:

                async def fill() -> None:
                    for _ in range(2000):  # 125 MiB at most; the queue fills long before
                        await tell(echo, b"x" * 65536, endpoint="Echo.ping")

                nursery.start_soon(fill)
                with trio.fail_after(30):
                    while link.out_bytes < OUT_HIGH_WATER:  # the kernel's buffers are full too
                        await trio.lowlevel.checkpoint()
                started = trio.current_time()
                with pytest.raises(RequestTimeout):
                    await ask(echo, 1, endpoint="Echo.ping", timeout=1)
                assert trio.current_time() - started < 3  # by its deadline (the link lives 10 s)
                nursery.cancel_scope.cancel()
        finally:
            peer.signal(signal.SIGCONT)


async def test_an_ask_ends_by_its_deadline_while_it_connects_or_awaits_its_reply(tmp_path: Path) -> None:
    """The other two waits of an ask: for a connection (the peer is stopped before the secure
    handshake could answer; a second ask waits for that same dial) and for the reply (the link
    is up, the peer stopped): each ends with 408 at its deadline."""
    async with flow_peer(tmp_path, "svc") as peer, start_node("client", home=tmp_path) as node:
        echo = node.remote_ref("svc", "echo")
        node.remote.peer("svc").address = peer.address  # known, not dialed yet
        peer.signal(signal.SIGSTOP)
        try:
            started = trio.current_time()

            async def call(timeout: float) -> None:
                with pytest.raises(RequestTimeout):
                    await ask(echo, 1, endpoint="Echo.ping", timeout=timeout)
                assert trio.current_time() - started < timeout + 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, 1.0)  # dials: the handshake gets no answer
                with trio.fail_after(5):
                    while node.remote.peer("svc")._dialing is None:
                        await trio.lowlevel.checkpoint()
                nursery.start_soon(call, 1.5)  # waits for that dial, which its caller gives up
        finally:
            peer.signal(signal.SIGCONT)
        assert await ask(echo, 2, endpoint="Echo.ping", timeout=10) == 2  # it answers again
        peer.signal(signal.SIGSTOP)
        try:
            started = trio.current_time()
            with pytest.raises(RequestTimeout):
                await ask(echo, 3, endpoint="Echo.ping", timeout=1)
            assert trio.current_time() - started < 2
        finally:
            peer.signal(signal.SIGCONT)
