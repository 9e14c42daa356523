"""Remote actors between nodes in one process: ask/tell, errors, refs, deadlines, cancel, death."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from trimicro.actors import (
    Actor,
    ActorRef,
    BadRequest,
    DeadLetter,
    InternalServerError,
    MicroError,
    Node,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    Terminated,
    TooManyRequests,
    Unauthorized,
    ask,
    bounded,
    start_node,
    tell,
)
from trimicro.actors.busypoll import PROBE_EVERY, PollGate
from trimicro.actors.remote import Unreachable
from trimicro.actors.remote.batching import TellBatch
from trimicro.mailbox.codec import TypeRegistry
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport import InprocTransport, TcpTransport, Transport

REGISTRY = TypeRegistry()


@REGISTRY.message("test.Add")
@attrs.frozen
class Add:
    k: int


@REGISTRY.message("test.Get")
@attrs.frozen
class Get:
    pass


@REGISTRY.message("test.Fail")
@attrs.frozen
class Fail:
    code: int


@REGISTRY.message("test.Sleep")
@attrs.frozen
class Sleep:
    seconds: float


@REGISTRY.message("test.Relay")
@attrs.frozen
class Relay:
    """Ask ``to`` to add ``k`` (refs inside messages must arrive usable)."""

    to: ActorRef
    k: int


@REGISTRY.message("test.Big")
@attrs.frozen
class Big:
    size: int


@attrs.frozen
class NotRegistered:
    pass


class Counter(Actor):
    service_name = "Counter"

    def __init__(self, probe: dict[str, Any] | None = None) -> None:
        self.n = 0
        self.seen: list[int] = []
        self.probe = probe if probe is not None else {}

    async def add(self, msg: Add) -> int:
        self.n += msg.k
        self.seen.append(msg.k)
        self.context.reply_headers["total"] = str(self.n)
        self.probe["headers"] = self.context.headers
        self.probe["sender"] = self.context.sender
        self.probe["deadline"] = self.context.deadline
        return self.n

    async def get(self, msg: Get) -> list[int]:
        return self.seen

    async def fail(self, msg: Fail) -> None:
        if msg.code == 500:
            raise ZeroDivisionError("boom")
        raise NotFound("no such thing")

    async def sleep(self, msg: Sleep) -> str:
        started = self.probe.get("started_event")
        if started is not None:
            started.set()
        try:
            await trio.sleep(msg.seconds)
        except trio.Cancelled:
            self.probe["cancelled"] = trio.current_time()
            ev = self.probe.get("cancelled_event")
            if ev is not None:
                ev.set()
            raise
        return "slept"

    async def relay(self, msg: Relay) -> int:
        result: int = await ask(msg.to, Add(msg.k))
        return result

    async def odd(self, msg: NotRegistered) -> NotRegistered:
        return msg

    async def hello(self, body: dict[str, Any]) -> str:
        return f"hello {body['name']}"

    async def big(self, msg: Big) -> bytes:
        return b"x" * msg.size


class Watcher(Actor):
    def __init__(self, seen: trio.MemorySendChannel[Terminated]) -> None:
        self.seen = seen

    async def watch(self, ref: ActorRef) -> None:
        self.context.watch(ref)

    async def on_terminated(self, msg: Terminated) -> None:
        self.seen.send_nowait(msg)


@pytest.fixture
def authority() -> Authority:
    return Authority.generate()


@asynccontextmanager
async def pair(
    authority: Authority,
    transport: Transport | None = None,
    *,
    a_listen: str = "node-a",
    b_listen: str = "node-b",
    **kw: Any,
) -> AsyncIterator[tuple[Node, Node, str]]:
    """Two nodes that trust the same authority; ``a`` has connected to ``b``."""
    tr = transport or InprocTransport()
    async with (
        start_node(
            "a",
            listen=a_listen,
            transport=tr,
            identity=NodeIdentity.issue("a", authority),
            registry=REGISTRY,
            **kw,
        ) as a,
        start_node(
            "b",
            listen=b_listen,
            transport=tr,
            identity=NodeIdentity.issue("b", authority),
            registry=REGISTRY,
            **kw,
        ) as b,
    ):
        assert b.address is not None
        peer = await a.connect(b.address)
        assert peer == "b"
        yield a, b, b.address


def tcp_pair(authority: Authority, **kw: Any) -> AbstractAsyncContextManager[tuple[Node, Node, str]]:
    """:func:`pair` over TCP on 127.0.0.1 (free ports)."""
    return pair(authority, TcpTransport(), a_listen="127.0.0.1:0", b_listen="127.0.0.1:0", **kw)


@asynccontextmanager
async def polling_pair(authority: Authority, budget: float) -> AsyncIterator[tuple[Node, Node, str]]:
    """:func:`tcp_pair` with busy polling of ``budget`` seconds, whatever the machine: its load
    and CPU quota (which the poll gate would heed) are left out of these tests."""
    async with tcp_pair(authority, busy_poll=budget) as (a, b, address):
        for node in (a, b):
            poller = node.remote.poller
            assert poller is not None
            poller.gate = PollGate()
            poller.load_check = False
        yield a, b, address


async def test_ask_and_tell_across_nodes_by_type_and_endpoint(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        probe: dict[str, Any] = {}
        await b.spawn(Counter, probe, name="counter")
        ref = a.remote_ref("b", "counter")
        for k in range(1, 51):
            await tell(ref, Add(k))
        assert await ask(ref, Get()) == list(range(1, 51))  # one link: order kept
        back: dict[str, str] = {}
        total = sum(range(1, 51)) + 1
        assert await ask(ref, Add(1), headers={"trace": "t1"}, reply_headers=back) == total
        assert probe["headers"] == {"trace": "t1"}  # caller -> handler
        assert back == {"total": str(total)}  # and back
        assert await ask(ref, {"name": "Ada"}, endpoint="Counter.hello") == "hello Ada"


async def test_typed_errors_cross_with_all_fields(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        with pytest.raises(NotFound) as info:
            await ask(ref, Fail(404))
        assert (info.value.code, info.value.status, info.value.id) == (404, "Not Found", "Counter")
        assert info.value.detail == "no such thing"
        with pytest.raises(InternalServerError) as crash:
            await ask(ref, Fail(500))
        assert "ZeroDivisionError" in crash.value.detail
        # The crashed actor was restarted by its supervisor and serves again.
        assert await ask(ref, Add(2)) == 2
        with pytest.raises(NotFound):
            await ask(a.remote_ref("b", "nobody"), Get())
        with pytest.raises(NotFound):
            await ask(ref, {"x": 1}, endpoint="Counter.nope")


async def test_unencodable_message_fails_at_the_caller(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        with pytest.raises(MicroError) as info:
            await ask(ref, NotRegistered())
        assert info.value.code == 500
        assert await ask(ref, Add(1)) == 1  # the link is still fine


async def test_refs_inside_messages_and_sender_are_usable(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        probe: dict[str, Any] = {}
        local = await a.spawn(Counter, name="local")
        await b.spawn(Counter, probe, name="counter")
        remote = a.remote_ref("b", "counter")
        # b's actor receives a ref to a's actor in the message and asks it back.
        assert await ask(remote, Relay(local, 5)) == 5
        assert await ask(local, Get()) == [5]
        # An actor on b asking a's actor: the sender seen on a is a usable ref to b's actor.
        assert await ask(remote, Relay(local, 1)) == 6
        sender_probe: dict[str, Any] = {}
        relay_src = await a.spawn(Counter, sender_probe, name="src")
        await ask(relay_src, Relay(remote, 3))  # a's actor asks b's actor
        sender = probe["sender"]
        assert sender == relay_src
        assert sender.node == "a"
        assert sender.binding is not None
        # b can use that sender ref to reach a's actor
        assert await ask(sender, Get()) == []


async def test_callee_sees_the_deadline_and_nested_calls_inherit_it(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        probe: dict[str, Any] = {}
        await b.spawn(Counter, probe, name="counter")
        ref = a.remote_ref("b", "counter")
        before = trio.current_time()
        await ask(ref, Add(1), timeout=3.0)
        deadline = probe["deadline"]
        assert deadline is not None
        assert before + 2.0 < deadline <= trio.current_time() + 3.0


async def test_caller_timeout_cancels_the_remote_handler(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        cancelled = trio.Event()
        probe: dict[str, Any] = {"cancelled_event": cancelled}
        await b.spawn(Counter, probe, name="counter")
        ref = a.remote_ref("b", "counter")
        with pytest.raises(RequestTimeout):
            await ask(ref, Sleep(60), timeout=0.2)
        with trio.fail_after(5):
            await cancelled.wait()
        assert await ask(ref, Add(1)) == 1


async def test_caller_cancellation_sends_cancel(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        cancelled, started = trio.Event(), trio.Event()
        probe: dict[str, Any] = {"cancelled_event": cancelled, "started_event": started}
        await b.spawn(Counter, probe, name="counter")
        ref = a.remote_ref("b", "counter")
        async with trio.open_nursery() as nursery:

            async def call() -> None:
                await ask(ref, Sleep(60), timeout=30)

            nursery.start_soon(call)
            await started.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            await cancelled.wait()


async def test_deadline_expiry_on_the_callee_answers_408(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        with pytest.raises(RequestTimeout):
            await ask(ref, Sleep(5), timeout=0.1)


async def test_link_drop_fails_pending_asks_promptly(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        started = [trio.Event() for _ in range(5)]
        refs = []
        for i, event in enumerate(started):
            await b.spawn(Counter, {"started_event": event}, name=f"c{i}")
            refs.append(a.remote_ref("b", f"c{i}"))
        failures: list[BaseException] = []

        async def call(ref: ActorRef) -> None:
            try:
                await ask(ref, Sleep(60), timeout=30)
            except MicroError as exc:
                failures.append(exc)

        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(call, ref)
            for event in started:
                await event.wait()
            start = trio.current_time()
            for link in list(b.remote.peer("a").links):
                await link.conn.inner.aclose()  # the wire breaks under b
        assert trio.current_time() - start < 2.0
        assert len(failures) == 5
        assert all(isinstance(f, ServiceUnavailable) and "unreachable" in f.detail for f in failures)


async def test_remote_death_watch_on_stop_and_on_node_loss(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        send, receive = trio.open_memory_channel[Terminated](10)
        watcher = await a.spawn(Watcher, send, name="watcher")
        target = await b.spawn(Counter, name="t1")
        other = await b.spawn(Counter, name="t2")
        await ask(watcher, a.resolve(target))
        await ask(watcher, a.resolve(other))
        # Round trip on the same link, so that both watch requests have arrived at b.
        await ask(a.remote_ref("b", "t1"), Get())
        await b.stop(target)
        with trio.fail_after(5):
            first = await receive.receive()
        assert first.ref == target and first.reason is None
        for link in list(a.remote.peer("b").links):
            await link.conn.inner.aclose()
        with trio.fail_after(5):
            second = await receive.receive()
        assert second.ref == other
        assert second.reason is not None and "unreachable" in second.reason


async def test_watch_of_a_missing_remote_actor_fires_at_once(authority: Authority) -> None:
    async with pair(authority) as (a, _b, _):
        send, receive = trio.open_memory_channel[Terminated](10)
        watcher = await a.spawn(Watcher, send, name="watcher")
        await ask(watcher, a.remote_ref("b", "ghost"))
        with trio.fail_after(5):
            got = await receive.receive()
        assert got.ref.path == "/user/ghost"


async def test_unknown_node_and_refused_address_fail_fast(authority: Authority) -> None:
    async with pair(authority) as (a, _b, _):
        with pytest.raises(Unreachable, match="no known address"):
            await ask(a.remote_ref("zz", "x"), Get())
        with pytest.raises(ServiceUnavailable):
            await a.connect("nowhere", timeout=1)


async def test_foreign_authority_is_refused(authority: Authority) -> None:
    tr = InprocTransport()
    async with (
        start_node("a", listen="a", transport=tr, identity=NodeIdentity.issue("a", authority)) as a,
        start_node(
            "m", listen="m", transport=tr, identity=NodeIdentity.issue("m", Authority.generate())
        ) as m,
    ):
        with pytest.raises(Unauthorized):
            await m.connect("a", timeout=2)
        with pytest.raises(Unauthorized):
            await a.connect("m", timeout=2)
        assert not a.remote.peers.get("m") or not a.remote.peer("m").links


async def test_expired_certificate_is_refused(authority: Authority) -> None:
    tr = InprocTransport()
    old = NodeIdentity.issue("old", authority, ttl=60, now=1_000_000.0)
    async with (
        start_node("a", listen="a", transport=tr, identity=NodeIdentity.issue("a", authority)) as a,
        start_node("old", transport=tr, identity=old, registry=REGISTRY) as o,
    ):
        await a.spawn(Counter, name="counter")
        # The initiator finishes the XX handshake by sending its certificate, so the refusal
        # shows as the connection closing before any request is served.
        with pytest.raises(MicroError) as info:
            await o.connect("a", timeout=2)
            await ask(o.remote_ref("a", "counter"), Get(), timeout=2)
        assert info.value.code in (401, 503)
        assert "old" not in a.remote.peers or not a.remote.peer("old").links


async def _counter_and_link(a: Node, b: Node) -> tuple[ActorRef, Any]:
    """A Counter on ``b``, asked once from ``a``, and ``a``'s link to ``b``."""
    await b.spawn(Counter, name="counter")
    ref = a.remote_ref("b", "counter")
    assert await ask(ref, Add(1)) == 1
    link = a.remote.peer("b").link
    assert link is not None
    return ref, link


async def test_garbage_after_handshake_closes_only_that_link(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        ref, link = await _counter_and_link(a, b)
        await link.conn.send_frames([b"\x93\x01\x02\x03"])  # a valid frame, not an envelope
        with trio.fail_after(5):
            while a.remote.peer("b").links:
                await a.remote.peer("b").wait_changed()
        # a redials on the next call and b serves it
        assert await ask(ref, Add(1)) == 2


async def test_concurrent_asks_share_one_link(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter", mailbox=bounded(10_000))
        ref = a.remote_ref("b", "counter")
        results: list[int] = []

        async def caller() -> None:
            for _ in range(50):
                results.append(await ask(ref, Add(1)))

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(caller)
        assert sorted(results) == list(range(1, 801))
        assert len(a.remote.peer("b").links) == 1


async def test_simultaneous_dials_settle_on_one_link(authority: Authority) -> None:
    tr = InprocTransport()
    async with (
        start_node("a", listen="a", transport=tr, identity=NodeIdentity.issue("a", authority)) as a,
        start_node("b", listen="b", transport=tr, identity=NodeIdentity.issue("b", authority)) as b,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.connect, "b")
            nursery.start_soon(b.connect, "a")
        with trio.fail_after(5):
            while len(a.remote.peer("b").links) != 1:
                await a.remote.peer("b").wait_changed()
            while len(b.remote.peer("a").links) != 1:
                await b.remote.peer("a").wait_changed()
        link_a = a.remote.peer("b").link
        link_b = b.remote.peer("a").link
        assert link_a is not None and link_b is not None
        assert link_a.initiator and not link_b.initiator  # both kept the one "a" dialed


async def test_full_remote_mailbox_answers_429(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter", mailbox=bounded(1))
        ref = a.remote_ref("b", "counter")
        outcomes: list[Any] = []

        async def call() -> None:
            try:
                outcomes.append(await ask(ref, Sleep(0.2), timeout=5))
            except TooManyRequests as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
        assert any(isinstance(o, TooManyRequests) for o in outcomes)
        assert "slept" in outcomes


async def test_tell_to_unreachable_node_is_a_dead_letter(authority: Authority) -> None:
    async with pair(authority) as (a, _b, _):
        async with a.dead_letters.subscribe() as letters:
            await tell(a.remote_ref("nowhere", "x"), Add(1))
            with trio.fail_after(2):
                letter: DeadLetter = await letters.receive()
        assert "unreachable" in letter.reason


async def test_over_tcp_with_encryption(authority: Authority) -> None:
    async with tcp_pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        for k in range(100):
            await tell(ref, Add(k))
        assert await ask(ref, Get()) == list(range(100))
        link = a.remote.peer("b").link
        assert link is not None and link.conn.session.peer_info.node_id == "b"


async def test_watch_by_path_gets_terminated_with_the_watched_ref(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        send, receive = trio.open_memory_channel[Terminated](10)
        watcher = await a.spawn(Watcher, send, name="watcher")
        target = await b.spawn(Counter, name="t")
        by_path = a.remote_ref("b", "t")  # uid 0: whoever holds the path
        await ask(watcher, by_path)
        await ask(by_path, Get())  # same link, after the watch request
        await b.stop(target)
        with trio.fail_after(5):
            got = await receive.receive()
        assert got.ref == by_path and got.reason is None


async def test_hostile_frames_close_or_are_refused_but_never_take_the_node_down(authority: Authority) -> None:
    from trimicro.actors.remote import _credit_header, _error_of
    from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope

    assert isinstance(_error_of({"code": "x"}), BadRequest)
    assert isinstance(_error_of({"code": 404, "detail": []}), BadRequest)
    assert isinstance(_error_of([1, 2]), BadRequest)
    with pytest.raises(BadRequest):
        _credit_header("²")  # a digit to str.isdigit, not to int()
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        assert await ask(ref, Add(1)) == 1
        link = a.remote.peer("b").link
        assert link is not None
        target = b.ref("counter")
        codec = a.remote.codec
        hostile = [
            # an ask numbered with the wrong parity (a dialed, so its ids are odd)
            Envelope(Kind.ASK, 2, target, None, "Counter.hello", body=codec.encode({"name": "x"})),
            # a stream open with a credit header that is not a number
            Envelope(Kind.STREAM_OPEN, 1001, target, None, "Counter.add", headers={"credit": "²"}),
            # pub/sub and membership messages that are not what they claim
            Envelope(Kind.SYSTEM, 0, None, None, "pubsub.msg", body=codec.encode({"q": [[1]]})),
            Envelope(Kind.SYSTEM, 0, None, None, "swim", body=codec.encode([1, 2, 3])),
        ]
        for env in hostile:
            link.push(encode_envelope(env))
        assert await ask(ref, Add(1)) == 2  # same link, after them: still served, node alive


async def test_an_oversized_reply_is_an_error_not_a_dead_link(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        with pytest.raises(InternalServerError, match="exceeds the frame limit"):
            await ask(ref, Big(5 * 1024 * 1024))  # over the default 4 MiB frame limit
        assert await ask(ref, Add(2)) == 2  # the link survived


class Gate(Actor):
    """Answers ``wait`` only when the test opens the gate: an exchange held in flight."""

    service_name = "Gate"
    max_concurrency = 4

    def __init__(self, entered: trio.Event, gate: trio.Event) -> None:
        self.entered, self.gate = entered, gate

    async def wait(self, body: Any) -> str:
        self.entered.set()
        await self.gate.wait()
        return "through"


async def test_a_duplicate_link_finishes_its_exchanges_before_it_closes(authority: Authority) -> None:
    """The losing link of two simultaneous dials used to close within 2 s and fail the asks in
    flight on it; it now closes once they are answered."""
    tr = InprocTransport()
    entered, gate = trio.Event(), trio.Event()
    async with (
        start_node("a", listen="a", transport=tr, identity=NodeIdentity.issue("a", authority)) as a,
        start_node("b", listen="b", transport=tr, identity=NodeIdentity.issue("b", authority)) as b,
    ):
        await a.spawn(Gate, entered, gate, name="gate")
        await b.connect("a")  # "b" dials first: this link will lose to the one "a" dials
        losing = b.remote.peer("a").link
        assert losing is not None and losing.initiator
        result: list[str] = []

        async def call() -> None:
            result.append(await ask(b.remote_ref("a", "gate"), {}, endpoint="Gate.wait", timeout=30))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await entered.wait()  # the ask is in flight on the losing link
            await a.remote.dial("b", 5)  # the winning link: "a" < "b"
            with trio.fail_after(5):
                while b.remote.peer("a").link is losing:
                    await b.remote.peer("a").wait_changed()
            assert not losing.closed  # retiring, not closed: it still carries the ask
            gate.set()
        assert result == ["through"]
        with trio.fail_after(5):  # then it goes
            while losing in b.remote.peer("a").links:
                await b.remote.peer("a").wait_changed()


async def test_peers_without_links_are_forgotten_and_remote_watches_cleaned(authority: Authority) -> None:
    tr = InprocTransport()
    async with start_node(
        "svc", listen="svc", transport=tr, identity=NodeIdentity.issue("svc", authority)
    ) as svc:
        target = await svc.spawn(Counter, name="counter")
        cell = target.binding
        for i in range(5):  # short-lived clients, as CLI runs are
            identity = NodeIdentity.issue(f"cli-{i}", authority)
            async with start_node(f"cli-{i}", transport=tr, identity=identity, registry=REGISTRY) as cli:
                await cli.connect("svc")
                seen_send, _seen = trio.open_memory_channel[Terminated](1)
                watcher = await cli.spawn(Watcher, seen_send)
                await ask(watcher, cli.remote_ref("svc", "counter"), endpoint="Watcher.watch")
                with trio.fail_after(5):
                    while not cell._watchers:
                        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            while svc.remote.peers:
                await trio.testing.wait_all_tasks_blocked()
        assert not cell._watchers  # the watchers of nodes that are gone are forgotten
        assert await ask(target, Add(2)) == 2  # and the service is none the worse


async def test_many_large_replies_over_tcp_arrive_whole_and_in_order(authority: Authority) -> None:
    """Replies a link's reader writes itself (no scheduler round trip) may be more than the
    socket takes at once: the rest waits as backlog and the writer sends it first. Concurrent
    asks of 1 MiB replies, several socket buffers' worth, all arrive whole."""
    async with tcp_pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        results: dict[int, bytes] = {}

        async def call(i: int) -> None:
            results[i] = await ask(ref, Big(1_000_000 + i), timeout=30)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(call, i)
        assert {i: len(v) for i, v in results.items()} == {i: 1_000_000 + i for i in range(12)}
        assert await ask(ref, Add(1)) == 1  # the link still carries requests afterwards


async def test_stopping_an_actor_fails_requests_from_another_node_still_queued(authority: Authority) -> None:
    """A queued request from another node carries the caller's principal (a sixth field): a stop
    answers it 503 like a local one, and the stop itself does not trip over it."""
    async with pair(authority) as (a, b, _):
        started = trio.Event()
        target = await b.spawn(Counter, {"started_event": started}, name="counter")
        ref = a.remote_ref("b", "counter")
        outcomes: dict[str, str] = {}

        async def call(name: str, msg: Any) -> None:
            try:
                await ask(ref, msg, timeout=20)
                outcomes[name] = "answered"
            except ServiceUnavailable:
                outcomes[name] = "503"

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "busy", Sleep(30))
                await started.wait()  # the actor is busy: the next request queues
                nursery.start_soon(call, "queued", Add(1))
                await trio.testing.wait_all_tasks_blocked()
                assert len(target.binding.mailbox) == 1
                await b.stop(target)
        assert outcomes == {"busy": "503", "queued": "503"}


class BadHeaders(Actor):
    service_name = "BadHeaders"

    async def add(self, msg: Add) -> int:  # no await: answered by the link's reader itself
        self.context.reply_headers["x"] = object()  # type: ignore[assignment]
        return 1


async def test_an_unencodable_reply_fails_that_request_only(authority: Authority) -> None:
    """A reply that cannot be encoded answers 500; the link and the requests in flight on it
    carry on (an error while replying must never reach the link's reader)."""
    async with pair(authority) as (a, b, _):
        started = trio.Event()
        await b.spawn(BadHeaders, name="bad")
        await b.spawn(Counter, {"started_event": started}, name="slow")
        bad, slow = a.remote_ref("b", "bad"), a.remote_ref("b", "slow")
        out: dict[str, Any] = {}

        async def slow_call() -> None:
            out["slow"] = await ask(slow, Sleep(0.5), timeout=10)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_call)
                await started.wait()
                with pytest.raises(InternalServerError, match="not encodable"):
                    await ask(bad, Add(1), timeout=5)
        assert out == {"slow": "slept"}


async def test_a_request_for_a_handler_without_await_needs_no_worker(authority: Authority) -> None:
    """The link's reader answers it itself (``Cell.handle_now``); a handler that awaits still
    runs on a dispatcher worker."""
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        assert await ask(ref, Add(2)) == 2
        assert await ask(ref, {"name": "Ada"}, endpoint="Counter.hello") == "hello Ada"
        assert b.dispatcher.workers == 0
        assert await ask(ref, Sleep(0)) == "slept"
        assert b.dispatcher.workers == 1


async def test_asks_queued_in_one_scheduler_batch_leave_in_one_write_without_the_writer_task(
    authority: Authority,
) -> None:
    """A request with none other in flight on its link is written at once, by its caller
    (it does not wait for the scheduler batch to end); what tasks queue behind it is written
    when trio is about to wait for I/O, all of it in one write, with no turn of the link's
    writer task on the way."""
    async with tcp_pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        assert await ask(ref, Add(0)) == 0
        link = a.remote.peer("b").link
        assert link is not None
        conn: Any = link.conn
        writes: list[int] = []
        writer_sends: list[int] = []
        write_now, send_frames = conn.write_now, conn.send_frames

        def counting_write_now(frames: Any) -> None:
            writes.append(len(frames))
            write_now(frames)

        async def counting_send_frames(frames: Any) -> None:
            writer_sends.append(len(frames))
            await send_frames(frames)

        conn.write_now, conn.send_frames = counting_write_now, counting_send_frames
        answers: list[int] = []

        async def call() -> None:
            answers.append(await ask(ref, Add(1)))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(call)
        assert sorted(answers) == list(range(1, 17))
        assert writes[:1] == [1]  # the first request, alone and at once
        assert writes[1] >= 15  # the fifteen behind it, in one write
        assert writer_sends == []


async def test_tasks_woken_when_a_batch_is_flushed_do_not_wait_for_a_timer(authority: Authority) -> None:
    """The flusher runs after trio has chosen how long to wait for I/O: the tasks it wakes (the
    writer with what the socket did not take, senders waiting for room, ``flush()``) must run
    at once, not at the next timer. The peer runs in another thread's trio run, so that its
    traffic cannot end this run's waits; keepalives are far off (30 s)."""
    ready, peer_address, peer_token = threading.Event(), [], []

    def quiet_tcp(name: str) -> dict[str, Any]:  # keepalives far off
        return {
            "transport": TcpTransport(),
            "identity": NodeIdentity.issue(name, authority),
            "registry": REGISTRY,
            "keepalive": 30,
            "dead_after": 60,
        }

    def peer() -> None:
        async def main() -> None:
            async with start_node("b", listen="127.0.0.1:0", **quiet_tcp("b")) as b:
                await b.spawn(Counter, name="counter")
                done = trio.Event()
                peer_address.append(b.address)
                peer_token.append((trio.lowlevel.current_trio_token(), done))
                ready.set()
                await done.wait()

        trio.run(main)

    thread = threading.Thread(target=peer, daemon=True)
    thread.start()
    try:
        await trio.to_thread.run_sync(ready.wait, 10)
        async with start_node("a", **quiet_tcp("a")) as a:
            peer_id = await a.connect(peer_address[0])
            ref = a.remote_ref(peer_id, "counter")
            with trio.fail_after(5):  # a stalled wait would last until a timer (10 s or more)
                assert await ask(ref, Add(1)) == 1
                for _ in range(8):  # 8 MiB: past the send buffer's high-water mark
                    await tell(ref, {"name": "x" * 1_000_000}, endpoint="Counter.hello")
                link = a.remote.peer(peer_id).link
                assert link is not None
                await link.flush()
                assert await ask(ref, Add(1)) == 2
    finally:
        if peer_token:
            token, done = peer_token[0]
            token.run_sync_soon(done.set)
        await trio.to_thread.run_sync(thread.join, 30)


# ---- busy polling for the reply of a lone request --------------------------------------------


class Latch(Actor):
    """Answers once its gate opens (a handler that takes as long as the test wants)."""

    service_name = "Latch"

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def wait(self, msg: Any) -> str:
        await self.gate.wait()
        return "open"


class _IoWaits(trio.abc.Instrument):
    """Records the timeout of every wait for I/O while ``recording``; wakes ``blocked`` at the
    first one that may sleep (through the run's token, so the wait itself ends at once)."""

    def __init__(self) -> None:
        self.recording = False
        self.timeouts: list[float] = []
        self.blocked = trio.Event()
        self.token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        if self.recording:
            self.timeouts.append(timeout)
            if timeout > 0 and not self.blocked.is_set():
                self.token.run_sync_soon(self.blocked.set)


async def _io_waits_of_one_ask(ref: ActorRef, msg: Any) -> tuple[Any, list[float]]:
    """The answer of ``ask(ref, msg)`` and the timeouts of the I/O waits made meanwhile."""
    waits = _IoWaits()
    trio.lowlevel.add_instrument(waits)
    try:
        waits.recording = True
        answer = await ask(ref, msg)
        waits.recording = False
    finally:
        trio.lowlevel.remove_instrument(waits)
    return answer, waits.timeouts


async def test_a_lone_request_polls_for_its_reply_instead_of_sleeping(authority: Authority) -> None:
    async with polling_pair(authority, 5.0) as (a, b, _):
        await b.spawn(Counter, name="counter")
        ref = a.remote_ref("b", "counter")
        assert await ask(ref, Add(1)) == 1
        poller = a.remote.poller
        assert poller is not None
        before = poller.polls
        answer, timeouts = await _io_waits_of_one_ask(ref, Add(2))
        assert answer == 3
        assert poller.polls > before
        assert timeouts and set(timeouts) == {0}  # never slept while it waited


async def test_without_busy_polling_a_request_sleeps_until_its_reply(authority: Authority) -> None:
    async with tcp_pair(authority, busy_poll=0) as (a, b, _):
        await b.spawn(Counter, name="counter")
        assert a.remote.poller is None
        answer, timeouts = await _io_waits_of_one_ask(a.remote_ref("b", "counter"), Add(2))
        assert answer == 2
        assert max(timeouts) > 0


async def test_busy_polling_stops_after_its_budget_and_for_slow_peers(authority: Authority) -> None:
    """A reply slower than the budget is waited for asleep once the budget is spent; and a
    link whose replies are usually far slower than the budget is not polled for at all."""
    async with polling_pair(authority, 0.05) as (a, b, _):
        gate = trio.Event()
        await b.spawn(Latch, gate, name="latch")
        ref = a.remote_ref("b", "latch")
        poller = a.remote.poller
        assert poller is not None
        waits = _IoWaits()
        trio.lowlevel.add_instrument(waits)
        answers: list[str] = []
        try:
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:

                    async def call() -> None:
                        answers.append(await ask(ref, None, endpoint="Latch.wait"))

                    waits.recording = True
                    nursery.start_soon(call)
                    await waits.blocked.wait()  # the budget is spent: the node sleeps
                    assert poller.polls > 0
                    gate.set()
        finally:
            trio.lowlevel.remove_instrument(waits)
        assert answers == ["open"]

        link = a.remote.peer("b").link
        assert link is not None
        link.poll_time = 1.0  # this peer's replies take about a second
        before = poller.polls
        assert await ask(ref, None, endpoint="Latch.wait") == "open"
        assert poller.polls == before and link.poll_time == 1.0
        while (link.lone_asks + 1) % PROBE_EVERY:  # up to the next probe
            assert await ask(ref, None, endpoint="Latch.wait") == "open"
        assert poller.polls == before
        assert await ask(ref, None, endpoint="Latch.wait") == "open"  # polled for: a probe
        assert poller.polls > before and link.poll_time < 1.0  # the peer is fast again


class _Awake(trio.abc.Instrument):
    """Counts the run's waits for I/O; sets ``done`` at the first that may sleep or the
    ``polls``-th that may not (through the run's token, so the wait ends at once)."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.timeouts: list[float] = []
        self.done = trio.Event()
        self.token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        if self.done.is_set():
            return
        self.timeouts.append(timeout)
        if timeout > 0 or len(self.timeouts) >= self.polls:
            self.token.run_sync_soon(self.done.set)


async def _run_stays_awake(polls: int = 200) -> bool:
    """Block this task until the run has polled for I/O ``polls`` times without sleeping (True)
    or is about to sleep (False): with every task idle, only a busy poller keeps it awake."""
    awake = _Awake(polls)
    trio.lowlevel.add_instrument(awake)
    try:
        with trio.fail_after(10):
            await awake.done.wait()
    finally:
        trio.lowlevel.remove_instrument(awake)
    return max(awake.timeouts) == 0


async def test_after_answering_a_lone_request_a_node_polls_for_the_next(authority: Authority) -> None:
    """A caller in a loop sends its next request soon after each answer: the serving node polls
    for it instead of sleeping, once such requests came within the budget on average."""
    async with polling_pair(authority, 0.5) as (a, b, _):
        a.remote.poller = None  # only the serving node polls in this test
        gate = trio.Event()
        gate.set()
        await b.spawn(Counter, name="counter")
        await b.spawn(Latch, gate, name="latch")
        ref = a.remote_ref("b", "counter")
        assert await ask(ref, Add(1)) == 1  # the first answer: no gap measured yet, no polling
        link = b.remote.peer("a").link
        assert link is not None and link.next_gap == math.inf
        assert not await _run_stays_awake(polls=50)
        assert await ask(ref, Add(1)) == 2
        assert link.next_gap < 0.5  # from the first answer to this request
        poller = b.remote.poller
        assert poller is not None
        before = poller.polls
        assert await _run_stays_awake()  # b polls for a's next request
        assert poller.polls > before
        assert not await _run_stays_awake(polls=10**9)  # (until its budget is spent)
        # An answer from a handler that awaited (outside the reader's step) polls too.
        assert await ask(a.remote_ref("b", "latch"), None, endpoint="Latch.wait") == "open"
        assert await _run_stays_awake()


async def test_polling_for_a_next_request_ends_by_itself_after_its_budget(authority: Authority) -> None:
    """Nothing needs to end the serving side's polling (a link that closes meanwhile leaves
    nothing behind): with no next request, the run sleeps again once the budget is spent. A
    peer whose requests come late is not polled for."""
    async with polling_pair(authority, 0.05) as (a, b, _):
        a.remote.poller = None
        ref, _link = await _counter_and_link(a, b)
        assert await ask(ref, Add(1)) == 2
        poller = b.remote.poller
        assert poller is not None
        before = poller.polls
        assert await ask(ref, Add(1)) == 3  # b polls after this answer (the gaps were short)
        assert not await _run_stays_awake(polls=10**9)  # returns when the run is about to sleep
        assert poller.polls > before
        link = b.remote.peer("a").link
        assert link is not None
        link.next_gap = 60.0  # as after requests that came a minute apart
        assert await ask(ref, Add(1)) == 4
        assert not await _run_stays_awake(polls=50)  # no polling after this answer
        assert link.next_gap > 1.0  # (the measured gaps are capped: it takes time to come down)
        assert poller._waiting == 0  # the serving side leaves no count behind


async def test_without_busy_polling_a_node_sleeps_between_requests(authority: Authority) -> None:
    async with tcp_pair(authority, busy_poll=0) as (a, b, _):
        ref, _link = await _counter_and_link(a, b)
        for k in range(2, 5):
            assert await ask(ref, Add(1)) == k
        assert not await _run_stays_awake()


async def test_busy_poller_polls_only_while_someone_waits() -> None:
    from trimicro.actors.busypoll import BusyPoller

    with pytest.raises(ValueError, match="busy_poll"):
        BusyPoller(None, -1.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        poller = BusyPoller(nursery, 60.0)
        poller.begin()
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        assert poller.polls > 5
        poller.end(time.perf_counter())
        for _ in range(5):
            await trio.lowlevel.checkpoint()
        parked = poller.polls
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        assert poller.polls == parked  # parked: no more polling
        poller.begin()
        for _ in range(5):
            await trio.lowlevel.checkpoint()
        assert poller.polls > parked  # woken again by the next lone request
        poller.end(time.perf_counter())
        nursery.cancel_scope.cancel()
    late = BusyPoller(nursery, 60.0)  # a node stopping: its nursery is closed
    late.begin()  # no polling task, and no error for the request
    late.end(time.perf_counter())
    assert late.polls == 0


# ---- tells to one actor travel in batches ---------------------------------------------------


class Held(Actor):
    """Records every Add; its first one waits until the test opens ``gate`` (mailbox fills).
    ``all_in`` is set when ``expect`` of them arrived."""

    service_name = "Held"

    def __init__(self, gate: trio.Event, expect: int, all_in: trio.Event) -> None:
        self.gate = gate
        self.expect = expect
        self.all_in = all_in
        self.seen: list[int] = []

    async def add(self, msg: Add) -> None:
        await self.gate.wait()
        self.seen.append(msg.k)
        if len(self.seen) == self.expect:
            self.all_in.set()

    async def get(self, msg: Get) -> list[int]:
        return self.seen


async def test_tells_queued_together_leave_in_one_frame_in_order(authority: Authority) -> None:
    """Tells to one actor queued in one scheduler batch share one envelope (a SYSTEM ``tells``
    frame); a tell to another endpoint in between starts a new batch, so order is kept."""
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter", mailbox=bounded(10_000))
        ref = a.remote_ref("b", "counter")
        assert await ask(ref, Get()) == []
        link = a.remote.peer("b").link
        assert link is not None
        sent = link.sent
        for k in range(100):  # no await that yields in between: one batch (a.budget permitting)
            await tell(ref, Add(k))
        await tell(ref, Add(1000), endpoint="Counter.add")  # another endpoint: a batch of its own
        for k in range(100, 110):
            await tell(ref, Add(k))
        assert await ask(ref, Get()) == [*range(100), 1000, *range(100, 110)]
        assert link.sent - sent <= 6  # three batches (plus a split at the fairness yield) and the ask


async def test_a_full_mailbox_holds_the_rest_of_a_batch_back_and_loses_nothing(
    authority: Authority,
) -> None:
    async with pair(authority) as (a, b, _):
        gate, all_in = trio.Event(), trio.Event()
        await b.spawn(Held, gate, 200, all_in, name="held", mailbox=bounded(4))
        ref = a.remote_ref("b", "held")
        assert await ask(ref, Get()) == []  # (b's hello has come: tells go in batches)
        link_a = a.remote.peer("b").link
        assert link_a is not None
        sent = link_a.sent
        with trio.fail_after(10):
            async with b.dead_letters.subscribe() as letters:
                for k in range(200):
                    await tell(ref, Add(k))
                assert link_a.sent - sent < 20  # in a few batches, not 200 frames
                link_b = b.remote.peer("a").link
                assert link_b is not None
                while not link_b.busy:  # the reader waits for room in the middle of a batch
                    await trio.lowlevel.checkpoint()
                gate.set()
                await all_in.wait()  # (an ask now could meet the full mailbox: 429)
                assert await ask(ref, Get()) == list(range(200))
                with pytest.raises(trio.WouldBlock):
                    letters.receive_nowait()


async def test_a_malformed_tells_batch_is_a_dead_letter_and_the_link_lives(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        ref, link = await _counter_and_link(a, b)
        target = ActorRef("b", "/user/counter", 0)
        async with b.dead_letters.subscribe() as letters:
            for body in (b"\x92\x01\x02", b"\xc1", b"\x91\xa3Add"):  # [1, 2], invalid, [endpoint]
                env = Envelope(Kind.SYSTEM, 0, target, None, "tells", "application/msgpack", {}, 0, body)
                link.push(encode_envelope(env))
            with trio.fail_after(5):
                reasons = [(await letters.receive()).reason for _ in range(3)]
        assert all("malformed tells batch" in r or "tells batch is" in r for r in reasons), reasons
        assert await ask(ref, Add(1)) == 2  # same link, still serving
        assert a.remote.peer("b").link is link


async def test_a_full_batch_of_tells_waits_for_room_without_deepening(authority: Authority) -> None:
    """1024 tells in one batch to an actor whose mailbox holds one, from a peer that would not
    hold its tells back (an older node): the reader waits for room about a thousand times in a
    row; every tell arrives, in order, and the link lives."""
    async with pair(authority) as (a, b, _):
        gate, all_in = trio.Event(), trio.Event()
        await b.spawn(Held, gate, 1024, all_in, name="held", mailbox=bounded(1))
        ref = a.remote_ref("b", "held")
        assert await ask(ref, Get()) == []
        link = a.remote.peer("b").link
        link_b = b.remote.peer("a").link
        assert link is not None and link_b is not None
        link_b.hold_tells = False  # (a holding peer's tells wait in a backlog: test_tell_flow.py)
        codec = a.remote.codec
        for k in range(1024):  # no await in between: one batch
            assert link.tell_later(ref, None, "", codec.content_type, codec.encode(Add(k)))
        assert len(link.out) == 1
        with trio.fail_after(20):
            while not link_b.busy:
                await trio.lowlevel.checkpoint()
            gate.set()
            await all_in.wait()
        assert await ask(ref, Get()) == list(range(1024))
        assert a.remote.peer("b").link is link and not link.closed


async def test_a_tells_batch_fits_its_frame_whatever_the_names(authority: Authority) -> None:
    """The room left for bodies is measured on the batch's own envelope (names in UTF-8)."""
    async with pair(authority) as (a, b, _):
        await b.spawn(Counter, name="counter")
        assert await ask(a.remote_ref("b", "counter"), Get()) == []  # b's hello came before
        link = a.remote.peer("b").link
        assert link is not None and link.batch_tells  # b said it understands batches
        link.batch_tells = False  # as an older node would: every tell its own frame
        assert not link.tell_later(a.remote_ref("b", "counter"), None, "", "application/msgpack", b"\x01")
        link.batch_tells = True
        a.remote.max_frame_size = 64 * 1024
        target = ActorRef("b", "/user/" + "漢" * 100, 7)
        sender = ActorRef("a", "/user/" + "字" * 100, 9)
        body = b"\x00" * 3247  # 20 of them fill what a count of characters would leave
        for _ in range(60):  # no await in between: batches only
            assert link.tell_later(target, sender, "Svc." + "端" * 50, "application/" + "x" * 200, body)
        batches = [f for f in link.out if isinstance(f, TellBatch)]
        assert len(batches) >= 3
        assert all(len(f.frame()) <= 64 * 1024 for f in batches)
        assert len(batches[0].frame()) > 60 * 1024  # and they are filled


async def test_tells_still_queued_when_a_link_closes_are_dead_letters(authority: Authority) -> None:
    """A tell the node never sent is not lost in silence: closing the link writes nothing more,
    and what was queued (batched or not) goes to dead letters, in order, with the reason."""
    async with pair(authority) as (a, b, _):
        ref, link = await _counter_and_link(a, b)
        codec = a.remote.codec
        async with a.dead_letters.subscribe() as letters:
            for k in range(5):  # a batch
                assert link.tell_later(ref, None, "", codec.content_type, codec.encode(Add(k)))
            env = Envelope(
                Kind.TELL, 0, ref, None, "", codec.content_type, {"h": "1"}, 0, codec.encode(Add(99))
            )
            link.push(encode_envelope(env))  # a tell with headers: a frame of its own
            link.close("closed by the test")
            with trio.fail_after(5):
                got = [await letters.receive() for _ in range(6)]
        assert [d.message for d in got] == [Add(k) for k in range(5)] + [Add(99)]
        assert {d.reason for d in got} == {"unreachable: closed by the test"}
        assert {d.recipient for d in got} == {ref}
        assert await ask(ref, Get()) == [1]  # a new link; b saw none of them
        # With nobody watching dead letters, they are only counted (nothing is decoded).
        link = a.remote.peer("b").link
        assert link is not None
        counted = a.dead_letters.count
        for k in range(3):
            assert link.tell_later(ref, None, "", codec.content_type, codec.encode(Add(k)))
        link.push(encode_envelope(env))
        link.close("closed by the test")
        with trio.fail_after(5):
            while not link.closed:
                await trio.lowlevel.checkpoint()
        assert a.dead_letters.count == counted + 4


async def test_a_flush_waiting_when_its_link_closes_returns(authority: Authority) -> None:
    async with pair(authority) as (a, b, _):
        _ref, link = await _counter_and_link(a, b)
        link.push(encode_envelope(Envelope(Kind.SYSTEM, endpoint="heartbeat")))
        link.close("closed by the test")  # nothing more is written: the flush cannot complete
        with trio.fail_after(5):
            await link.flush()  # ... and returns when the link is closed
        assert link.closed
