"""Middleware: the onion at three levels (node, class, call), both sides, local and remote."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.actors import (
    Actor,
    BadRequest,
    Call,
    Forbidden,
    InternalServerError,
    Middleware,
    Next,
    Node,
    RequestTimeout,
    ServiceUnavailable,
    Stream,
    ask,
    open_stream,
    start_node,
    tell,
    try_tell,
)
from trimicro.actors.actor import handler_table
from trimicro.actors.middleware import Kind, Logging, Retry, Side, Timeout, passes_through
from trimicro.actors.supervision import Backoff
from trimicro.mailbox.codec import TypeRegistry
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport import InprocTransport

REGISTRY = TypeRegistry()


@REGISTRY.message("mwtest.Echo")
@attrs.frozen
class Echo:
    text: str


@REGISTRY.message("mwtest.Note")
@attrs.frozen
class Note:
    text: str


Trace = list[str]


def recorder(name: str, trace: Trace, exited: list[trio.Event] | None = None) -> Middleware:
    """A middleware that records ``name>`` on the way in and ``name<`` on the way out (not for
    ``wait_noted``, the tests' own synchronisation)."""

    async def mw(call: Call, call_next: Next) -> Any:
        if call.endpoint == "wait_noted":
            return await call_next(call)
        trace.append(f"{name}>")
        try:
            return await call_next(call)
        finally:
            trace.append(f"{name}<")
            if exited is not None and call.side is Side.SERVER:
                exited[-1].set()

    return mw


def make_actor(trace: Trace, class_mw: tuple[Middleware, ...] = ()) -> type[Actor]:
    """An actor class whose handlers record themselves in ``trace``."""

    class Traced(Actor):
        middleware = class_mw

        def __init__(self) -> None:
            self.noted = trio.Event()

        async def echo(self, msg: Echo) -> str:
            trace.append("handler")
            return f"{msg.text}|{self.context.headers.get('x-tag', '')}"

        async def note(self, msg: Note) -> None:
            trace.append("handler")
            self.noted.set()

        async def chat(self, stream: Stream) -> None:
            trace.append("handler")
            async for item in stream:
                await stream.send(item)

        async def wait_noted(self, _: dict[str, Any]) -> None:
            await self.noted.wait()

    return Traced


@asynccontextmanager
async def two_nodes(a_mw: list[Middleware], b_mw: list[Middleware]) -> AsyncIterator[tuple[Node, Node]]:
    """Node ``a`` connected to node ``b`` (in-process transport), each with its middleware."""
    authority = Authority.generate()
    transport = InprocTransport()

    def node(name: str, middleware: list[Middleware]) -> AbstractAsyncContextManager[Node]:
        return start_node(
            name,
            listen=f"node-{name}",
            transport=transport,
            identity=NodeIdentity.issue(name, authority),
            registry=REGISTRY,
            middleware=middleware,
        )

    async with node("a", a_mw) as a, node("b", b_mw) as b:
        assert b.address is not None
        await a.connect(b.address)
        yield a, b


# ---- the order of the onion -------------------------------------------------------------------


def expected(per_call: list[str], node_client: list[str], node_server: list[str], cls: list[str]) -> Trace:
    """The documented order: client (call's, node's), then server (node's, class's), handler."""
    layers = per_call + node_client + node_server + cls
    return [f"{n}>" for n in layers] + ["handler"] + [f"{n}<" for n in reversed(layers)]


async def test_ask_order_locally_call_node_class() -> None:
    trace: Trace = []
    cls = make_actor(trace, (recorder("k1", trace), recorder("k2", trace)))
    async with start_node(middleware=[recorder("n1", trace), recorder("n2", trace)]) as node:
        ref = await node.spawn(cls)
        reply = await ask(ref, Echo("hi"), middleware=[recorder("c1", trace), recorder("c2", trace)])
    assert reply == "hi|"
    # The node's middleware runs on both sides: around the call, then around the handler.
    assert trace == expected(["c1", "c2"], ["n1", "n2"], ["n1", "n2"], ["k1", "k2"])


async def test_tell_and_stream_order_locally() -> None:
    trace: Trace = []
    cls = make_actor(trace, (recorder("k", trace),))
    served = [trio.Event()]
    async with start_node(middleware=[recorder("n", trace, served)]) as node:
        ref = await node.spawn(cls)
        await tell(ref, Note("x"), middleware=[recorder("c", trace)])
        await ask(ref, {}, endpoint="wait_noted")
        # A tell's client chain ends when the message is queued, before the handler runs.
        assert trace == ["c>", "n>", "n<", "c<", "n>", "k>", "handler", "k<", "n<"]
        trace.clear()
        served.append(trio.Event())
        async with open_stream(ref, "chat", middleware=[recorder("c", trace)]) as stream:
            await stream.send(1)
            assert await stream.receive() == 1
            # The client chain wraps the opening; the server chain the handler's whole run.
            assert trace == ["c>", "n>", "n<", "c<", "n>", "k>", "handler"]
        with trio.fail_after(5):  # the handler ends once the stream is closed
            await served[-1].wait()
    assert trace[-2:] == ["k<", "n<"]


async def test_order_across_two_nodes_for_ask_tell_and_stream() -> None:
    trace: Trace = []
    cls = make_actor(trace, (recorder("k", trace),))
    async with two_nodes([recorder("a", trace)], [recorder("b", trace)]) as (a, b):
        await b.spawn(cls, name="svc")
        ref = a.remote_ref("b", "svc")
        assert await ask(ref, Echo("x"), middleware=[recorder("c", trace)]) == "x|"
        # Client chain on a, server chain on b: node b's client side is not involved.
        assert trace == expected(["c"], ["a"], ["b"], ["k"])
        trace.clear()
        await tell(ref, Note("y"), middleware=[recorder("c", trace)])
        await ask(ref, {}, endpoint="wait_noted")
        assert trace == ["c>", "a>", "a<", "c<", "b>", "k>", "handler", "k<", "b<"]
        trace.clear()
        async with open_stream(ref, "Traced.chat", middleware=[recorder("c", trace)]) as stream:
            await stream.send("z")
            assert await stream.receive() == "z"
            # Across nodes the opening waits for the handler's acceptance, so the two chains
            # interleave: each in its own order.
            assert [t for t in trace if t[0] in "ca"] == ["c>", "a>", "a<", "c<"]
            assert [t for t in trace if t[0] in "bkh"] == ["b>", "k>", "handler"]


@settings(max_examples=25, deadline=None)
@given(
    per_call=st.lists(st.sampled_from("pqr"), max_size=3),
    node_mw=st.lists(st.sampled_from("nmo"), max_size=3),
    class_mw=st.lists(st.sampled_from("kjl"), max_size=3),
)
def test_random_stacks_compose_in_the_documented_order(
    per_call: list[str], node_mw: list[str], class_mw: list[str]
) -> None:
    trace: Trace = []
    names = {
        "call": [f"c{i}{n}" for i, n in enumerate(per_call)],
        "node": [f"n{i}{n}" for i, n in enumerate(node_mw)],
    }
    names["class"] = [f"k{i}{n}" for i, n in enumerate(class_mw)]
    cls = make_actor(trace, tuple(recorder(n, trace) for n in names["class"]))

    async def main() -> None:
        async with start_node(middleware=[recorder(n, trace) for n in names["node"]]) as node:
            ref = await node.spawn(cls)
            call_mw = [recorder(n, trace) for n in names["call"]] or None
            assert await ask(ref, Echo("x"), middleware=call_mw) == "x|"

    trio.run(main)
    assert trace == expected(names["call"], names["node"], names["node"], names["class"])


# ---- what a middleware may do ----------------------------------------------------------------


async def test_short_circuit_on_both_sides_locally_and_remotely() -> None:
    trace: Trace = []

    async def cached(call: Call, call_next: Next) -> Any:
        return "from cache"

    async def refuse(call: Call, call_next: Next) -> Any:
        raise Forbidden("not you")

    cls = make_actor(trace, (refuse,))
    async with two_nodes([], []) as (a, b):
        local = await a.spawn(cls)
        assert await ask(local, Echo("x"), middleware=[cached]) == "from cache"
        with pytest.raises(Forbidden, match="not you"):
            await ask(local, Echo("x"))
        await b.spawn(cls, name="svc")
        with pytest.raises(Forbidden, match="not you"):  # crossed the wire as the handler's error
            await ask(a.remote_ref("b", "svc"), Echo("x"))
        # A typed error is an answer: the actor is still serving.
        assert await ask(a.remote_ref("b", "svc"), Echo("x"), middleware=[cached]) == "from cache"
    assert trace == []


async def test_message_and_header_rewrites_reach_the_handler() -> None:
    trace: Trace = []

    async def tag(call: Call, call_next: Next) -> Any:
        call.headers["x-tag"] = "client"
        return await call_next(call)

    async def shout(call: Call, call_next: Next) -> Any:
        assert call.side is Side.SERVER
        assert call.headers["x-tag"] == "client"  # the client's header arrived
        call.message = Echo(call.message.text.upper())
        call.headers["x-tag"] += "+server"
        return await call_next(call)

    cls = make_actor(trace, (shout,))
    async with two_nodes([], []) as (a, b):
        local = await a.spawn(cls)
        assert await ask(local, Echo("hi"), middleware=[tag]) == "HI|client+server"
        await b.spawn(cls, name="svc")
        assert await ask(a.remote_ref("b", "svc"), Echo("hi"), middleware=[tag]) == "HI|client+server"
        headers = {"x-tag": "mine"}
        assert await ask(local, Echo("hi"), headers=headers, middleware=[tag]) == "HI|client+server"
        assert headers == {"x-tag": "mine"}  # the caller's dict is not changed under it


async def test_server_middleware_sees_remote_requests_with_their_sender_and_deadline() -> None:
    seen: list[Call] = []

    async def spy(call: Call, call_next: Next) -> Any:
        if call.side is Side.SERVER:
            seen.append(call)
        return await call_next(call)

    trace: Trace = []
    async with two_nodes([], [spy]) as (a, b):
        svc = await b.spawn(make_actor(trace), name="svc")

        class Caller(Actor):
            async def go(self, _: dict[str, Any]) -> str:
                result: str = await ask(a.remote_ref("b", "svc"), Echo("r"), timeout=5.0)
                return result

        caller = await a.spawn(Caller)
        assert await ask(caller, {}, endpoint="go") == "r|"
    (call,) = seen
    assert call.kind is Kind.ASK and call.side is Side.SERVER
    assert call.sender is not None and call.sender.node == "a"
    assert call.deadline is not None  # a remote request carries the caller's budget
    assert call.target == svc


async def test_retry_retries_503_but_not_400() -> None:
    attempts: list[int] = []

    class Flaky(Actor):
        async def work(self, body: dict[str, Any]) -> str:
            attempts.append(body["code"])
            if len(attempts) < 3:
                raise ServiceUnavailable("busy") if body["code"] == 503 else BadRequest("no")
            return "done"

    retry = Retry(attempts=3, backoff=Backoff(min_delay=0.001, max_delay=0.002))
    async with start_node() as node:
        ref = await node.spawn(Flaky)
        assert await ask(ref, {"code": 503}, endpoint="work", middleware=[retry]) == "done"
        assert attempts == [503, 503, 503]
        attempts.clear()
        with pytest.raises(BadRequest):
            await ask(ref, {"code": 400}, endpoint="work", middleware=[retry])
        assert attempts == [400]
        attempts.clear()
        with pytest.raises(ServiceUnavailable):  # gives up after its attempts
            await ask(
                ref, {"code": 503}, endpoint="work", middleware=[Retry(attempts=2, backoff=retry.backoff)]
            )
        assert attempts == [503, 503]


async def test_timeout_bounds_the_handler_on_the_server_and_the_ask_on_the_client() -> None:
    seen: list[float | None] = []

    async def spy(call: Call, call_next: Next) -> Any:
        if call.side is Side.CLIENT:
            seen.append(call.timeout)
        return await call_next(call)

    class Stuck(Actor):
        middleware = (Timeout(0.05),)

        async def hang(self, _: dict[str, Any]) -> None:
            await trio.Event().wait()

    async with start_node(ask_timeout=30.0, middleware=[spy]) as node:
        ref = await node.spawn(Stuck)
        with pytest.raises(RequestTimeout):
            await ask(ref, {}, endpoint="hang", middleware=[Timeout(20.0)])
    assert seen == [20.0]


async def test_a_server_middleware_failing_is_the_handler_failing() -> None:
    restarts: list[int] = []
    restarted = trio.Event()

    async def broken(call: Call, call_next: Next) -> Any:
        raise RuntimeError("bug in middleware")

    class Victim(Actor):
        middleware = (broken,)

        async def started(self) -> None:
            restarts.append(1)
            if len(restarts) == 2:
                restarted.set()

        async def echo(self, msg: Echo) -> str:
            return msg.text

    async with start_node() as node:
        ref = await node.spawn(Victim)
        with pytest.raises(InternalServerError, match="bug in middleware"):
            await ask(ref, Echo("x"))
        with trio.fail_after(5):  # the supervisor restarted it, as for a failing handler
            await restarted.wait()


async def test_inline_handlers_run_through_server_middleware_locally_and_remotely() -> None:
    calls: list[str] = []

    async def suspending(call: Call, call_next: Next) -> Any:
        await trio.lowlevel.checkpoint()  # a middleware may suspend: the handler must not run inline
        calls.append(call.side.value)
        return await call_next(call)

    class Quick(Actor):
        middleware = (suspending,)

        async def echo(self, msg: Echo) -> str:  # no await: inline without middleware
            return msg.text

    assert handler_table(Quick).inline  # the class's own table keeps it inline
    async with two_nodes([], []) as (a, b):
        assert not a.handlers_for(Quick).inline
        local = await a.spawn(Quick)
        assert await ask(local, Echo("l")) == "l"
        await b.spawn(Quick, name="q")
        assert await ask(a.remote_ref("b", "q"), Echo("r")) == "r"
    assert calls == ["server", "server"]


async def test_inline_handlers_stay_inline_inside_middleware_that_passes_through() -> None:
    calls: list[str] = []

    @passes_through
    async def counting(call: Call, call_next: Next) -> Any:
        calls.append(call.side.value)
        return await call_next(call)

    @passes_through
    async def liar(call: Call, call_next: Next) -> Any:
        await trio.lowlevel.checkpoint()  # declared as passing through, yet suspends
        return await call_next(call)

    class Quick(Actor):
        middleware = (counting, Logging(), Timeout(5.0), Retry())

        async def echo(self, msg: Echo) -> str:
            return msg.text

    class Lied(Quick):
        middleware = (liar,)

    async with two_nodes([], []) as (a, b):
        table = a.handlers_for(Quick)
        assert table.inline and table.inline_for(Echo("x"), None) is not None
        assert await ask(await a.spawn(Quick), Echo("l")) == "l"
        await b.spawn(Quick, name="q")
        assert await ask(a.remote_ref("b", "q"), Echo("r")) == "r"  # run by b's link reader
        await b.spawn(Lied, name="liar")
        with pytest.raises(InternalServerError, match="suspended"):
            await ask(a.remote_ref("b", "liar"), Echo("r"))
    assert calls == ["server", "server"]


async def test_zero_middleware_keeps_the_plain_tables_and_paths() -> None:
    trace: Trace = []
    cls = make_actor(trace)
    async with start_node() as node:
        assert node.client_chain is None
        assert node.handlers_for(cls) is handler_table(cls)
        ref = await node.spawn(cls)
        assert ref.binding.handlers is handler_table(cls)
        assert await ask(ref, Echo("x")) == "x|"
    assert trace == ["handler"]


async def test_try_tell_runs_its_chain_synchronously() -> None:
    trace: Trace = []
    cls = make_actor(trace)

    async def suspends(call: Call, call_next: Next) -> Any:
        await trio.lowlevel.checkpoint()
        return await call_next(call)

    async with start_node() as node:
        ref = await node.spawn(cls)
        assert try_tell(ref, Note("x"), middleware=[recorder("c", trace)])
        with pytest.raises(RuntimeError, match="must not wait"):
            try_tell(ref, Note("y"), middleware=[suspends])
        await ask(ref, {}, endpoint="wait_noted")
    assert trace[:3] == ["c>", "c<", "handler"]
    assert trace.count("handler") == 1  # the refused one was never sent


async def test_logging_middleware_logs_each_side(caplog: pytest.LogCaptureFixture) -> None:
    trace: Trace = []
    caplog.set_level(logging.DEBUG, logger="trimicro.calls")
    async with start_node(middleware=[Logging()]) as node:
        ref = await node.spawn(make_actor(trace))
        await ask(ref, Echo("x"))
    lines = [r.getMessage() for r in caplog.records if r.name == "trimicro.calls"]
    assert [line.split()[:2] for line in lines] == [["ask", "server"], ["ask", "client"]]
    assert all(line.endswith(" ok") for line in lines)


def test_a_middleware_must_be_callable() -> None:
    async def main() -> None:
        async with start_node(middleware=["nope"]):  # type: ignore[list-item]
            pass

    with pytest.raises(TypeError, match="async callable"):
        trio.run(main)
