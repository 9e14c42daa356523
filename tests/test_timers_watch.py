"""Death watch and actor timers (driven by MockClock)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import Actor, ActorRef, Node, Terminated, ask, start_node
from trimicro.testing import terminations, wait_terminated


@attrs.frozen
class Tick:
    n: int = 0


@attrs.frozen
class Watch:
    ref: ActorRef


@attrs.frozen
class Start:
    kind: str
    delay: float
    key: str | None = None


@attrs.frozen
class Cancel:
    key: str


class Idle(Actor):
    async def tick(self, msg: Tick) -> None:
        pass


class Watcher(Actor):
    def __init__(self, got: list[Terminated], event: trio.Event) -> None:
        self.got = got
        self.event = event

    async def watch(self, msg: Watch) -> None:
        self.context.watch(msg.ref)

    async def terminated(self, msg: Terminated) -> None:
        self.got.append(msg)
        self.event.set()


async def test_watch_delivers_terminated_on_stop(trimicro_node: Node) -> None:
    target = await trimicro_node.spawn(Idle, name="target")
    async with terminations(trimicro_node, target) as stopped:
        assert len(stopped) == 0
        await trimicro_node.stop(target, "bye")
        assert await stopped.wait_for() == Terminated(target, "bye")
        await trio.testing.wait_all_tasks_blocked()
        assert len(stopped) == 1  # once


async def test_watch_already_stopped_delivers_at_once(trimicro_node: Node) -> None:
    target = await trimicro_node.spawn(Idle)
    await trimicro_node.stop(target)
    terminated = await wait_terminated(trimicro_node, target)
    assert (terminated.ref, terminated.reason) == (target, "already stopped")


async def test_unwatch_no_notice() -> None:
    async with start_node() as node:
        got: list[Terminated] = []
        ev = trio.Event()
        target = await node.spawn(Idle)
        watcher = await node.spawn(Watcher, got, ev)
        await ask(watcher, Watch(target))
        watcher.binding.context.unwatch(target)
        await node.stop(target)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []


class Ticker(Actor):
    def __init__(self, ticks: list[tuple[float, int]]) -> None:
        self.ticks = ticks

    async def start(self, msg: Start) -> None:
        if msg.kind == "after":
            self.context.send_after(msg.delay, Tick(1), key=msg.key)
        else:
            self.context.every(msg.delay, Tick(2), key=msg.key)

    async def cancel(self, msg: Cancel) -> None:
        self.context.cancel_timer(msg.key)

    async def tick(self, msg: Tick) -> None:
        self.ticks.append((trio.current_time(), msg.n))


async def test_send_after(autojump_clock: Any) -> None:
    ticks: list[tuple[float, int]] = []
    async with start_node() as node:
        ref = await node.spawn(Ticker, ticks)
        t0 = trio.current_time()
        await ask(ref, Start("after", 5.0))
        await trio.sleep(4.9)
        assert ticks == []
        await trio.sleep(0.2)
        assert [(round(t - t0, 6), n) for t, n in ticks] == [(5.0, 1)]
        await trio.sleep(100)
        assert len(ticks) == 1


async def test_every_and_stop_cancels(autojump_clock: Any) -> None:
    ticks: list[tuple[float, int]] = []
    async with start_node() as node:
        ref = await node.spawn(Ticker, ticks)
        t0 = trio.current_time()
        await ask(ref, Start("every", 2.0))
        await trio.sleep(7.0)
        assert [round(t - t0, 6) for t, _ in ticks] == [2.0, 4.0, 6.0]
        assert len(ref.binding.timers()) == 1
        async with node.dead_letters.subscribe() as dl:
            await node.stop(ref)
            await trio.sleep(20.0)
            assert len(ticks) == 3
            with pytest.raises(trio.WouldBlock):
                dl.receive_nowait()
        assert len(node.timers) == 0


async def test_cancel_timer_by_key_and_rekey(autojump_clock: Any) -> None:
    ticks: list[tuple[float, int]] = []
    async with start_node() as node:
        ref = await node.spawn(Ticker, ticks)
        t0 = trio.current_time()
        await ask(ref, Start("every", 1.0, key="k"))
        await ask(ref, Start("after", 3.0, key="once"))
        await trio.sleep(2.5)
        await ask(ref, Cancel("k"))
        await trio.sleep(10.0)
        assert [(round(t - t0, 6), n) for t, n in ticks] == [(1.0, 2), (2.0, 2), (3.0, 1)]
        # starting a timer with an existing key replaces it
        ticks.clear()
        t1 = trio.current_time()
        await ask(ref, Start("after", 5.0, key="r"))
        await ask(ref, Start("after", 1.0, key="r"))
        await trio.sleep(10.0)
        assert [(round(t - t1, 6), n) for t, n in ticks] == [(1.0, 1)]
        assert ref.binding.timers() == set()


async def test_timeout_wheel_never_early_at_most_one_bucket_late(autojump_clock: Any) -> None:
    from trimicro.actors.timers import TimeoutWheel

    class Entry:
        def __init__(self) -> None:
            self.at: float | None = None

        def expire(self) -> None:
            self.at = trio.current_time()

    wheel = TimeoutWheel(resolution=0.01)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wheel.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        entries = {delay: Entry() for delay in (0.5, 0.013, 2.0, 0.2)}
        slots = {delay: wheel.add(start + delay, e) for delay, e in entries.items()}
        removed = Entry()
        wheel.remove(wheel.add(start + 0.1, removed), removed)
        wheel.remove(slots[2.0], entries[2.0])
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    for delay, entry in entries.items():
        if delay == 2.0:
            assert entry.at is None
            continue
        assert entry.at is not None
        assert start + delay <= entry.at <= start + delay + 0.01 + 1e-9
    assert removed.at is None
    assert len(wheel) == 0


async def test_timeout_wheel_wakes_only_for_buckets_that_hold_something(autojump_clock: Any) -> None:
    """Asks answered long before their deadlines leave empty buckets behind: the wheel's task
    does not wake for them (it used to, once per bucket, for as long as the deadlines spanned)."""
    from trimicro.actors.timers import TimeoutWheel

    class Entry:
        def __init__(self) -> None:
            self.at: float | None = None

        def expire(self) -> None:
            self.at = trio.current_time()

    class Steps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.wheel = 0

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.wheel += task.name == "wheel"

    wheel = TimeoutWheel(resolution=0.01)
    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wheel.run, name="wheel")
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            first, last = Entry(), Entry()
            wheel.add(start + 0.005, first)  # the wheel sleeps until this one's bucket
            for i in range(200):  # 200 asks, each answered at once, a bucket each
                entry = Entry()
                wheel.remove(wheel.add(start + 0.02 + i * 0.01, entry), entry)
            wheel.add(start + 3.0, last)
            await trio.testing.wait_all_tasks_blocked()
            before = steps.wheel
            await trio.sleep(4)
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert first.at is not None and last.at is not None
    assert start + 3.0 <= last.at <= start + 3.01 + 1e-9
    assert steps.wheel - before <= 3  # first's bucket, last's, and the cancellation
