"""The asyncio bridge of the NATS plugins (no server needed) and NATS names (sans-I/O)."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trimicro.cluster.natsio import Bridge, Inbox, Outbox, bucket_name, escape, unescape
from trimicro.mailbox.errors import RequestTimeout, ServiceUnavailable


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    bridge = Bridge("test")
    bridge.open()
    try:
        yield bridge
    finally:
        await bridge.close()


async def test_a_call_returns_the_result_or_raises_the_error(bridge: Bridge) -> None:
    async def add() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise KeyError("nope")

    assert await bridge.call(add, timeout=5) == 42
    with pytest.raises(KeyError):
        await bridge.call(fail, timeout=5)


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_call_given_up_in_trio_cancels_its_asyncio_task(bridge: Bridge, how: str) -> None:
    started, cancelled = trio.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def forever() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            token.run_sync_soon(cancelled.set)
            raise

    if how == "timeout":
        with pytest.raises(RequestTimeout):
            await bridge.call(forever, timeout=0.2)
    else:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: bridge.call(forever, timeout=60))
            await started.wait()
            nursery.cancel_scope.cancel()
    with trio.fail_after(5):
        await cancelled.wait()


async def test_a_closed_bridge_refuses_calls(bridge: Bridge) -> None:
    await bridge.close()

    async def nothing() -> None:
        pass

    with pytest.raises(ServiceUnavailable):
        await bridge.call(nothing, timeout=1)


async def test_the_outbox_keeps_order_and_makes_a_full_queue_wait_with_a_deadline(bridge: Bridge) -> None:
    sent: list[int] = []
    gate, all_sent = asyncio.Event(), asyncio.Event()

    async def handle(batch: list[int]) -> None:
        await gate.wait()
        sent.extend(batch)
        if len(sent) == 50:
            all_sent.set()

    outbox: Outbox[int] = Outbox(bridge, handle, limit=3)
    for i in range(3):
        await outbox.put(i, timeout=1)
    with pytest.raises(ServiceUnavailable, match="3 messages wait"):
        await outbox.put(3, timeout=0.2)  # the handler holds the batch: no room
    bridge.soon(gate.set)
    for i in range(3, 50):
        await outbox.put(i, timeout=5)

    async def flushed() -> list[int]:
        await all_sent.wait()
        return sent

    assert await bridge.call(flushed, timeout=5) == list(range(50))


async def test_every_waiter_of_a_full_outbox_wakes_when_room_comes(bridge: Bridge) -> None:
    gate = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        await gate.wait()

    outbox: Outbox[int] = Outbox(bridge, handle, limit=1)
    await outbox.put(0, timeout=1)
    done: list[int] = []

    async def put(i: int) -> None:
        await outbox.put(i, timeout=10)
        done.append(i)

    async with trio.open_nursery() as nursery:
        for i in (1, 2):
            nursery.start_soon(put, i)
        await trio.testing.wait_all_tasks_blocked()
        bridge.soon(gate.set)  # room comes: both waiters wake (neither waits out its deadline)
    assert sorted(done) == [1, 2]


async def test_the_inbox_drops_and_counts_what_does_not_fit(bridge: Bridge) -> None:
    got: list[int] = []
    overflowed = trio.Event()
    inbox: Inbox[int] = Inbox(bridge, got.extend, limit=10, overflowed=overflowed.set)

    def push_many() -> None:
        for i in range(25):
            inbox.push(i)

    # The 25 pushes run in one callback of the loop: the batch is handed over at the end of
    # that pump, so exactly the first 10 fit.
    bridge.soon(push_many)
    with trio.fail_after(5):
        await overflowed.wait()
    assert got == list(range(10)) and inbox.dropped == 15


async def test_the_loop_runs_in_trios_thread_with_timers_and_other_threads_hand_overs(bridge: Bridge) -> None:
    trio_thread = threading.get_ident()

    async def where() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.05)  # a timer of the loop: the timer task fires it
        # asyncio's executor hands its result back from another thread (the self-pipe)
        other = await loop.run_in_executor(None, threading.get_ident)
        return threading.get_ident(), other != trio_thread

    assert await bridge.call(where, timeout=5) == (trio_thread, True)
    with pytest.raises(RuntimeError):  # outside of a pump, asyncio sees no running loop
        asyncio.get_running_loop()


async def test_an_asyncio_generator_left_open_is_finalised_by_asyncio(bridge: Bridge) -> None:
    closed = asyncio.Event()

    async def numbers() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            await asyncio.sleep(0)  # needs asyncio: trio's finaliser could not run this
            closed.set()

    async def first() -> int:
        return await anext(numbers())  # dropped unfinished: garbage once this returns

    assert await bridge.call(first, timeout=5) == 1
    gc.collect()
    await bridge.call(closed.wait, timeout=5)


async def test_concurrent_calls_each_get_their_own_result(bridge: Bridge) -> None:
    async def echo(i: int) -> int:
        await asyncio.sleep(0.001 * (i % 3))
        return i

    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await bridge.call(lambda: echo(i), timeout=5)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    assert results == {i: i for i in range(50)}


@given(st.text())
def test_escaped_names_are_one_nats_token_and_come_back(text: str) -> None:
    token = escape(text)
    assert re.fullmatch(r"[-/_=a-zA-Z0-9]+", token)
    assert unescape(token) == text


def test_readable_names_stay_readable_and_bucket_names_are_valid() -> None:
    assert escape("user/1") == "user/1" and escape("a.b") == "a=2Eb" and escape("") == "="
    names = {bucket_name("t", "db", "a/b"), bucket_name("t", "db", "a_b"), bucket_name("t", "db/a", "b")}
    assert len(names) == 3 and all(re.fullmatch(r"[-_a-zA-Z0-9]+", n) for n in names)
