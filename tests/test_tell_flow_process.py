"""Calls and tells under load, across real OS processes over TCP on 127.0.0.1: an ask ends by
its deadline whatever it waits for (room to send, a connection, its reply)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from procs import Proc, python_process

from trimicro.actors import RequestTimeout, ask, start_node, tell
from trimicro.actors.remote import OUT_HIGH_WATER

PEER = Path(__file__).resolve().parent / "flow_peer.py"

@asynccontextmanager
async def flow_peer(home: Path, name: str) -> AsyncIterator[Proc]:
    async with python_process(str(PEER), str(home), name) as peer:
        with trio.fail_after(30):
            first = await peer.line()
        assert first.startswith("address "), first
        peer.address = first.split(" ", 1)[1]
        yield peer


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
