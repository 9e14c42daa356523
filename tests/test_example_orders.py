"""The order flow example (examples/orders): each service alone with the testing kit's ``unit``,
the services together on in-process nodes (retries and backoff in virtual time), and the one
command run as a newcomer runs it (a real process: HTTP gateway, TCP links, LMDB stores)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from example_apps import ROOT, run_app

from trimicro.actors import (
    BadRequest,
    Conflict,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    ask,
)
from trimicro.cluster import Cluster, RetryPolicy
from trimicro.cluster.store import MemoryStore, Record
from trimicro.testing import FakeRef, InprocCluster, Published, open_cluster, unit

sys.path.insert(0, str(ROOT / "examples"))

from orders.app import wait_interest
from orders.chaos import Chaos, Fault
from orders.model import Charge, Ledger, Order, OrderId, PlaceOrder, Receipt, dump, types
from orders.notifier import Mail, Notifier, Outbox
from orders.payment import KEYS, LEDGER, PENDING, PENDING_TTL, Payments, payment_id
from orders.shop import PAID_TOPIC, Orders

CHARGE = {"order_id": "o-0001", "amount_cents": 700, "idempotency_key": "o-0001"}

# ---- the payment service alone --------------------------------------------------------------


async def test_a_repeated_charge_is_taken_once() -> None:
    async with unit(Payments) as payments:
        first = await payments.call("Payments.charge", CHARGE)  # a map, as the gateway sends it
        again = await payments.call("Payments.charge", Charge("o-0001", 700, "o-0001"))
        assert again == first and first.payment_id.startswith("pay-")
        ledger = await payments.call("Payments.ledger")
        assert ledger == Ledger([first], requests=2)
        other = await payments.call(
            "Payments.charge", {**CHARGE, "order_id": "o-2", "idempotency_key": "o-2"}
        )
        assert other.payment_id != first.payment_id
        assert len((await payments.call("Payments.ledger")).charges) == 2


async def test_a_key_names_one_charge() -> None:
    async with unit(Payments) as payments:
        await payments.call("Payments.charge", CHARGE)
        with pytest.raises(Conflict, match="used for another charge"):
            await payments.call("Payments.charge", {**CHARGE, "amount_cents": 701})
        assert len((await payments.call("Payments.ledger")).charges) == 1
        with pytest.raises(MicroError) as bad:
            await payments.call("Payments.charge", {**CHARGE, "amount_cents": 0})
        assert bad.value.code == 400


async def test_two_payment_actors_on_one_store_racing_on_a_key_charge_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with unit(Payments) as payments:
        rival = await payments.node.spawn(Payments, name="rival")  # same node: same store
        receipts: list[Receipt] = []

        async def charge(ref: Any) -> None:
            for _ in range(20):  # a loser may find the winner's claim pending: 503, retry later
                try:
                    receipts.append(
                        await ask(ref, Charge("o-0001", 700, "o-0001"), endpoint="Payments.charge")
                    )
                    return
                except ServiceUnavailable:
                    await trio.sleep(0.1)  # backoff in virtual time, as the client's retries

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(charge, payments.ref)
                nursery.start_soon(charge, rival)
        assert len(set(receipts)) == 1 and len(receipts) == 10
        store = payments.cluster.store
        assert len(await store.list(table=LEDGER)) == 1


class LedgerDown(MemoryStore):
    """A store whose ledger table fails the next ``failures`` writes with ``error``; with
    ``lands``, each of those writes lands first (the reply is what is lost)."""

    def __init__(self, failures: int, error: Exception, *, lands: bool = False) -> None:
        super().__init__()
        self.failures, self.error, self.lands = failures, error, lands

    async def write(self, record: Record, **options: Any) -> None:
        if options.get("table") == LEDGER and self.failures > 0:
            self.failures -= 1
            if self.lands:
                await super().write(record, **options)
            raise self.error
        await super().write(record, **options)


async def test_a_charge_the_ledger_refused_lets_go_of_its_key() -> None:
    store = LedgerDown(failures=1, error=BadRequest("ledger refuses the record"))
    async with unit(Payments, store=store) as payments:
        with pytest.raises(BadRequest, match="ledger refuses"):
            await payments.call("Payments.charge", CHARGE)
        assert await store.list(table=KEYS) == []  # surely not charged: the claim is released
        receipt = await payments.call("Payments.charge", CHARGE)  # so the retry charges
        assert (await payments.call("Payments.ledger")).charges == [receipt]


async def test_a_ledger_write_that_landed_but_timed_out_is_not_charged_again() -> None:
    store = LedgerDown(failures=1, error=RequestTimeout("ledger write timed out"), lands=True)
    async with unit(Payments, store=store) as payments:
        with pytest.raises(RequestTimeout):
            await payments.call("Payments.charge", CHARGE)
        (taken,) = (await payments.call("Payments.ledger")).charges  # it landed all the same
        retry = await payments.call("Payments.charge", CHARGE)  # as @idempotent allows
        assert retry == taken and retry.payment_id == payment_id(CHARGE["idempotency_key"])
        assert (await payments.call("Payments.ledger")).charges == [taken]  # once
        (claim,) = await store.read("o-0001", table=KEYS)
        assert claim.metadata == {}  # the retry completed the pending claim


class Hanging(MemoryStore):
    """A store whose first ledger write lands, then never returns (its reply is lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.landed = False

    async def write(self, record: Record, **options: Any) -> None:
        await super().write(record, **options)
        if options.get("table") == LEDGER and not self.landed:
            self.landed = True
            await trio.sleep_forever()


async def test_a_ledger_write_cancelled_by_the_callers_deadline_is_not_charged_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Hanging()
    async with unit(Payments, store=store) as payments:
        with pytest.raises(RequestTimeout):  # the handler is cancelled at the request's deadline
            await payments.call("Payments.charge", CHARGE, timeout=5)
        assert store.landed
        retry = await payments.call("Payments.charge", CHARGE)  # as @idempotent allows
        assert (await payments.call("Payments.ledger")).charges == [retry]  # one payment


async def test_a_charge_lost_between_claim_and_ledger_is_not_answered_with_a_receipt() -> None:
    async with unit(Payments) as payments:
        store = payments.cluster.store
        claim = Receipt(payment_id("o-0001"), "o-0001", 700)
        await store.write(Record("o-0001", dump(claim), metadata=PENDING), if_version=0, table=KEYS)
        with pytest.raises(ServiceUnavailable, match="in progress or its outcome is unknown"):
            await payments.call("Payments.charge", CHARGE)  # nothing in the ledger: no receipt
        assert (await payments.call("Payments.ledger")).charges == []
        with pytest.raises(Conflict, match="used for another charge"):
            await payments.call("Payments.charge", {**CHARGE, "amount_cents": 701})


async def test_a_pending_claim_whose_charge_never_landed_lapses_and_the_key_charges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = LedgerDown(failures=1, error=ServiceUnavailable("ledger unavailable"))
    store.now = trio.current_time  # the claim's ttl in virtual time
    async with unit(Payments, store=store) as payments:
        with pytest.raises(ServiceUnavailable, match="ledger unavailable"):
            await payments.call("Payments.charge", CHARGE)  # outcome unknown: claim kept
        with pytest.raises(ServiceUnavailable, match="outcome is unknown"):
            await payments.call("Payments.charge", CHARGE)
        await trio.sleep(PENDING_TTL + 1)  # the claim lapses
        receipt = await payments.call("Payments.charge", CHARGE)
        assert receipt.payment_id == payment_id("o-0001")
        assert (await payments.call("Payments.ledger")).charges == [receipt]


# ---- the orders service alone ---------------------------------------------------------------


# --8<-- [start:unit]
def paying(receipts: list[Charge]) -> Any:
    """A fake payment service's answer: a receipt for the charge, recorded."""

    def answer(charge: Charge) -> Receipt:
        receipts.append(charge)
        return Receipt(f"pay-{len(receipts)}", charge.order_id, charge.amount_cents)

    return answer


async def test_an_order_is_charged_by_its_id_stored_paid_and_announced() -> None:
    charges: list[Charge] = []
    payments = FakeRef("payments", replies={"Payments.charge": paying(charges)})
    async with unit(Orders, services={"payments": payments}) as orders:
        order = await orders.call("Orders.place", {"customer": "ada", "item": "tea", "qty": 2})
        assert order == Order("o-0001", "ada", "tea", 2, 700, status="paid", payment_id="pay-1")
        assert charges == [Charge("o-0001", 700, idempotency_key="o-0001")]
        assert orders.published == [Published(PAID_TOPIC, order)]
        assert await orders.call("Orders.get", {"id": "o-0001"}) == order  # from the store
        second = await orders.ask(PlaceOrder("bob", "cake", 1))
        assert (second.id, second.amount_cents) == ("o-0002", 500)


# --8<-- [end:unit]


async def test_an_order_whose_payment_failed_is_kept_unpaid_and_not_announced() -> None:
    payments = FakeRef("payments", replies={"Payments.charge": ServiceUnavailable("card network down")})
    async with unit(Orders, services={"payments": payments}) as orders:
        with pytest.raises(ServiceUnavailable, match="o-0001 is saved but not paid: card network down"):
            await orders.call("Orders.place", {"customer": "ada", "item": "tea", "qty": 1})
        stored = await orders.ask(OrderId("o-0001"))
        assert (stored.status, stored.payment_id) == ("payment_failed", "")
        assert orders.published == []


async def test_orders_refuse_bad_bodies_and_unknown_ids() -> None:
    async with unit(Orders, services={"payments": FakeRef("payments")}) as orders:
        for body, field in (
            ({"customer": "ada", "item": "caviar", "qty": 1}, "item"),
            ({"customer": "ada", "item": "tea", "qty": 0}, "qty"),
            ({"customer": "", "item": "tea", "qty": 1}, "customer"),
            ({"customer": "ada", "item": "tea", "qty": 1, "extra": 1}, "extra"),
        ):
            with pytest.raises(MicroError) as bad:
                await orders.call("Orders.place", body)
            assert bad.value.code == 400 and field in bad.value.detail, body
        with pytest.raises(NotFound, match="no order 'o-9'"):
            await orders.call("Orders.get", {"id": "o-9"})
        assert orders.published == []


# ---- the notifier alone ---------------------------------------------------------------------

PAID = Order("o-0001", "ada", "tea", 2, 700, status="paid", payment_id="pay-1")


async def test_the_notifier_mails_the_customer_of_a_paid_order() -> None:
    outbox = Outbox()
    async with unit(Notifier, outbox) as notifier:
        await notifier.cluster.subscribe(PAID_TOPIC, notifier.ref)  # as the app subscribes it
        await notifier.publish(PAID_TOPIC, PAID)  # returns once the notifier has handled it
        # As the gateway's POST /api/publish/order.paid would carry it: a map.
        await notifier.publish(PAID_TOPIC, {**attrs.asdict(PAID), "customer": "bob"})
        assert outbox.sent == [
            Mail("ada", "order o-0001 paid", "2 x tea, 7.00 EUR. Thanks!"),
            Mail("bob", "order o-0001 paid", "2 x tea, 7.00 EUR. Thanks!"),
        ]


async def test_the_notifier_drops_what_is_not_an_order_and_carries_on() -> None:
    outbox = Outbox()
    async with unit(Notifier, outbox) as notifier:
        await notifier.cluster.subscribe(PAID_TOPIC, notifier.ref)
        before = notifier.actor
        for junk in ({"id": 7}, "hello", None, [1, 2]):
            (delivery,) = await notifier.publish(PAID_TOPIC, junk)
            assert delivery.error is None, junk
        assert outbox.sent == []
        await notifier.publish(PAID_TOPIC, PAID)
        assert [m.to for m in outbox.sent] == ["ada"]
        assert notifier.actor is before  # never failed, so never restarted


# ---- the services together, on in-process nodes, in virtual time --------------------------


@asynccontextmanager
async def shop(retry: RetryPolicy) -> AsyncIterator[tuple[InprocCluster, Chaos, Outbox, Cluster]]:
    """The app's nodes on the kit's in-process cluster (no sockets, timers in trio time)."""
    chaos, outbox = Chaos("Payments.charge"), Outbox()
    async with open_cluster(types=types()) as cluster:
        await cluster.add_node("payments", services=[Payments], store=MemoryStore(), middleware=[chaos])
        orders = await cluster.add_node("orders", services=[Orders], store=MemoryStore(), retry=retry)
        notify = await cluster.add_node("notify")
        await notify.subscribe(PAID_TOPIC, await notify.node.spawn(Notifier, outbox, name="notifier"))
        await wait_interest(orders, "notify", PAID_TOPIC)
        yield cluster, chaos, outbox, orders


async def test_a_lost_reply_is_retried_and_charged_once(autojump_clock: trio.testing.MockClock) -> None:
    async with shop(RetryPolicy(attempts=3, backoff=0.5)) as (cluster, chaos, outbox, _):
        chaos.plan.extend([Fault.LOST_REPLY])
        order = await cluster.client.call("orders", "Orders.place", PlaceOrder("ada", "tea", 2))
        assert order.status == "paid" and chaos.injected == [Fault.LOST_REPLY]
        ledger = await cluster.client.call("payments", "Payments.ledger")
        assert ledger.requests == 2  # the handler charged, its reply was lost, the retry came
        assert [(c.order_id, c.payment_id) for c in ledger.charges] == [(order.id, order.payment_id)]
        (mail,) = await outbox.wait_for(1, timeout=10)
        assert (mail.to, mail.subject) == ("ada", f"order {order.id} paid")


async def test_payments_down_after_every_retry_leaves_the_order_unpaid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with shop(RetryPolicy(attempts=3, backoff=0.5)) as (cluster, chaos, outbox, _):
        chaos.plan.extend([Fault.BUSY] * 3)
        started = trio.current_time()
        with pytest.raises(ServiceUnavailable, match="saved but not paid"):
            await cluster.client.call("orders", "Orders.place", PlaceOrder("ada", "tea", 2))
        attempts = cluster.probes["payments"].to("payments")
        assert len(attempts) == 3 and chaos.injected == [Fault.BUSY] * 3
        assert trio.current_time() > started  # backoff between the attempts (trio time)
        order = await cluster.client.call("orders", "Orders.get", OrderId("o-0001"))
        assert order.status == "payment_failed"
        ledger = await cluster.client.call("payments", "Payments.ledger")
        assert ledger == Ledger([], requests=0)  # refused before the handler: nothing charged
        assert outbox.sent == []


# ---- the one command ------------------------------------------------------------------------


def test_the_one_command_runs_the_flow_and_checks_it() -> None:
    out = run_app(
        "examples/orders/run.py",
        [
            "check: 3 payments taken for 3 orders: ok",
            "check: each order has the payment taken: ok",
            "the charge handler ran 4 times; faults injected: lost reply, busy, busy",
            "-> 400",
            "'qty' must be >= 1",
            "mail to ada: order o-0001 paid",
            "mail to bob: order o-0002 paid",
            "mail to cy: order o-0003 paid",
        ],
    )
    assert out.count('"status": "paid"') >= 4  # three placed, one read back


def test_without_the_gateway_extra_the_command_says_what_to_install() -> None:
    hide_starlette = (
        "import runpy, sys; sys.modules['starlette'] = None; sys.argv = ['run.py'];"
        " runpy.run_path('examples/orders/run.py', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", hide_starlette],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "pip install 'trimicro[gateway]'" in result.stderr and "Traceback" not in result.stderr
