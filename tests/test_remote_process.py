"""Remote actors across real OS processes over TCP on 127.0.0.1: calls, errors, death, trust."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from procs import Proc, python_process

from trimicro.actors import (
    Actor,
    ActorRef,
    MicroError,
    NotFound,
    Terminated,
    Unauthorized,
    ask,
    start_node,
    tell,
)
from trimicro.actors.remote import Unreachable

PEER = Path(__file__).resolve().parent / "peer_node.py"


@asynccontextmanager
async def peer_process(home: Path, name: str, *dial: str) -> AsyncIterator[Proc]:
    async with python_process(str(PEER), str(home), name, *dial) as peer:
        with trio.fail_after(30):
            first = await peer.line()
        assert first.startswith("address "), first
        peer.address = first.split(" ", 1)[1]
        yield peer


class Watcher(Actor):
    def __init__(self, seen: trio.MemorySendChannel[Terminated]) -> None:
        self.seen = seen

    async def watch(self, ref: ActorRef) -> None:
        self.context.watch(ref)

    async def on_terminated(self, msg: Terminated) -> None:
        self.seen.send_nowait(msg)


async def test_calls_errors_and_sigkill_mid_call(tmp_path: Path) -> None:
    async with peer_process(tmp_path, "svc") as peer, start_node("client", home=tmp_path) as node:
        assert await node.connect(peer.address) == "svc"
        echo = node.remote_ref("svc", "echo")
        for k in range(10):
            await tell(echo, {"k": k}, endpoint="Echo.add")
        assert await ask(echo, {"k": 0}, endpoint="Echo.add") == 45  # tells arrived, in order
        with pytest.raises(NotFound) as info:
            await ask(echo, {"why": "gone"}, endpoint="Echo.fail")
        assert (info.value.code, info.value.detail, info.value.id) == (404, "gone", "Echo")

        send, receive = trio.open_memory_channel[Terminated](4)
        watcher = await node.spawn(Watcher, send, name="watcher")
        await ask(watcher, echo)

        failure: list[MicroError] = []

        async def slow_call() -> None:
            try:
                await ask(echo, {"seconds": 60}, endpoint="Echo.sleep", timeout=30)
            except MicroError as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_call)
            with trio.fail_after(10):
                assert await peer.line() == "sleeping"
            killed_at = trio.current_time()
            peer.signal(signal.SIGKILL)
        assert trio.current_time() - killed_at < 3.0  # prompt, not the 30 s timeout
        assert isinstance(failure[0], Unreachable), failure
        with trio.fail_after(5):
            gone = await receive.receive()
        assert gone.ref == echo and gone.reason is not None and "unreachable" in gone.reason
        with pytest.raises(Unreachable):
            await ask(echo, {"k": 1}, endpoint="Echo.add", timeout=5)


async def test_sigstopped_peer_is_dropped_after_silence(tmp_path: Path) -> None:
    async with (
        peer_process(tmp_path, "svc") as peer,
        start_node("client", home=tmp_path, keepalive=0.25, dead_after=1.5) as node,
    ):
        await node.connect(peer.address)
        echo = node.remote_ref("svc", "echo")
        assert await ask(echo, {"k": 2}, endpoint="Echo.add") == 2
        peer.signal(signal.SIGSTOP)
        stopped_at = trio.current_time()
        with pytest.raises(Unreachable, match="no traffic"):
            await ask(echo, {"k": 1}, endpoint="Echo.add", timeout=20)
        assert trio.current_time() - stopped_at < 5.0
        peer.signal(signal.SIGCONT)
        # Resumed: it is reachable again. The call that failed had already been written to the
        # socket, so the peer may still have run it: "unreachable" means "may have happened".
        await node.connect(peer.address)
        assert await ask(echo, {"k": 1}, endpoint="Echo.add", timeout=5) in (3, 4)


async def test_a_restarted_peer_replaces_its_stale_link_at_once(tmp_path: Path) -> None:
    """The old process hangs (SIGSTOP: its socket stays open) and a new run of the same node
    dials in: traffic moves to the new link at once, not after ``dead_after`` of silence."""
    async with (
        start_node("a", listen="127.0.0.1:0", home=tmp_path, dead_after=30) as node,
        peer_process(tmp_path, "svc") as old,
    ):
        await node.connect(old.address)  # "a" dials: the link both sides would prefer
        echo = node.remote_ref("svc", "echo")
        assert await ask(echo, {"k": 2}, endpoint="Echo.add") == 2
        seen_send, seen = trio.open_memory_channel[Terminated](4)
        watcher = await node.spawn(Watcher, seen_send)
        await ask(watcher, echo, endpoint="Watcher.watch")
        old.signal(signal.SIGSTOP)
        try:
            assert node.address is not None
            async with peer_process(tmp_path, "svc", node.address):
                peer = node.remote.peer("svc")
                with trio.fail_after(10):
                    while len(peer.links) != 1 or peer.link is None or peer.link.initiator:
                        await peer.wait_changed()
                assert await ask(echo, {"k": 5}, endpoint="Echo.add", timeout=5) == 5  # the new run
                with trio.fail_after(5):  # the old run's actor is gone, and its watcher hears so
                    gone = await seen.receive()
                assert "restarted" in (gone.reason or "")
        finally:
            old.signal(signal.SIGCONT)


async def test_node_of_another_authority_is_refused(tmp_path: Path) -> None:
    async with (
        peer_process(tmp_path / "one", "svc") as peer,
        start_node("client", home=tmp_path / "two") as node,
    ):
        with pytest.raises(Unauthorized):
            await node.connect(peer.address)
