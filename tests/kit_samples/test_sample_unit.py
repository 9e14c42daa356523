"""Testing one actor alone with ``trimicro.testing.unit``: included in docs/guides/testing.md."""

from __future__ import annotations

# --8<-- [start:imports]
from typing import Any

import attrs
import trio
import trio.testing

from trimicro.actors import Actor, ActorRef, BadRequest, ask, tell
from trimicro.cluster import call
from trimicro.cluster.broker import Message
from trimicro.testing import FakeRef, unit

# --8<-- [end:imports]


# --8<-- [start:counter]
@attrs.frozen
class Add:
    k: int


@attrs.frozen
class Flush:
    pass


class Counter(Actor):
    """Counts, tells an audit actor every change, publishes the total every 10 s."""

    def __init__(self, audit: ActorRef) -> None:
        self.n = 0
        self.audit = audit

    async def started(self) -> None:
        self.context.every(10.0, Flush())

    async def add(self, msg: Add) -> int:
        if msg.k < 0:
            raise BadRequest("k must not be negative")
        self.n += msg.k
        await tell(self.audit, {"added": msg.k})
        return self.n

    async def flush(self, msg: Flush) -> None:
        await self.context.node.extensions["cluster"].publish("counter.total", {"n": self.n})


# --8<-- [end:counter]


# --8<-- [start:unit]
async def test_call_a_handler_by_endpoint_name() -> None:
    audit = FakeRef("audit")
    async with unit(Counter, audit) as counter:
        assert await counter.call("Counter.add", {"k": 2}) == 2  # a map, as JSON callers send
        assert await counter.ask(Add(3)) == 5  # a typed body, by its type
        assert counter.actor.n == 5
        assert await audit.wait_tells(2) == [{"added": 2}, {"added": 3}]


async def test_errors_reach_the_caller_typed() -> None:
    async with unit(Counter, FakeRef()) as counter:
        try:
            await counter.call("Counter.add", {"k": -1})
        except BadRequest as exc:
            assert "negative" in exc.detail
        else:
            raise AssertionError("a negative k was accepted")


async def test_a_tell_returns_when_the_handler_is_done() -> None:
    async with unit(Counter, FakeRef()) as counter:
        delivery = await counter.tell(Add(4))
        assert delivery.error is None and delivery.result == 4
        assert counter.actor.n == 4


# --8<-- [end:unit]


# --8<-- [start:timers]
async def test_timers_run_by_advancing_the_clock(autojump_clock: trio.testing.MockClock) -> None:
    async with unit(Counter, FakeRef()) as counter:
        await counter.call("Counter.add", {"k": 1})
        await counter.advance(35)  # 35 s of trio time: three ticks, in no real time
        assert [p.body for p in counter.published] == [{"n": 1}] * 3
        assert {p.topic for p in counter.published} == {"counter.total"}


# --8<-- [end:timers]


# --8<-- [start:fakes]
@attrs.frozen
class Buy:
    item: str
    price: int


class Checkout(Actor):
    """Asks an injected ref for stock, and calls the payments service by name."""

    def __init__(self, stock: ActorRef) -> None:
        self.stock = stock

    async def buy(self, msg: Buy) -> dict[str, Any]:
        left = await ask(self.stock, {"item": msg.item}, endpoint="Stock.reserve")
        receipt = await call("payments", "Payments.charge", {"amount": msg.price})
        return {"left": left, "receipt": receipt}


async def test_fakes_script_replies_and_record_what_they_got() -> None:
    stock = FakeRef(replies={"Stock.reserve": lambda body: 9 if body["item"] == "book" else 0})
    payments = FakeRef(replies={"Payments.charge": lambda body: f"paid {body['amount']}"})
    async with unit(Checkout, stock, services={"payments": payments}) as checkout:
        assert await checkout.call("Checkout.buy", {"item": "book", "price": 12}) == {
            "left": 9,
            "receipt": "paid 12",
        }
        assert stock.asks == [{"item": "book"}]
        assert payments.asks == [{"amount": 12}]


async def test_a_fake_can_fail_as_the_real_service_would() -> None:
    payments = FakeRef(replies={"Payments.charge": BadRequest("card declined")})
    stock = FakeRef(replies={"Stock.reserve": 1})
    async with unit(Checkout, stock, services={"payments": payments}) as checkout:
        try:
            await checkout.ask(Buy("book", 12))
        except BadRequest as exc:
            assert exc.detail == "card declined"
        else:
            raise AssertionError("the declined card went through")


# --8<-- [end:fakes]


# --8<-- [start:subscriber]
class Mailer(Actor):
    """Subscribes to new orders and tells the outbox to send a mail for each."""

    def __init__(self, outbox: ActorRef) -> None:
        self.outbox = outbox

    async def started(self) -> None:
        await self.context.node.extensions["cluster"].subscribe("orders.*", self.context.ref)

    async def on_order(self, msg: Message) -> None:
        await tell(self.outbox, f"mail about order {msg.body['id']} ({msg.topic})")


async def test_a_subscriber_gets_what_is_published() -> None:
    outbox = FakeRef("outbox")
    async with unit(Mailer, outbox) as mailer:
        [delivery] = await mailer.publish("orders.new", {"id": 7})  # returns once handled
        assert delivery.error is None
        assert await mailer.publish("payments.new", {"id": 8}) == []  # no matching subscription
        assert await outbox.wait_tells(1) == ["mail about order 7 (orders.new)"]


# --8<-- [end:subscriber]
