"""Mailbox data structures (unit) and mailbox behaviour seen through the runtime."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import (
    Actor,
    DeadLetter,
    Terminated,
    ask,
    bounded,
    priority,
    start_node,
    tell,
    try_tell,
    unbounded,
)
from trimicro.mailbox.mailboxes import (
    BoundedMailbox,
    MailboxSpec,
    PriorityMailbox,
    UnboundedMailbox,
    Unbuilt,
)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# ---- unit tests -------------------------------------------------------------------------------


def test_bounded_fifo_and_capacity() -> None:
    mb: BoundedMailbox[int] = BoundedMailbox(2)
    assert mb.capacity == 2
    assert mb.has_room()
    assert mb.push(1)
    assert mb.push(2)
    assert not mb.has_room()
    assert not mb.push(3)
    assert len(mb) == 2
    assert mb.pop() == 1
    assert mb.has_room()
    assert mb.push(3)
    assert [mb.pop(), mb.pop()] == [2, 3]
    with pytest.raises(IndexError):
        mb.pop()


def test_bounded_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError):
        BoundedMailbox(0)
    with pytest.raises(ValueError):
        PriorityMailbox(0)


def test_bounded_system_messages_bypass_capacity_but_respect_reserve() -> None:
    mb: BoundedMailbox[str] = BoundedMailbox(1, system_reserve=2)
    assert mb.push("u1")
    assert not mb.push("u2")
    assert mb.push("s1", system=True)
    assert mb.push("s2", system=True)
    assert not mb.push("s3", system=True)  # reserve exhausted
    assert len(mb) == 3
    # system messages do not use user capacity
    assert not mb.has_room()
    assert mb.pop() == "u1"  # FIFO: system messages are not reordered in a bounded mailbox
    assert mb.has_room()
    assert mb.pop() == "s1"
    assert mb.push("s3", system=True)  # one system slot freed
    assert mb.push("u2")
    assert [mb.pop(), mb.pop(), mb.pop()] == ["s2", "s3", "u2"]
    assert len(mb) == 0
    assert mb.has_room()


def test_unbounded() -> None:
    mb: UnboundedMailbox[int] = UnboundedMailbox()
    assert mb.capacity is None
    for i in range(5000):
        assert mb.push(i)
    assert mb.push(-1, system=True)
    assert mb.has_room()
    assert len(mb) == 5001
    assert [mb.pop() for _ in range(3)] == [0, 1, 2]


def test_priority_order_fifo_among_equals_and_system_first() -> None:
    mb: PriorityMailbox[tuple[str, int]] = PriorityMailbox(10, key=lambda item: item[1])
    mb.push(("a", 5))
    mb.push(("b", 1))
    mb.push(("c", 5))
    mb.push(("d", 1))
    mb.push(("sys", 99), system=True)
    mb.push(("e", -100))
    out = [mb.pop()[0] for _ in range(len(mb))]
    assert out == ["sys", "e", "b", "d", "a", "c"]


def test_priority_default_key_is_fifo_and_bounded() -> None:
    mb: PriorityMailbox[int] = PriorityMailbox(2, system_reserve=1)
    assert mb.push(1)
    assert mb.push(2)
    assert not mb.push(3)
    assert not mb.has_room()
    assert mb.push(100, system=True)
    assert not mb.push(101, system=True)
    assert [mb.pop(), mb.pop(), mb.pop()] == [100, 1, 2]
    assert mb.has_room()


def test_spec_build() -> None:
    assert isinstance(bounded(3).build(), BoundedMailbox)
    assert bounded(3).build().capacity == 3
    assert bounded().capacity == 1000
    assert isinstance(unbounded().build(), UnboundedMailbox)
    pm = priority(4, key=lambda m: m).build(lambda item: item[0])  # type: ignore[arg-type, return-value]
    assert isinstance(pm, PriorityMailbox)
    pm.push((3, "x"))
    pm.push((1, "y"))
    assert pm.pop() == (1, "y")
    with pytest.raises(ValueError):
        MailboxSpec("weird").build()


# ---- through the runtime ----------------------------------------------------------------------


@attrs.frozen
class Job:
    prio: int
    label: str


@attrs.frozen
class Block:
    pass


@attrs.frozen
class Dump:
    pass


class PrioActor(Actor):
    def __init__(self, gate: trio.Event, entered: trio.Event) -> None:
        self.gate = gate
        self.entered = entered
        self.seen: list[str] = []

    async def block(self, msg: Block) -> None:
        self.entered.set()
        await self.gate.wait()

    async def job(self, msg: Job) -> None:
        self.seen.append(msg.label)

    async def terminated(self, msg: Terminated) -> None:
        self.seen.append(f"terminated:{msg.ref.name}")

    async def dump(self, msg: Dump) -> list[str]:
        return list(self.seen)


class Idle(Actor):
    async def ping(self, msg: Block) -> None:
        pass


def _prio_key(msg: object) -> int:
    if isinstance(msg, Job):
        return msg.prio
    if isinstance(msg, Dump):
        return 1000
    return 0


async def test_priority_mailbox_delivers_lower_key_first_and_system_before_user() -> None:
    async with start_node() as node:
        gate, entered = trio.Event(), trio.Event()
        ref = await node.spawn(PrioActor, gate, entered, name="p", mailbox=priority(100, key=_prio_key))
        victim = await node.spawn(Idle, name="victim")
        await tell(ref, Block())
        await entered.wait()
        for prio, label in [(5, "five"), (1, "one"), (3, "three"), (1, "one-b")]:
            await tell(ref, Job(prio, label))
        ref.binding.context.watch(victim)
        await node.stop(victim)
        gate.set()
        with trio.fail_after(5):
            seen = await ask(ref, Dump())
        assert seen == ["terminated:victim", "one", "one-b", "three", "five"]


async def test_bounded_mailbox_system_message_when_full() -> None:
    """Terminated reaches a watcher whose bounded mailbox is full of user mail."""
    async with start_node() as node:
        gate, entered = trio.Event(), trio.Event()
        ref = await node.spawn(PrioActor, gate, entered, name="p", mailbox=bounded(1))
        victim = await node.spawn(Idle, name="victim")
        await tell(ref, Block())
        await entered.wait()
        await tell(ref, Job(0, "a"))
        assert not try_tell(ref, Job(0, "b"))
        ref.binding.context.watch(victim)
        async with node.dead_letters.subscribe() as dl:
            await node.stop(victim)
            gate.set()
            with trio.fail_after(5):
                seen = await ask(ref, Dump())
            with pytest.raises(trio.WouldBlock):
                dl.receive_nowait()
        assert seen == ["a", "terminated:victim"]


async def test_unbounded_mailbox_never_full() -> None:
    async with start_node() as node:
        gate, entered = trio.Event(), trio.Event()
        ref = await node.spawn(PrioActor, gate, entered, mailbox=unbounded())
        await tell(ref, Block())
        await entered.wait()
        for i in range(3000):
            assert try_tell(ref, Job(0, str(i)))
        gate.set()
        seen = await ask(ref, Dump())
        assert seen == [str(i) for i in range(3000)]


def test_dead_letter_is_a_value() -> None:
    assert DeadLetter(None, 1, "full") == DeadLetter(None, 1, "full")


async def test_an_actor_gets_its_own_queue_only_with_its_first_message() -> None:
    async with start_node("n") as node:
        a = await node.spawn(Idle)
        b = await node.spawn(Idle)
        shared = a.binding.mailbox
        assert isinstance(shared, Unbuilt)  # never sent anything: no queue of its own
        assert b.binding.mailbox is shared
        assert len(shared) == 0 and shared.capacity == 1000
        await ask(a, Block())  # an ask to an idle actor is handled at once, never queued
        assert a.binding.mailbox is shared
        await tell(a, Block())
        mailbox = a.binding.mailbox
        assert isinstance(mailbox, BoundedMailbox) and mailbox.capacity == 1000
        assert b.binding.mailbox is shared
        prio = await node.spawn(Idle, mailbox=priority(4, key=_prio_key))
        assert isinstance(prio.binding.mailbox, Unbuilt)
        await tell(prio, Block())
        assert isinstance(prio.binding.mailbox, PriorityMailbox)


async def test_a_bad_mailbox_spec_fails_the_spawn_not_the_first_message() -> None:
    async with start_node("n") as node:
        with pytest.raises(ValueError):
            await node.spawn(Idle, mailbox=MailboxSpec("weird"))
        with pytest.raises(ValueError):
            await node.spawn(Idle, mailbox=bounded(0))


async def test_anonymous_spawns_of_a_class_share_one_spec() -> None:
    async with start_node("n") as node:
        a, b = await node.spawn(Idle), await node.spawn(Idle)
        assert a.binding.spec is b.binding.spec
        assert a.name != b.name
        named = await node.spawn(Idle, name="x")
        assert named.binding.spec is not a.binding.spec
        assert named.binding.spec.name == "x"
