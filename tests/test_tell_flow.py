"""Flow control of tells per target actor between two nodes (trimicro.actors.remote.tellflow), in one
process: a slow actor's tells are held back alone, in order, with nothing lost, and the rest of
the link goes on. (Across real processes: test_tell_flow_process.py.)"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_streams import nodes

from trimicro.actors import (
    Actor,
    DeadLetter,
    Node,
    RequestTimeout,
    TooManyRequests,
    ask,
    bounded,
    tell,
    try_tell,
)
from trimicro.actors import remote as remote_module
from trimicro.actors.remote import OUT_HIGH_WATER, Link, tellflow
from trimicro.actors.remote import link as link_module
from trimicro.actors.remote.tellflow import HOLD_BYTES, TELL_OVERHEAD, TELL_WINDOW, Backlog
from trimicro.actors.streams import Stream
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.refs import ActorRef

#: Tells enough to use up the first credit whatever was on its way before the hold.
FLOOD = 40 * TELL_WINDOW


class Gated(Actor):
    """Takes each message only once ``gate`` is open; ``all_in`` is set at ``expect`` of them."""

    service_name = "Gated"

    def __init__(self, gate: trio.Event, expect: int, all_in: trio.Event) -> None:
        self.gate = gate
        self.expect = expect
        self.all_in = all_in
        self.seen: list[int] = []
        self.received = 0

    async def take(self, k: Any) -> None:  # (ints; bytes in the tests of sizes)
        self.received += 1
        await self.gate.wait()
        self.seen.append(k)
        if len(self.seen) == self.expect:
            self.all_in.set()

    async def seen_so_far(self, _: Any) -> list[int]:
        return self.seen


class Echo(Actor):
    service_name = "Echo"

    async def ping(self, body: Any) -> Any:
        return body


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes in one process; ``a`` has connected to ``b`` and heard its hello."""
    async with nodes("remote") as (a, b):
        await b.spawn(Echo, name="echo")
        assert await ask(a.remote_ref("b", "echo"), 1, endpoint="Echo.ping") == 1  # hellos came
        yield a, b


class Flood:
    """A producer telling ``n`` ints in order to ``ref`` (``Gated.take``); ``sent`` counts the
    tells done (a tell cancelled while it waits was not sent)."""

    def __init__(self, ref: ActorRef, n: int) -> None:
        self.ref = ref
        self.n = n
        self.sent = 0

    async def run(self) -> None:
        for k in range(self.n):
            await tell(self.ref, k, endpoint="Gated.take")
            self.sent += 1


def links(a: Node, b: Node) -> tuple[Link, Link]:
    link_a, link_b = a.remote.peer("b").link, b.remote.peer("a").link
    assert link_a is not None and link_b is not None
    return link_a, link_b


async def until(condition: Any, seconds: float = 10) -> None:
    """Wait (a checkpoint at a time, up to ``seconds``) until ``condition()`` holds."""
    with trio.fail_after(seconds):
        while not condition():
            await trio.lowlevel.checkpoint()


def drain(letters: trio.MemoryReceiveChannel[DeadLetter]) -> list[DeadLetter]:
    got = []
    while True:
        try:
            got.append(letters.receive_nowait())
        except trio.WouldBlock:
            return got


async def spawn_gated(b: Node, expect: int, **options: Any) -> tuple[trio.Event, trio.Event, Gated]:
    """The ``gated`` actor on ``b`` with a mailbox of 4: its gate, its ``all_in``, itself."""
    gate, all_in = trio.Event(), trio.Event()
    ref = await b.spawn(Gated, gate, expect, all_in, name="gated", mailbox=bounded(4), **options)
    instance = b.remote.local_cell(ref).instance
    assert isinstance(instance, Gated)
    return gate, all_in, instance


async def held(flood: Flood, nursery: trio.Nursery, link_a: Link) -> Stream:
    """Start ``flood`` and return once the producer waits for the hold's credit."""
    nursery.start_soon(flood.run)
    await until(lambda: "/user/gated" in link_a.held)
    hold = link_a.held["/user/gated"]
    await until(lambda: bool(hold._send_lot))
    return hold


async def test_a_slow_actor_is_held_back_alone_in_order_and_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tellflow, "RELEASE_IDLE", 0.05)
    async with pair() as (a, b):
        gate, all_in, _ = await spawn_gated(b, FLOOD)
        gated, echo = a.remote_ref("b", "gated"), a.remote_ref("b", "echo")
        link_a, link_b = links(a, b)
        flood = Flood(gated, FLOOD)
        async with a.dead_letters.subscribe() as a_letters, b.dead_letters.subscribe() as b_letters:
            async with trio.open_nursery() as nursery:
                # b holds the actor's tells back, and a's producer waits for credit.
                await held(flood, nursery, link_a)
                assert flood.sent < FLOOD
                assert link_a.out_bytes < remote_module.OUT_HIGH_WATER  # not stuck in the link
                backlog = link_b.backlogs[b.remote.local_cell(gated)]
                assert not link_b.busy  # b's reader does not wait for the actor
                # Meanwhile everything else on the link goes on.
                for k in range(100):
                    assert await ask(echo, k, endpoint="Echo.ping", timeout=2) == k
                assert backlog.count <= flood.sent  # (the bound: see the test below)
                gate.set()
                with trio.fail_after(20):
                    await all_in.wait()
            assert flood.sent == FLOOD
            assert await ask(gated, None, endpoint="Gated.seen_so_far") == list(range(FLOOD))
            assert drain(a_letters) == [] and drain(b_letters) == []
        # Idle again: the hold ends on both sides, and tells go as before.
        await until(lambda: not link_b.backlogs and not link_a.held)
        assert link_b.backlog_bytes == 0 and not link_a.streams and not link_b.streams


async def test_a_held_sender_keeps_the_backlog_within_its_window() -> None:
    """Once the tells that were on their way when the sender heard of the hold have drained,
    the backlog never holds more than the credit window, however fast the producer."""
    async with pair() as (a, b):
        n = 8 * TELL_WINDOW
        gate, all_in, instance = await spawn_gated(b, n)
        gated = a.remote_ref("b", "gated")
        _link_a, link_b = links(a, b)
        cell = b.remote.local_cell(gated)
        peak = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Flood(gated, n).run)
            await until(lambda: cell in link_b.backlogs and link_b.backlogs[cell].credited)
            backlog = link_b.backlogs[cell]
            early = backlog.count  # (at most: later ones may have come already)
            gate.set()
            with trio.fail_after(30):
                while not all_in.is_set():
                    await trio.lowlevel.checkpoint()
                    if len(instance.seen) > early + 5:  # (plus the mailbox and the handler)
                        peak = max(peak, backlog.count)
        assert 0 < peak <= TELL_WINDOW


async def test_a_peer_without_the_feature_gets_the_old_backpressure() -> None:
    """A peer whose hello does not list ``tells.hold`` would not hold back: the reader waits
    for room as long as it takes (the whole link waits), as before."""
    async with pair() as (a, b):
        gate, all_in, _ = await spawn_gated(b, 200)
        gated = a.remote_ref("b", "gated")
        link_a, link_b = links(a, b)
        link_b.hold_tells = False  # as an older node's hello would leave it
        with trio.fail_after(20):
            await Flood(gated, 200).run()
            await until(lambda: link_b.busy)
            await trio.sleep(2 * tellflow.HOLD_AFTER)  # longer than a holding peer would wait
            assert link_b.busy and not link_b.backlogs and not link_a.held
            gate.set()
            await all_in.wait()
        assert await ask(gated, None, endpoint="Gated.seen_so_far") == list(range(200))


async def test_a_peer_that_does_not_hold_back_is_stopped_by_the_backlog_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tellflow, "BACKLOG_BYTES", 16 * 1024)
    monkeypatch.setattr(tellflow, "FREE_BYTES", 16 * 1024)  # more never comes from a peer that holds
    monkeypatch.setattr(link_module, "on_hold", lambda link, env, most: None)  # ignoring holds
    async with pair() as (a, b):
        n = 3000
        gate, all_in, _ = await spawn_gated(b, n)
        gated = a.remote_ref("b", "gated")
        _link_a, link_b = links(a, b)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Flood(gated, n).run)
                await until(lambda: link_b.backlog_bytes > 16 * 1024 and link_b.busy)
                assert link_b.backlog_bytes < 16 * 1024 + 256 * 1024  # by one frame at most
                gate.set()
                await all_in.wait()
        assert await ask(gated, None, endpoint="Gated.seen_so_far") == list(range(n))


async def test_the_backlog_of_an_actor_that_stops_is_dead_letters_and_the_hold_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tellflow, "RELEASE_IDLE", 60)  # the hold ends at once all the same
    async with pair() as (a, b):
        _, _, instance = await spawn_gated(b, 0, shutdown=0.01)
        gated = a.remote_ref("b", "gated")
        link_a, link_b = links(a, b)
        flood = Flood(gated, FLOOD)
        async with (
            a.dead_letters.subscribe(2 * FLOOD) as a_letters,
            b.dead_letters.subscribe(2 * FLOOD) as b_letters,
        ):
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await held(flood, nursery, link_a)
                    await b.stop(b.remote.local_cell(gated).ref)
                    # The hold ends: the producer goes on (its tells find no actor now).
                    await until(lambda: flood.sent == FLOOD)
                await until(lambda: not link_b.backlogs and not link_a.held)
                await ask(a.remote_ref("b", "echo"), 0, endpoint="Echo.ping")  # behind every tell
            lost_b, lost_a = drain(b_letters), drain(a_letters)
        assert instance.received + len(lost_b) + len(lost_a) == FLOOD  # every tell is accounted for
        # Those still waiting when it stopped, then those sent after (no actor by that name).
        assert {d.reason.split(":")[0] for d in lost_b} == {"stopped", "undeliverable"}


async def test_a_request_waits_behind_held_tells() -> None:
    """A request from a peer whose tells to the actor wait in a backlog waits there too: it
    neither overtakes them nor is refused because of them (tells, then an ask that counts them,
    is a common pattern)."""
    async with pair() as (a, b):
        n = 100
        gate, _, _ = await spawn_gated(b, n)
        gated = a.remote_ref("b", "gated")
        _link_a, link_b = links(a, b)
        answer: list[Any] = []

        async def tells_then_ask() -> None:
            await Flood(gated, n).run()
            answer.append(await ask(gated, None, endpoint="Gated.seen_so_far", timeout=10))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(tells_then_ask)
                await until(lambda: bool(link_b.inbound) and bool(link_b.backlogs))  # the ask waits
                gate.set()
        assert answer == [list(range(n))]


async def test_try_tell_to_a_held_actor_without_credit_is_a_dead_letter() -> None:
    async with pair() as (a, b):
        gate, _, _ = await spawn_gated(b, 0)
        gated = a.remote_ref("b", "gated")
        link_a, _link_b = links(a, b)
        async with trio.open_nursery() as nursery:
            await held(Flood(gated, FLOOD), nursery, link_a)  # it used up its credit
            async with a.dead_letters.subscribe() as letters:
                assert not try_tell(gated, -1)
                letter = letters.receive_nowait()
            assert (letter.message, letter.reason) == (-1, "full")
            nursery.cancel_scope.cancel()
        gate.set()


async def test_a_producer_waiting_for_credit_goes_on_when_the_link_drops() -> None:
    async with pair() as (a, b):
        gate, _, instance = await spawn_gated(b, FLOOD)
        gated = a.remote_ref("b", "gated")
        link_a, _link_b = links(a, b)
        lost_before = a.dead_letters.count + b.dead_letters.count
        flood = Flood(gated, FLOOD)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await held(flood, nursery, link_a)
                link_a.close("closed by the test")
                await until(lambda: a.remote.peer("b").link not in (None, link_a))  # it redialed
                gate.set()
            assert flood.sent == FLOOD  # the producer went on, on the new link

            def lost() -> int:
                return a.dead_letters.count + b.dead_letters.count - lost_before

            # Each tell reaches the actor, or dead letters (queued on the closed link, unsent).
            await until(lambda: len(instance.seen) + lost() == FLOOD)


async def test_holds_the_peer_could_not_mean_are_ignored() -> None:
    async with pair() as (a, b):
        link_a, link_b = links(a, b)
        target = ActorRef("b", "/user/echo", 0)
        good = 2 if link_a.initiator else 1  # an id of b's parity
        for corr, tgt in ((good + 1, target), (good, None), (good, target), (good + 2, target)):
            env = Envelope(Kind.SYSTEM, corr, tgt, None, "tells.hold")
            link_b.push(encode_envelope(env))
        echo = a.remote_ref("b", "echo")
        assert await ask(echo, 1, endpoint="Echo.ping") == 1  # after them on the link
        assert list(link_a.held) == ["/user/echo"]  # only the first good one
        assert list(link_a.streams) == [good]
        # A credit and a cancel for it work as for a stream: the tell waits, then goes.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(tell, echo, 2, endpoint="Echo.ping"))
            hold = link_a.held["/user/echo"]
            await until(lambda: bool(hold._send_lot))
            link_b.push(encode_envelope(Envelope(Kind.CANCEL, good)))
        assert not link_a.held and not link_a.streams
        assert a.remote.peer("b").link is link_a and not link_a.closed


async def test_a_lone_tell_or_ask_in_a_backlog_counts_its_body_and_headers() -> None:
    """TELL frames with headers (not batched) and asks wait in a backlog at their real size: the
    bound on a link's backlogs counted each as 256 bytes whatever its body."""
    async with pair() as (a, b):
        gate, _, _ = await spawn_gated(b, 0)
        gated = a.remote_ref("b", "gated")
        _link_a, link_b = links(a, b)
        body = b"x" * 65536
        headers = {"x-note": "y" * 1000}
        async with trio.open_nursery() as nursery:

            async def flood() -> None:
                for _ in range(40):
                    await tell(gated, body, headers=headers, endpoint="Gated.take")

            nursery.start_soon(flood)
            await until(lambda: bool(link_b.backlogs) and next(iter(link_b.backlogs.values())).count >= 8)
            backlog = next(iter(link_b.backlogs.values()))
            assert link_b.backlog_bytes >= backlog.count * (len(body) + 1000)
            gate.set()


async def test_asks_waiting_in_a_backlog_are_bounded_even_once_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Asks behind a slow actor's tells leave ``inbound`` when they expire but stay in the
    backlog until it reaches them: they count against MAX_WAITING_ASKS until then, and more
    are refused with 429 (they piled up without bound)."""
    monkeypatch.setattr(link_module, "MAX_WAITING_ASKS", 8, raising=False)  # (checked on the old code)
    async with pair() as (a, b):
        gate, _, _ = await spawn_gated(b, 0)
        gated = a.remote_ref("b", "gated")
        link_a, link_b = links(a, b)
        refused = 0
        most = 0

        def waiting() -> int:
            return sum(
                1
                for bl in link_b.backlogs.values()
                for e in bl.entries
                if e[0] is not None and e[0].reply is not None
            )

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await held(Flood(gated, FLOOD), nursery, link_a)  # the backlog stays: the gate is shut
                for _ in range(4):
                    async with trio.open_nursery() as askers:

                        async def one() -> None:
                            nonlocal refused
                            try:
                                await ask(gated, None, endpoint="Gated.seen_so_far", timeout=0.05)
                            except TooManyRequests:
                                refused += 1
                            except RequestTimeout:
                                pass

                        for _ in range(10):
                            askers.start_soon(one)
                    most = max(most, waiting())
                nursery.cancel_scope.cancel()
            gate.set()
        assert refused > 0
        assert most <= 8


async def test_a_new_actor_by_the_same_name_gets_a_hold_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor stops while its (idle) hold is still open and a new one starts under its name:
    the receiver ends the old hold before it asks for a new one, so the sender holds its tells
    to the new actor with the new credit (it ignored the second hold for the path, and once the
    old one ended sent freely into a backlog that granted nothing)."""
    monkeypatch.setattr(tellflow, "RELEASE_IDLE", 60)
    async with pair() as (a, b):
        gate, all_in, _ = await spawn_gated(b, FLOOD)
        gated = a.remote_ref("b", "gated")
        link_a, link_b = links(a, b)
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                await held(Flood(gated, FLOOD), nursery, link_a)
                gate.set()
                await all_in.wait()
            (first,) = link_b.backlogs.values()  # idle, its hold still open
            await until(lambda: first.count == 0)
            await b.stop(first.cell.ref)
            gate2, all_in2, instance2 = await spawn_gated(b, FLOOD)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(Flood(gated, FLOOD).run)
                await until(
                    lambda: any(bl.cell is not first.cell and bl.credited for bl in link_b.backlogs.values()),
                    10,
                )
                gate2.set()
            await all_in2.wait()
        assert instance2.seen == list(range(FLOOD))


async def test_an_ask_waiting_for_room_on_a_link_that_closes_goes_on_a_new_link() -> None:
    """The send queue is full; the link drops while an ask waits for room: the ask redials and
    is answered (it went into the closed link's requests and waited out its deadline)."""
    async with pair() as (a, b):
        echo = a.remote_ref("b", "echo")
        link_a, _link_b = links(a, b)
        link_a.out_bytes = OUT_HIGH_WATER  # as if the peer did not read

        async def close_once_waiting() -> None:
            await until(lambda: bool(link_a._room))
            link_a.close("closed by the test")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_once_waiting)
            assert await ask(echo, 1, endpoint="Echo.ping", timeout=5) == 1


async def test_a_tell_cancelled_as_its_credit_comes_is_sent_or_keeps_the_credit() -> None:
    """The credit comes and the producer is cancelled in the same instant: the tell goes out
    with the credit, or the credit stays (it was taken, then the cancellation lost the tell)."""
    async with pair() as (a, b):
        _, _, instance = await spawn_gated(b, 1)
        gated = a.remote_ref("b", "gated")
        link_a, link_b = links(a, b)
        good = 2 if link_a.initiator else 1  # an id of b's parity
        target = ActorRef("b", "/user/gated", 0)
        link_b.push(encode_envelope(Envelope(Kind.SYSTEM, good, target, None, "tells.hold")))
        assert await ask(a.remote_ref("b", "echo"), 1, endpoint="Echo.ping") == 1  # after it
        hold = link_a.held["/user/gated"]
        scope = trio.CancelScope()

        async def teller() -> None:
            with scope:
                await tell(gated, 7, endpoint="Gated.take")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(teller)
            await until(lambda: bool(hold._send_lot))
            hold.on_credit(1)
            scope.cancel()
        instance.gate.set()
        seen = await ask(gated, None, endpoint="Gated.seen_so_far")
        assert seen == [7] or hold._send_credit == 1


async def test_a_hold_with_id_0_is_ignored_and_a_second_for_a_path_is_refused() -> None:
    async with pair() as (a, b):
        link_a, link_b = links(a, b)
        good = 2 if link_a.initiator else 1
        target = ActorRef("b", "/user/echo", 0)
        cancels: list[int] = []
        on_cancel = link_b._on_cancel
        link_b._on_cancel = lambda corr: (cancels.append(corr), on_cancel(corr))[1]  # type: ignore[method-assign]
        for corr in (0, good, good + 2):
            link_b.push(encode_envelope(Envelope(Kind.SYSTEM, corr, target, None, "tells.hold")))
        assert await ask(a.remote_ref("b", "echo"), 1, endpoint="Echo.ping") == 1  # after them
        assert list(link_a.held) == ["/user/echo"] and list(link_a.streams) == [good]
        # a answers the refused hold with a CANCEL on its way back to b, which may still be
        # in flight when the reply to the ask (sent before it) arrives: wait for it.
        await until(lambda: bool(cancels))
        assert cancels == [good + 2]  # the second hold for the path, refused


async def test_a_refused_hold_makes_the_link_one_whose_peer_does_not_hold_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender that refuses a hold (CANCEL with its id) sends freely: the receiver bounds that
    link's backlogs as for a peer that does not hold back."""

    def refuse(link: Link, env: Envelope, most: int) -> None:
        link.push(encode_envelope(Envelope(Kind.CANCEL, env.corr)))

    monkeypatch.setattr(link_module, "on_hold", refuse)
    async with pair() as (a, b):
        gate, _, _ = await spawn_gated(b, 0)
        gated = a.remote_ref("b", "gated")
        _link_a, link_b = links(a, b)
        assert link_b.backlog_limit > tellflow.BACKLOG_BYTES
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Flood(gated, FLOOD).run)
            await until(lambda: link_b.backlog_limit == tellflow.BACKLOG_BYTES)
            nursery.cancel_scope.cancel()
        gate.set()


# ---- the credit accounting of a backlog, sans I/O ------------------------------------------------


class _FakeLink:
    closed = False
    backlog_limit = 0

    def backlog_drained(self, size: int) -> None:
        pass


class _Grants:
    def __init__(self) -> None:
        self.sent: deque[int] = deque()

    async def data(self, item: Any) -> None:
        pass

    def credit(self, n: int) -> None:
        self.sent.append(n)

    def close(self, error: Any) -> None:
        pass

    def cancel(self) -> None:
        pass


@settings(max_examples=500, deadline=None)
@given(
    total=st.integers(1, 4 * TELL_WINDOW),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 2 * TELL_WINDOW)), max_size=40),
    body=st.sampled_from([0, 100, 16 * 1024, 256 * 1024, 2 * HOLD_BYTES]),
)
def test_backlog_credit_bounds_the_backlog_and_never_stalls(
    total: int, steps: list[tuple[int, int]], body: int
) -> None:
    """The exchange of §4.6 as a model: a backlog starts with the tell that met the full
    mailbox, the hold goes to the sender, which answers with ``tells.held`` and from then on
    sends on credit only (before it heard of the hold it sent freely); grants follow the marker,
    on the same channel as the hold. Whatever the interleaving of deliveries on both channels,
    moves into the mailbox and sends: tells sent after ``tells.held`` that are on their way or
    waiting never exceed the window, in tells and in bytes (one tell over at most: a tell
    bigger than the window still gets a credit), and every tell gets through (no deadlock)."""
    grants = _Grants()
    backlog = Backlog(_FakeLink(), None, 7, grants)  # type: ignore[arg-type]

    class _Tells:
        bodies: list[bytes] = []

    backlog.add((None,), _Tells, 0, item_size=body)  # type: ignore[arg-type]
    forward: deque[str] = deque()  # "T" a tell, "M" the tells.held marker
    to_sender: deque[int] = deque([0, *grants.sent])  # 0: the hold, n: a grant of n
    grants.sent.clear()
    holding, credit, unsent, delivered = False, 0, total - 1, 0
    credited = 0  # tells sent after the marker, not yet moved into the mailbox
    early = 1  # tells sent before it, still in the backlog or on their way

    def step(kind: int) -> bool:
        nonlocal holding, credit, unsent, delivered, credited, early
        if kind == 0 and forward:  # a tell or the marker reaches the backlog
            if forward.popleft() == "M":
                backlog.credited = True
                backlog.grant()
            else:
                backlog.add((None,), _Tells, 0, item_size=body)  # type: ignore[arg-type]
        elif kind == 1 and backlog.count:  # one moves into the mailbox (the oldest first)
            backlog._moved(1)
            backlog._drained(body + 4 * TELL_OVERHEAD)
            delivered += 1
            if early:
                early -= 1
            else:
                credited -= 1
        elif kind == 2 and (to_sender or grants.sent):  # the hold or a grant reaches the sender
            to_sender.extend(grants.sent)
            grants.sent.clear()
            n = to_sender.popleft()
            if n == 0:
                holding = True
                forward.append("M")
            else:
                credit += n
        elif kind == 3 and unsent and (credit or not holding):  # the sender sends one
            unsent -= 1
            forward.append("T")
            if holding:
                credit -= 1
                credited += 1
            else:
                early += 1
        else:
            return False
        assert credited <= TELL_WINDOW
        assert credited <= 1 or credited * (body + 4 * TELL_OVERHEAD) <= HOLD_BYTES
        return True

    for kind, times in steps:  # runs of one kind of event: bursts
        for _ in range(times):
            if not step(kind):
                break
    while delivered < total:  # then to the end: something can always happen
        assert any(step(kind) for kind in range(4)), "stalled"
