"""The flusher takes itself out of the trio run when no link needs it (an installed instrument
costs every scheduler pass) and comes back with the next send that needs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trimicro.actors import Actor, ActorRef, Node, ask, start_node, tell
from trimicro.actors.remote.flusher import IDLE_WAITS
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport.tcp import TcpTransport


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.generate()


class Sum(Actor):
    def __init__(self) -> None:
        self.total = 0

    async def add(self, n: int) -> int:
        self.total += n
        return self.total


@asynccontextmanager
async def _linked(authority: Authority) -> AsyncIterator[tuple[Node, ActorRef]]:
    """Node ``a`` linked over TCP to node ``b``, and the ref of b's ``Sum`` (no busy polling)."""
    options: dict[str, Any] = {"transport": TcpTransport(), "listen": "127.0.0.1:0", "busy_poll": 0}
    async with (
        start_node("a", identity=NodeIdentity.issue("a", authority), **options) as a,
        start_node("b", identity=NodeIdentity.issue("b", authority), **options) as b,
    ):
        await b.spawn(Sum, name="sum")
        await a.connect(b.address or "")
        yield a, a.remote_ref("b", "sum")


async def _idle_passes(n: int) -> None:
    for _ in range(n):
        await trio.lowlevel.checkpoint()  # one scheduler pass, one wait for I/O each


async def test_the_flusher_leaves_the_run_when_idle_and_returns_for_queued_sends(
    authority: Authority,
) -> None:
    async with _linked(authority) as (a, ref):
        flusher = a.remote.flusher
        assert await ask(ref, 1) == 1
        await _idle_passes(IDLE_WAITS + 2)
        assert not flusher.installed  # nothing queued for a while: out of the run
        # Tells and concurrent asks queue frames for the end of the batch: it is back, and they
        # are all sent (none waits for the writer task or a later send).
        for _ in range(10):
            await tell(ref, 1)
        assert flusher.installed
        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(ask, ref, 1)
        assert await ask(ref, 0) == 1 + 10 + 16
        await _idle_passes(IDLE_WAITS + 2)
        assert not flusher.installed


async def test_after_a_step_with_several_answers_the_next_request_waits_for_the_others(
    authority: Authority,
) -> None:
    """The first request in flight leaves in a write of its own, unless the reader's last step
    answered several requests: their callers' next requests follow in the same batch, and all
    of them leave in one write at its end."""
    async with _linked(authority) as (a, ref):
        assert await ask(ref, 1) == 1
        link = a.remote.peer("b").link
        assert link is not None and link.step_answers == 1
        heartbeat = encode_envelope(Envelope(Kind.SYSTEM, endpoint="heartbeat"))
        link.write_at_once(heartbeat)
        assert not link.out  # written at once
        link.step_answers = 2  # as after a step that answered two requests
        link.write_at_once(heartbeat)
        assert link.out == [heartbeat]  # queued: it leaves with the others at the batch's end
        await trio.lowlevel.checkpoint()
        assert not link.out
        assert await ask(ref, 0) == 1
