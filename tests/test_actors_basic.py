"""ask/tell, typed errors, restarts on crash, timeouts, concurrency, backpressure, refs, nodes."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import (
    Actor,
    ActorRef,
    BadRequest,
    Conflict,
    InternalServerError,
    MicroError,
    Node,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    ask,
    bounded,
    start_node,
    tell,
    try_tell,
)
from trimicro.testing import dead_letters


@attrs.frozen
class Add:
    k: int


@attrs.frozen
class Get:
    pass


@attrs.frozen
class Boom:
    pass


@attrs.frozen
class Refuse:
    pass


@attrs.frozen
class Unknown:
    pass


class Counter(Actor):
    def __init__(self, log: list[Any] | None = None) -> None:
        self.n = 0
        self.log = log if log is not None else []

    async def restarted(self, failure: BaseException) -> None:
        self.log.append(("restarted", failure))

    async def started(self) -> None:
        self.log.append(("started",))

    async def add(self, msg: Add) -> int:
        self.n += msg.k
        return self.n

    async def get(self, msg: Get) -> int:
        return self.n

    async def refuse(self, msg: Refuse) -> None:
        raise Conflict("nope", code=409)

    async def boom(self, msg: Boom) -> None:
        raise ValueError("kaboom")


async def test_ask_and_tell_by_type() -> None:
    async with start_node() as node:
        ref = await node.spawn(Counter, name="counter")
        assert await ask(ref, Add(2)) == 2
        await tell(ref, Add(3))
        assert try_tell(ref, Add(4))
        assert await ask(ref, Get()) == 9


async def test_ask_by_endpoint_name_with_map_body() -> None:
    async with start_node() as node:
        ref = await node.spawn(Counter, name="counter")
        assert await ask(ref, {"k": 5}, endpoint="Counter.add") == 5
        assert await ask(ref, Add(1), endpoint="Counter.add") == 6
        assert await ask(ref, {}, endpoint="Counter.get") == 6
        with pytest.raises(NotFound) as nf:
            await ask(ref, {"k": 1}, endpoint="Counter.nope")
        assert nf.value.code == 404
        with pytest.raises(BadRequest) as br:
            await ask(ref, {"wrong": 1}, endpoint="Counter.add")
        assert br.value.code == 400
        with pytest.raises(BadRequest):
            await ask(ref, 42, endpoint="Counter.add")
        assert await ask(ref, Get()) == 6  # bad requests do not hurt the actor


async def test_micro_error_is_an_answer_not_a_crash() -> None:
    log: list[Any] = []
    async with start_node() as node:
        ref = await node.spawn(Counter, log, name="counter")
        await ask(ref, Add(7))
        with pytest.raises(Conflict) as exc:
            await ask(ref, Refuse())
        err = exc.value
        assert isinstance(err, MicroError)
        assert (err.id, err.code, err.detail, err.status) == ("Counter", 409, "nope", "Conflict")
        assert await ask(ref, Get()) == 7
        assert log == [("started",)]


async def test_crash_gives_internal_error_and_restarts_actor() -> None:
    log: list[Any] = []
    async with start_node() as node:
        ref = await node.spawn(Counter, log, name="counter")
        await ask(ref, Add(7))
        with pytest.raises(InternalServerError) as exc:
            await ask(ref, Boom())
        assert exc.value.code == 500
        assert "ValueError" in exc.value.detail
        assert "kaboom" in exc.value.detail
        # the next message waits in the mailbox for the fresh instance
        assert await ask(ref, Get()) == 0
        assert node.lookup("counter") == ref
        assert [e[0] for e in log] == ["started", "restarted", "started"]
        failure = log[1][1]
        assert isinstance(failure, ValueError)
        assert str(failure) == "kaboom"


async def test_crash_on_tell_restarts_and_dead_letters(trimicro_node: Node) -> None:
    ref = await trimicro_node.spawn(Counter, name="counter")
    await tell(ref, Add(3))
    async with dead_letters(trimicro_node) as letters:
        await tell(ref, Boom())
        assert await ask(ref, Get()) == 0
        letter = await letters.wait_for()
    assert letter.reason == "failed"
    assert letter.message == Boom()


class Slow(Actor):
    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate
        self.calls = 0

    async def work(self, msg: Add) -> int:
        self.calls += 1
        if msg.k == 0:
            await self.gate.wait()
        return msg.k * 10


async def test_ask_timeout_queued_late_reply_goes_to_dead_letters(autojump_clock: Any) -> None:
    """The ask waits behind a busy handler, times out, and its reply arrives later."""
    async with start_node(ask_timeout=100.0) as node:
        gate = trio.Event()
        ref = await node.spawn(Slow, gate)
        await tell(ref, Add(0))  # occupies the actor until the gate opens
        await trio.testing.wait_all_tasks_blocked()
        async with node.dead_letters.subscribe() as dl:
            t0 = trio.current_time()
            with pytest.raises(RequestTimeout) as exc:
                await ask(ref, Add(5), timeout=2.0)
            assert exc.value.code == 408
            assert trio.current_time() - t0 == pytest.approx(2.0)
            results: list[int] = []
            async with trio.open_nursery() as n:

                async def second() -> None:
                    results.append(await ask(ref, Add(3)))

                n.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            assert results == [30]  # its own reply, not the late 50
            letter = dl.receive_nowait()
            assert (letter.reason, letter.message) == ("late-reply", 50)
            with pytest.raises(trio.WouldBlock):
                dl.receive_nowait()


async def test_ask_timeout_on_idle_actor_cancels_the_handler(autojump_clock: Any) -> None:
    """An idle actor's handler runs in the asker's task: the asker's timeout cancels it.

    No late reply is produced (nothing to drop), the actor stays usable, and it is not
    treated as failed (no restart, state kept).
    """
    async with start_node(ask_timeout=100.0) as node:
        gate = trio.Event()
        ref = await node.spawn(Slow, gate)
        async with node.dead_letters.subscribe() as dl:
            t0 = trio.current_time()
            with pytest.raises(RequestTimeout):
                await ask(ref, Add(0), timeout=2.0)
            assert trio.current_time() - t0 == pytest.approx(2.0)
            assert await ask(ref, Add(3)) == 30
            cell = ref.binding
            assert cell.instance.calls == 2  # same instance: not restarted
            with pytest.raises(trio.WouldBlock):
                dl.receive_nowait()


async def test_default_ask_timeout_from_node(autojump_clock: Any) -> None:
    async with start_node(ask_timeout=3.5) as node:
        gate = trio.Event()
        ref = await node.spawn(Slow, gate)
        t0 = trio.current_time()
        with pytest.raises(RequestTimeout):
            await ask(ref, Add(0))
        assert trio.current_time() - t0 == pytest.approx(3.5)
        gate.set()


class Handshake(Actor):
    max_concurrency = 2

    def __init__(self, a: trio.Event, b: trio.Event) -> None:
        self.a = a
        self.b = b

    async def step(self, msg: Add) -> str:
        if msg.k == 1:
            self.a.set()
            await self.b.wait()
            return "first"
        await self.a.wait()
        self.b.set()
        return "second"


class SerialHandshake(Handshake):
    max_concurrency = 1


async def test_max_concurrency_two_interleaves() -> None:
    async with start_node() as node:
        ref = await node.spawn(Handshake, trio.Event(), trio.Event())
        results: dict[int, str] = {}

        async def call(k: int) -> None:
            results[k] = await ask(ref, Add(k))

        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                n.start_soon(call, 1)
                n.start_soon(call, 2)
        assert results == {1: "first", 2: "second"}


async def test_default_concurrency_is_one(autojump_clock: Any) -> None:
    async with start_node() as node:
        a, b = trio.Event(), trio.Event()
        ref = await node.spawn(SerialHandshake, a, b)
        async with trio.open_nursery() as n:
            n.start_soon(tell, ref, Add(1))
            await trio.testing.wait_all_tasks_blocked()
            assert a.is_set()
            # the second handler cannot run while the first waits: it would set b
            with pytest.raises(RequestTimeout):
                await ask(ref, Add(2), timeout=5.0)
            assert not b.is_set()
            b.set()
        assert await ask(ref, Add(2)) == "second"


class Recorder(Actor):
    def __init__(self, gate: trio.Event, entered: trio.Event) -> None:
        self.gate = gate
        self.entered = entered
        self.seen: list[int] = []

    async def on(self, msg: Add) -> None:
        if msg.k == 0:
            self.entered.set()
            await self.gate.wait()
        self.seen.append(msg.k)

    async def get(self, msg: Get) -> list[int]:
        return list(self.seen)


async def test_bounded_mailbox_backpressure() -> None:
    async with start_node() as node:
        gate, entered = trio.Event(), trio.Event()
        ref = await node.spawn(Recorder, gate, entered, mailbox=bounded(2))
        await tell(ref, Add(0))
        await entered.wait()
        await tell(ref, Add(1))
        await tell(ref, Add(2))  # mailbox now full
        async with node.dead_letters.subscribe() as dl:
            assert not try_tell(ref, Add(99))
            letter = dl.receive_nowait()
            assert letter.reason == "full"
            assert letter.message == Add(99)
            assert letter.recipient == ref
            done = trio.Event()

            async def producer() -> None:
                await tell(ref, Add(3))
                done.set()

            async with trio.open_nursery() as n:
                n.start_soon(producer)
                await trio.testing.wait_all_tasks_blocked()
                assert not done.is_set()  # blocked on the full mailbox
                gate.set()
            assert done.is_set()
        with trio.fail_after(5):
            assert await ask(ref, Get()) == [0, 1, 2, 3]


async def test_tell_blocks_when_full_move_on_after(autojump_clock: Any) -> None:
    async with start_node() as node:
        gate, entered = trio.Event(), trio.Event()
        ref = await node.spawn(Recorder, gate, entered, mailbox=bounded(1))
        await tell(ref, Add(0))
        await entered.wait()
        await tell(ref, Add(1))
        with trio.move_on_after(1.0) as scope:
            await tell(ref, Add(2))
        assert scope.cancelled_caught
        gate.set()
        assert await ask(ref, Get()) == [0, 1]


async def test_stopped_actor_dead_letters_and_unavailable() -> None:
    async with start_node() as node:
        ref = await node.spawn(Counter, name="counter")
        await node.stop(ref)
        assert node.lookup("counter") is None
        async with node.dead_letters.subscribe() as dl:
            await tell(ref, Add(1))
            letter = dl.receive_nowait()
            assert (letter.reason, letter.message, letter.recipient) == ("stopped", Add(1), ref)
            assert not try_tell(ref, Add(2))
            assert dl.receive_nowait().reason == "stopped"
        with pytest.raises(ServiceUnavailable) as exc:
            await ask(ref, Get())
        assert exc.value.code == 503


async def test_unhandled_message_type() -> None:
    async with start_node() as node:
        ref = await node.spawn(Counter)
        async with node.dead_letters.subscribe() as dl:
            await tell(ref, Unknown())
            await ask(ref, Get())
            letter = dl.receive_nowait()
            assert (letter.reason, letter.message) == ("unhandled", Unknown())
            with pytest.raises(NotFound):
                await ask(ref, Unknown())
        assert await ask(ref, Add(1)) == 1


async def test_refs_lookup_and_duplicates() -> None:
    async with start_node("n1") as node:
        ref = await node.spawn(Counter, name="counter")
        assert ref.binding is not None
        plain = ActorRef(ref.node, ref.path, ref.uid)
        assert plain == ref
        assert hash(plain) == hash(ref)
        assert {plain: 1}[ref] == 1
        assert ref != ActorRef(ref.node, ref.path, ref.uid + 1)
        assert node.lookup("counter") == ref
        assert node.lookup("/user/counter") == ref
        assert node.ref("counter") == ref
        assert node.lookup("missing") is None
        with pytest.raises(NotFound):
            node.ref("missing")
        with pytest.raises(NotFound):
            await ask(plain, Get())  # an unbound ref
        bound = node.bind(plain)
        assert await ask(bound, Add(1)) == 1
        with pytest.raises(Conflict):
            await node.spawn(Counter, name="counter")
        assert await ask(ref, Get()) == 1  # the original is untouched
        assert node.children() == [ref]
        assert len(node) == 1


class Hooks(Actor):
    def __init__(self, log: list[str], tag: str) -> None:
        self.log = log
        self.tag = tag

    async def started(self) -> None:
        self.log.append(f"start:{self.tag}")

    async def stopping(self) -> None:
        self.log.append(f"stop:{self.tag}")

    async def echo(self, msg: Add) -> str:
        return f"{self.tag}:{msg.k}"


async def test_several_nodes_and_exit_stops_in_reverse_order() -> None:
    log1: list[str] = []
    log2: list[str] = []
    async with start_node("a") as n1, start_node("b") as n2:
        r1 = [await n1.spawn(Hooks, log1, f"a{i}", name=f"x{i}") for i in range(3)]
        r2 = [await n2.spawn(Hooks, log2, f"b{i}", name=f"x{i}") for i in range(3)]
        assert n1.lookup("x0") == r1[0]
        assert n1.lookup("x0") != n2.lookup("x0")  # same path, different node
        assert await ask(r1[1], Add(1)) == "a1:1"
        assert await ask(r2[1], Add(1)) == "b1:1"
        await n1.stop(r1[1])
        assert log1[-1] == "stop:a1"
        await n2.spawn(Hooks, log2, "b3", name="x3")
    assert log1 == ["start:a0", "start:a1", "start:a2", "stop:a1", "stop:a2", "stop:a0"]
    assert log2 == [
        "start:b0",
        "start:b1",
        "start:b2",
        "start:b3",
        "stop:b3",
        "stop:b2",
        "stop:b1",
        "stop:b0",
    ]
    with pytest.raises(ServiceUnavailable):
        await ask(r2[0], Add(1))


class Sleeper(Actor):
    def __init__(self) -> None:
        self.finished = 0
        self.cancelled = 0

    async def nap(self, msg: Add) -> int:
        try:
            await trio.sleep(msg.k)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1
        return msg.k


async def test_direct_ask_handler_that_blocks_completes_and_is_cancelled_with_caller(
    autojump_clock: Any,
) -> None:
    """An idle actor's handler runs in the caller's task even when it blocks midway."""
    async with start_node() as node:
        ref = await node.spawn(Sleeper)
        t0 = trio.current_time()
        assert await ask(ref, Add(3)) == 3
        assert trio.current_time() - t0 == pytest.approx(3)
        with trio.move_on_after(1):
            await ask(ref, Add(5))
        cell = ref.binding
        assert (cell.instance.finished, cell.instance.cancelled) == (1, 1)
        assert await ask(ref, Add(0)) == 0  # still serving, same instance
        assert cell.instance.finished == 2


async def test_an_error_in_the_node_block_comes_out_as_itself() -> None:
    """Not wrapped in the ExceptionGroup of the node's internal nursery."""
    with pytest.raises(NotFound):
        async with start_node() as node:
            await ask(node.root, Add(1))  # the guardian has no handler for Add


async def test_reply_headers_come_back_from_a_local_handler() -> None:
    class Tagger(Actor):
        async def tag(self, msg: Add) -> int:
            self.context.reply_headers["seen"] = str(msg.k)
            return msg.k

    async with start_node() as node:
        ref = await node.spawn(Tagger)
        back: dict[str, str] = {}
        assert await ask(ref, Add(5), reply_headers=back) == 5  # idle actor: the direct path
        assert back == {"seen": "5"}


async def test_a_stopped_actor_is_freed_at_once_not_left_for_the_cycle_collector() -> None:
    gc.disable()  # only reference counting may free it
    try:
        async with start_node() as node:
            ref = await node.spawn(Counter)
            assert await ask(ref, Add(1)) == 1
            ref.binding.context  # noqa: B018 - a context points back at the cell
            cell = weakref.ref(ref.binding)
            instance = weakref.ref(ref.binding.instance)
            await node.stop(ref)
            del ref
            assert instance() is None
            assert cell() is None
    finally:
        gc.enable()


async def test_a_stopped_actors_own_ref_still_answers_as_a_stopped_actor() -> None:
    """After the stop its cell's ref no longer points back at the cell, yet mail to it still
    goes to dead letters, an ask is refused 503, and a watcher learns at once that it is gone."""
    async with start_node() as node:
        ref = await node.spawn(Counter)
        cell = ref.binding
        await node.stop(ref)
        own = cell.ref
        assert own == ref and own.binding is not cell
        async with node.dead_letters.subscribe() as dl:
            await tell(own, Add(1))
            await tell(own, Add(2), endpoint="Counter.add")
            assert not try_tell(own, Add(3))
            with pytest.raises(ServiceUnavailable):
                await ask(own, Get())
            letters = [dl.receive_nowait() for _ in range(4)]
        assert [letter.reason for letter in letters] == ["stopped"] * 4
        assert [letter.message for letter in letters] == [Add(1), Add(2), Add(3), Get()]


class _UnhashableFactory:
    """A callable factory object that cannot be a dict key (``__eq__`` without ``__hash__``)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UnhashableFactory) and other.start == self.start

    def __call__(self) -> Counter:
        counter = Counter()
        counter.n = self.start
        return counter


async def test_spawn_accepts_an_unhashable_callable_factory() -> None:
    factory = _UnhashableFactory(10)
    with pytest.raises(TypeError):
        hash(factory)
    async with start_node() as node:
        first = await node.spawn(factory)
        second = await node.spawn(factory)
        assert await ask(first, Add(1)) == 11
        assert await ask(second, Add(2)) == 12


class HeaderLog(Actor):
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def add(self, msg: Add) -> None:
        self.seen.append(self.context.headers)

    async def get(self, msg: Get) -> list[dict[str, str]]:
        return self.seen


async def test_each_message_sees_its_own_headers_not_the_previous_ones() -> None:
    """A worker drains a mailbox in batches; each handler sees its own message's context."""
    async with start_node() as node:
        ref = await node.spawn(HeaderLog)
        for i in range(6):
            await tell(ref, Add(i), headers={"n": str(i)} if i % 2 == 0 else None)
        assert await ask(ref, Get()) == [{"n": "0"}, {}, {"n": "2"}, {}, {"n": "4"}, {}]
