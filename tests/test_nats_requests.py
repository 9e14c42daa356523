"""Request/reply without a loop task per request (:mod:`trimicro.cluster.natsio.requests`),
against a server of the tests' own."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import trio

from tests.nats_server import NatsServer, nats_server
from trimicro.cluster.natsio import NatsConnection, NatsOptions
from trimicro.mailbox.errors import RequestTimeout, ServiceUnavailable

__all__ = ["nats_server"]  # the fixture, used by name


async def _connection(server: NatsServer, timeout: float = 5.0) -> NatsConnection:
    conn = NatsConnection(NatsOptions(servers=(server.url,), timeout=timeout), purpose="test")
    await conn.connect()
    return conn


async def _echo(conn: NatsConnection, subject: str, *, answer: bool = True) -> None:
    """A responder on ``subject`` (on the loop): echoes the request, or keeps silent."""
    nc = conn.nc

    async def subscribe() -> None:
        async def respond(msg: object) -> None:
            if answer:
                await nc.publish(msg.reply, b"echo:" + msg.data)  # type: ignore[attr-defined]

        await nc.subscribe(subject, cb=respond)
        await nc.flush()

    await conn.run(subscribe, "subscribe")


async def test_concurrent_requests_each_get_their_own_answer(nats_server: NatsServer) -> None:
    conn = await _connection(nats_server)
    try:
        subject = f"t.{uuid.uuid4().hex}"
        await _echo(conn, subject)
        answers: dict[int, bytes] = {}

        async def ask(i: int) -> None:
            answers[i] = (await conn.requests.request(subject, str(i).encode())).data

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(ask, i)
        assert answers == {i: b"echo:" + str(i).encode() for i in range(40)}
        assert not conn.requests._waiting
    finally:
        await conn.aclose()


async def test_a_request_nobody_answers_times_out_and_one_nobody_hears_is_refused(
    nats_server: NatsServer,
) -> None:
    conn = await _connection(nats_server, timeout=0.3)
    try:
        silent = f"t.{uuid.uuid4().hex}"
        await _echo(conn, silent, answer=False)
        with pytest.raises(RequestTimeout):
            await conn.requests.request(silent, b"x")
        with pytest.raises(ServiceUnavailable, match="no responders"):
            await conn.requests.request(f"t.{uuid.uuid4().hex}", b"x")
        assert not conn.requests._waiting
    finally:
        await conn.aclose()


async def test_a_cancelled_waiter_hands_the_descriptor_on(nats_server: NatsServer) -> None:
    """The first caller owns the loop's descriptor; cancelled, it must pass it to a caller still
    waiting, whose answer would otherwise wake nobody."""
    conn = await _connection(nats_server)
    try:
        silent, echo = f"t.{uuid.uuid4().hex}", f"t.{uuid.uuid4().hex}"
        await _echo(conn, silent, answer=False)
        await _echo(conn, echo)
        got: list[bytes] = []

        async def second() -> None:
            got.append((await conn.requests.request(echo, b"2")).data)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                first = trio.CancelScope()

                async def owner() -> None:
                    with first:
                        await conn.requests.request(silent, b"1")

                nursery.start_soon(owner)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(second)
                await trio.testing.wait_all_tasks_blocked()
                first.cancel()
        assert got == [b"echo:2"] and not conn.requests._waiting
    finally:
        await conn.aclose()


async def test_a_coroutine_started_at_once_goes_on_as_a_task_when_it_waits(nats_server: NatsServer) -> None:
    conn = await _connection(nats_server)
    try:
        done = asyncio.Event()
        steps: list[str] = []

        async def waits() -> None:
            steps.append("started")
            await asyncio.sleep(0.01)
            steps.append("resumed")
            done.set()

        conn.bridge.hosted.run_now(waits())
        assert steps == ["started"]  # ran at once, in this task, up to its first wait
        await conn.bridge.call(done.wait, timeout=5)
        assert steps == ["started", "resumed"]
    finally:
        await conn.aclose()
