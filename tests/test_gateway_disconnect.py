"""A client that goes away cancels its call in the service, and only calls that last are watched."""

from __future__ import annotations

from typing import Any, cast

import pytest
import trio
import trio.testing
from starlette.requests import Request
from test_gateway import gateway

from trimicro.actors import MicroError
from trimicro.cluster.gateway.disconnect import TICK, WATCH_AFTER, DisconnectWatch


class FakeRequest:
    """What the watcher reads of a request: ``receive``, which ends with ``http.disconnect``."""

    def __init__(self) -> None:
        self.gone = trio.Event()
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_a_short_call_starts_no_watcher_and_a_long_one_is_cancelled_when_its_client_goes(
    autojump_clock: Any,
) -> None:
    watch = DisconnectWatch()
    cancelled = trio.Event()

    async def quick() -> str:
        await trio.sleep(WATCH_AFTER - TICK - 0.01)
        return "quick"

    async def slow() -> str:
        try:
            await trio.sleep(3600)
        except trio.Cancelled:
            cancelled.set()
            raise
        return "slow"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        short = FakeRequest()
        for _ in range(20):
            assert await watch.call(cast(Request, short), quick) == "quick"
        await trio.sleep(1)  # every short call has come due on the ticker by now
        assert (watch.watchers, short.reads) == (0, 0)

        long = FakeRequest()
        failed: list[MicroError] = []
        returned = trio.Event()

        async def caller() -> None:
            with pytest.raises(MicroError) as err:
                await watch.call(cast(Request, long), slow)
            failed.append(err.value)
            returned.set()

        nursery.start_soon(caller)
        await trio.sleep(WATCH_AFTER + 0.01)  # a watcher starts by WATCH_AFTER into the call
        assert (watch.watchers, long.reads) == (1, 1)  # watching, and the call still runs
        assert not cancelled.is_set()
        long.gone.set()
        with trio.fail_after(5):
            await cancelled.wait()
            await returned.wait()
        assert failed[0].code == 499
        nursery.cancel_scope.cancel()


async def test_a_client_gone_before_its_watcher_started_still_cancels_the_call() -> None:
    """The client sends a slow call and closes at once: the watcher starts later and still
    finds the disconnect, and the service sees its call cancelled."""
    async with gateway() as (gw, _, shop):
        host, port = gw.url.removeprefix("http://").split(":")
        body = b'{"seconds": 30}'
        sock = await trio.open_tcp_stream(host, int(port))
        await sock.send_all(
            b"POST /api/shop/slow HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await sock.aclose()
        with trio.fail_after(10):
            await shop.cancelled.wait()


class BrokenRequest(FakeRequest):
    """A connection whose ``receive`` fails (a server's error for a dead socket, say)."""

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        raise OSError("connection reset")


async def test_a_watcher_that_fails_leaves_the_other_calls_watched(autojump_clock: Any) -> None:
    """One client's broken connection is logged; the ticker and the other watchers go on, so a
    later client that goes away still cancels its call."""
    watch = DisconnectWatch()

    async def slow() -> str:
        await trio.sleep(3600)
        return "slow"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        await trio.testing.wait_all_tasks_blocked()  # the ticker runs: calls register with it
        broken = BrokenRequest()

        async def call(request: FakeRequest, done: list[BaseException | str]) -> None:
            try:
                done.append(await watch.call(cast(Request, request), slow))
            except MicroError as exc:
                done.append(exc)

        first: list[BaseException | str] = []
        nursery.start_soon(call, broken, first)
        await trio.sleep(2 * (WATCH_AFTER + TICK))
        assert broken.reads == 1  # its watcher ran and failed
        long = FakeRequest()
        second: list[BaseException | str] = []
        nursery.start_soon(call, long, second)
        await trio.sleep(2 * (WATCH_AFTER + TICK))
        assert long.reads == 1  # the ticker still starts watchers
        long.gone.set()
        await trio.sleep(TICK)
        assert len(second) == 1 and isinstance(second[0], MicroError) and second[0].code == 499
        assert first == []  # the broken one's call runs on, unwatched
        nursery.cancel_scope.cancel()
