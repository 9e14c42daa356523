"""tell and ask check for cancellation with :func:`cancel_pending` (a plain call, not trio's
coroutine): it must answer as trio does, and a cancelled tell or ask must deliver nothing."""

from __future__ import annotations

import math

import pytest
import trio

from trimicro.actors import Actor, ask, start_node, tell
from trimicro.actors.cancelpoint import cancel_pending


class Counter(Actor):
    def __init__(self) -> None:
        self.n = 0

    async def add(self, k: int) -> int:
        self.n += k
        return self.n


async def test_answers_as_trio_does() -> None:
    assert cancel_pending() is False
    assert trio.current_effective_deadline() == math.inf
    with trio.CancelScope() as scope:
        scope.cancel()
        assert cancel_pending() is True
        assert trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True):  # shielded: not cancelled here
            assert cancel_pending() is False
            await trio.lowlevel.checkpoint()  # and a checkpoint does not raise
        with pytest.raises(trio.Cancelled):
            await trio.lowlevel.checkpoint()
    assert cancel_pending() is False


async def test_a_cancelled_tell_or_ask_delivers_nothing() -> None:
    async with start_node("cancelpoint") as node:
        ref = await node.spawn(Counter)
        for call in (tell, ask):
            with trio.CancelScope() as scope:
                scope.cancel()
                await call(ref, 5)
                raise AssertionError("a cancelled call returned")  # pragma: no cover
            assert scope.cancelled_caught
        assert await ask(ref, 1) == 1  # neither 5 arrived
        await tell(ref, 2)  # not cancelled: delivered
        assert await ask(ref, 0) == 3
