"""Handlers without ``await`` run inline on a direct ask, without a cancel scope.

A coroutine with no suspension opcode completes in one step; the runtime relies on that to
skip the trio cancel scope a blocking handler needs. These tests pin the classification (it
must never call a handler that can block "inline") and the behaviour of the inline path.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import Actor, ask, start_node
from trimicro.actors.actor import HandlerTable, never_suspends
from trimicro.mailbox.errors import BadRequest, InternalServerError


@attrs.frozen
class Add:
    k: int


async def plain(x: int) -> int:
    return x + 1


async def awaits(x: int) -> int:
    await trio.lowlevel.checkpoint()
    return x


async def awaits_in_branch(x: int) -> int:
    if x < 0:
        await trio.sleep(1)
    return x


async def async_with(lock: trio.Lock) -> None:
    async with lock:
        pass


async def async_for(it: AsyncIterator[int]) -> int:
    total = 0
    async for v in it:
        total += v
    return total


async def comprehension(it: AsyncIterator[int]) -> list[int]:
    return [v async for v in it]


async def awaits_in_inner_function(x: int) -> Any:
    async def inner() -> int:
        await trio.lowlevel.checkpoint()
        return x

    return inner  # the inner coroutine function is not awaited here: this one never suspends


def sync(x: int) -> int:
    return x


def wrapped(fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*a: Any) -> Any:
        return await fn(*a)

    return wrapper


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (plain, True),
        (awaits_in_inner_function, True),
        (awaits, False),
        (awaits_in_branch, False),
        (async_with, False),
        (async_for, False),
        (comprehension, False),
        (sync, False),  # not a coroutine function: no claim made
        (wrapped(plain), False),  # a wrapper awaits: conservative
        (functools.partial(plain, 1), False),
    ],
)
def test_never_suspends_classifies_by_the_code(fn: Any, expected: bool) -> None:
    assert never_suspends(fn) is expected


class Mixed(Actor):
    def __init__(self) -> None:
        self.n = 0

    async def add(self, msg: Add) -> int:
        if msg.k < 0:
            raise BadRequest("k must not be negative")
        if msg.k == 13:
            raise ValueError("unlucky")
        self.n += msg.k
        return self.n

    async def slow(self, msg: dict[str, Any]) -> int:
        await trio.sleep(msg["s"])
        return self.n


def test_handler_table_marks_only_handlers_without_await() -> None:
    table = HandlerTable(Mixed)
    assert Mixed.add in table.inline
    assert Mixed.slow not in table.inline


async def test_inline_ask_keeps_the_runtime_semantics() -> None:
    """Replies, typed errors (the actor carries on) and failures (the actor restarts)."""
    async with start_node() as node:
        ref = await node.spawn(Mixed, name="m")
        assert await ask(ref, Add(2)) == 2
        assert await ask(ref, {"k": 3}, endpoint="Mixed.add") == 5
        with pytest.raises(BadRequest):
            await ask(ref, Add(-1))
        assert await ask(ref, Add(1)) == 6  # state kept after a typed error
        with pytest.raises(InternalServerError) as exc:
            await ask(ref, Add(13))
        assert "ValueError" in exc.value.detail
        assert await ask(ref, Add(1), timeout=5) == 1  # a fresh instance after the restart


async def test_a_handler_that_awaits_still_times_out(autojump_clock: Any) -> None:
    """The scoped path is kept for handlers that can block: the deadline still reaches them."""
    from trimicro.mailbox.errors import RequestTimeout

    async with start_node() as node:
        ref = await node.spawn(Mixed)
        t0 = trio.current_time()
        with pytest.raises(RequestTimeout):
            await ask(ref, {"s": 50}, endpoint="Mixed.slow", timeout=2.0)
        assert trio.current_time() - t0 == pytest.approx(2.0)
        assert await ask(ref, Add(4)) == 4  # the actor is free again


def test_context_of_an_actor_never_spawned_is_a_clear_attribute_error() -> None:
    actor = Mixed()
    assert not hasattr(actor, "context")
    with pytest.raises(AttributeError, match="not running: spawn it on a node"):
        _ = actor.context


async def test_a_direct_ask_opens_a_cancel_scope_only_for_a_handler_that_can_block() -> None:
    async with start_node() as node:
        ref = await node.spawn(Mixed)
        cell = ref.binding
        assert await ask(ref, Add(1)) == 1
        assert cell._scopes is None  # created with the first scope this actor ever needed
        assert await ask(ref, {"s": 0}, endpoint="Mixed.slow") == 1
        assert cell._scopes is not None
