"""Supervision trees: strategies, restart types, intensity, escalation, backoff, stop order."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import (
    Actor,
    Backoff,
    ChildSpec,
    InternalServerError,
    Restart,
    ServiceUnavailable,
    Strategy,
    Supervisor,
    SupervisorStrategy,
    ask,
    start_node,
    tell,
)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@attrs.frozen
class Crash:
    pass


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class Quit:
    pass


class Worker(Actor):
    def __init__(self, log: list[str], tag: str) -> None:
        self.log = log
        self.tag = tag
        self.pings = 0

    async def started(self) -> None:
        self.log.append(f"start:{self.tag}")

    async def stopping(self) -> None:
        self.log.append(f"stop:{self.tag}")

    async def crash(self, msg: Crash) -> None:
        raise RuntimeError(f"crash {self.tag}")

    async def ping(self, msg: Ping) -> int:
        self.pings += 1
        return self.pings

    async def quit(self, msg: Quit) -> None:
        self.context.stop()


def sup_class(strategy: Strategy, max_restarts: int = 10, within: float = 30.0, **kw: Any) -> type:
    class Sup(Supervisor):
        supervision = SupervisorStrategy(strategy=strategy, max_restarts=max_restarts, within=within, **kw)

    return Sup


def workers(log: list[str], *tags: str, restart: Restart = Restart.TRANSIENT) -> list[ChildSpec]:
    return [ChildSpec(Worker, tag, kwargs={"log": log, "tag": tag}, restart=restart) for tag in tags]


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def crash(ref: Any) -> None:
    with pytest.raises(InternalServerError):
        await ask(ref, Crash())
    await settle()


async def test_one_for_one_restarts_only_the_failed_child() -> None:
    log: list[str] = []
    async with start_node() as node:
        sup = await node.spawn(sup_class(Strategy.ONE_FOR_ONE), workers(log, "a", "b", "c"), name="s")
        b = node.ref("s/b")
        await ask(node.ref("s/a"), Ping())
        log.clear()
        await crash(b)
        assert log == ["stop:b", "start:b"]
        assert node.ref("s/b") == b  # same ref across restarts
        assert await ask(b, Ping()) == 1
        assert await ask(node.ref("s/a"), Ping()) == 2  # sibling kept its state
        assert [r.name for r in sup.binding.context.children] == ["a", "b", "c"]


async def test_one_for_all_restarts_all_siblings() -> None:
    log: list[str] = []
    async with start_node() as node:
        await node.spawn(sup_class(Strategy.ONE_FOR_ALL), workers(log, "a", "b", "c"), name="s")
        await ask(node.ref("s/a"), Ping())
        log.clear()
        await crash(node.ref("s/b"))
        assert log == ["stop:c", "stop:b", "stop:a", "start:a", "start:b", "start:c"]
        assert await ask(node.ref("s/a"), Ping()) == 1  # fresh state


async def test_rest_for_one_restarts_later_siblings() -> None:
    log: list[str] = []
    async with start_node() as node:
        await node.spawn(sup_class(Strategy.REST_FOR_ONE), workers(log, "a", "b", "c"), name="s")
        await ask(node.ref("s/a"), Ping())
        log.clear()
        await crash(node.ref("s/b"))
        assert log == ["stop:c", "stop:b", "start:b", "start:c"]
        assert await ask(node.ref("s/a"), Ping()) == 2


async def test_three_levels_stop_order_and_escalation() -> None:
    log: list[str] = []
    async with start_node() as node:
        leaf_sup = sup_class(Strategy.ONE_FOR_ONE, max_restarts=2, within=1000.0)
        mid_specs = [
            ChildSpec(Worker, "m1", kwargs={"log": log, "tag": "m1"}),
            ChildSpec(leaf_sup, "leaf", kwargs={"children": workers(log, "x", "y")}),
            ChildSpec(Worker, "m2", kwargs={"log": log, "tag": "m2"}),
        ]
        top = await node.spawn(sup_class(Strategy.ONE_FOR_ONE, max_restarts=5), mid_specs, name="top")
        assert log == ["start:m1", "start:x", "start:y", "start:m2"]
        x = node.ref("top/leaf/x")
        leaf = node.ref("top/leaf")
        await ask(node.ref("top/leaf/y"), Ping())
        await ask(node.ref("top/m1"), Ping())

        # within intensity: only x restarts
        for _ in range(2):
            log.clear()
            await crash(x)
            assert log == ["stop:x", "start:x"]

        # third crash exceeds leaf's intensity: leaf escalates to top, which restarts leaf
        log.clear()
        await crash(x)
        assert log == ["stop:y", "stop:x", "start:x", "start:y"]
        assert node.ref("top/leaf") == leaf
        assert await ask(node.ref("top/leaf/y"), Ping()) == 1  # children are fresh
        assert await ask(node.ref("top/m1"), Ping()) == 2  # top's other children untouched
        # leaf's intensity was reset with it: one more crash is a plain restart
        log.clear()
        await crash(node.ref("top/leaf/x"))
        assert log == ["stop:x", "start:x"]

        log.clear()
        await node.stop(top)
        assert log == ["stop:m2", "stop:y", "stop:x", "stop:m1"]
        assert node.lookup("top/leaf/x") is None
        assert len(node) == 0


async def test_node_exit_stops_tree_in_reverse_order() -> None:
    log: list[str] = []
    async with start_node() as node:
        await node.spawn(Worker, log, "solo", name="solo")
        await node.spawn(
            Supervisor,
            [
                ChildSpec(Worker, "a", kwargs={"log": log, "tag": "a"}),
                ChildSpec(Supervisor, "inner", kwargs={"children": workers(log, "b", "c")}),
            ],
            name="s",
        )
        log.clear()
    assert log == ["stop:c", "stop:b", "stop:a", "stop:solo"]


async def test_temporary_child_never_restarted() -> None:
    log: list[str] = []
    async with start_node() as node:
        await node.spawn(Supervisor, workers(log, "t", restart=Restart.TEMPORARY), name="s")
        t = node.ref("s/t")
        log.clear()
        await crash(t)
        assert log == ["stop:t"]
        assert node.lookup("s/t") is None
        with pytest.raises(ServiceUnavailable):
            await ask(t, Ping())


async def test_permanent_restarted_after_self_stop_transient_not() -> None:
    log: list[str] = []
    async with start_node() as node:
        specs = workers(log, "p", restart=Restart.PERMANENT) + workers(log, "t")
        await node.spawn(Supervisor, specs, name="s")
        p, t = node.ref("s/p"), node.ref("s/t")
        await ask(p, Ping())
        log.clear()
        await tell(p, Quit())
        await settle()
        assert log == ["stop:p", "start:p"]
        assert node.lookup("s/p") == p
        assert await ask(p, Ping()) == 1
        log.clear()
        await tell(t, Quit())
        await settle()
        assert log == ["stop:t"]
        assert node.lookup("s/t") is None


async def test_top_level_permanent_restarted_after_self_stop() -> None:
    log: list[str] = []
    async with start_node() as node:
        p = await node.spawn(Worker, log, "p", name="p", restart=Restart.PERMANENT)
        t = await node.spawn(Worker, log, "t", name="t")
        log.clear()
        await tell(p, Quit())
        await tell(t, Quit())
        await settle()
        assert sorted(log) == ["start:p", "stop:p", "stop:t"]
        assert node.lookup("p") == p
        assert node.lookup("t") is None


async def test_backoff_delays_restart(autojump_clock: Any) -> None:
    log: list[str] = []
    backoff = Backoff(min_delay=2.0, max_delay=60.0, factor=2.0, jitter=0.25)
    async with start_node(seed=7) as node:
        await node.spawn(sup_class(Strategy.ONE_FOR_ONE, backoff=backoff), workers(log, "a"), name="s")
        a = node.ref("s/a")
        times: list[float] = []
        for _ in range(3):
            t0 = trio.current_time()
            with pytest.raises(InternalServerError):
                await ask(a, Crash())
            assert await ask(a, Ping()) == 1  # waits in the mailbox for the restart
            times.append(trio.current_time() - t0)
        assert times[0] >= 2.0 * 0.75
        assert times[1] >= 4.0 * 0.75
        assert times[2] >= 8.0 * 0.75
        assert times[0] <= 2.0 * 1.25 + 0.01


async def test_unrelated_actor_keeps_working_while_another_crashes() -> None:
    log: list[str] = []
    async with start_node() as node:
        steady = await node.spawn(Worker, log, "steady", name="steady")
        crasher = await node.spawn(Worker, log, "crasher", name="crasher")
        n = 0
        while node.lookup("crasher") is not None:
            with pytest.raises((InternalServerError, ServiceUnavailable)):
                await ask(crasher, Crash())
            await settle()
            n += 1
            assert await ask(steady, Ping()) == n
            assert n < 50
        assert n == 11  # default intensity: 10 restarts allowed, the 11th failure stops it
        assert node.lookup("steady") == steady
        assert log.count("start:crasher") == 11
        assert "stop:steady" not in log
    assert log[-1] == "stop:steady"


async def test_root_strategy_is_honoured() -> None:
    log: list[str] = []
    async with start_node(root_strategy=SupervisorStrategy(max_restarts=2)) as node:
        crasher = await node.spawn(Worker, log, "crasher", name="crasher")
        n = 0
        while node.lookup("crasher") is not None and n < 20:
            with pytest.raises((InternalServerError, ServiceUnavailable)):
                await ask(crasher, Crash())
            await settle()
            n += 1
        assert n == 3
