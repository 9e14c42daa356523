"""The orders service: takes an order, keeps it in the store, has it paid, announces it.

``Orders.place`` saves the order (``new``), charges it through the payment service with the
order's id as the idempotency key, saves it again (``paid``, or ``payment_failed`` when the
payment service still fails after the client's retries) and publishes the paid order on
``order.paid`` for whoever wants to know (the notifier). The store is the service's only
state: any node serving ``Orders`` on the same store answers ``Orders.get`` for any order.

The service's dependencies come in through its constructor (the store, a :class:`PaymentsClient`,
an :class:`Events` publisher), so a test builds it with fakes and the app with the cluster.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from trimicro.actors import Actor, Conflict, MicroError, NotFound, ServiceUnavailable
from trimicro.cluster.client import Client
from trimicro.cluster.store import Record, Store

from .model import PRICES, Charge, Order, OrderId, PlaceOrder, Receipt, dump, load

#: The store tables: the orders by id, and the counter that numbers them.
ORDERS = "orders"
SEQUENCE = "sequence"
#: Where paid orders are announced.
PAID_TOPIC = "order.paid"


class PaymentsClient(Protocol):
    async def charge(self, request: Charge) -> Receipt: ...


class Events(Protocol):
    async def publish(self, topic: str, body: Any) -> int: ...


@attrs.frozen
class ClusterPayments:
    """The payment service by name: a node the selector picks, and the client's retries (a 503
    is retried because ``Payments.charge`` is marked idempotent), all within ``timeout``."""

    client: Client
    timeout: float = 10.0

    async def charge(self, request: Charge) -> Receipt:
        receipt: Receipt = await self.client.call(
            "payments", "Payments.charge", request, timeout=self.timeout
        )
        return receipt


class Orders(Actor):
    service_name = "Orders"

    def __init__(self, store: Store, payments: PaymentsClient, events: Events) -> None:
        self.store = store
        self.payments = payments
        self.events = events

    async def place(self, msg: PlaceOrder) -> Order:
        order = Order(await self._next_id(), msg.customer, msg.item, msg.qty, PRICES[msg.item] * msg.qty)
        await self._save(order)
        charge = Charge(order.id, order.amount_cents, idempotency_key=order.id)
        try:
            receipt = await self.payments.charge(charge)
        except MicroError as exc:
            await self._save(attrs.evolve(order, status="payment_failed"))
            raise ServiceUnavailable(f"order {order.id} is saved but not paid: {exc.detail}") from exc
        paid = attrs.evolve(order, status="paid", payment_id=receipt.payment_id)
        await self._save(paid)
        await self.events.publish(PAID_TOPIC, paid)
        return paid

    async def get(self, msg: OrderId) -> Order:
        try:
            (record,) = await self.store.read(msg.id, table=ORDERS)
        except NotFound:
            raise NotFound(f"no order {msg.id!r}") from None
        return load(Order, record.value)

    async def _save(self, order: Order) -> None:
        await self.store.write(Record(order.id, dump(order)), table=ORDERS)

    async def _next_id(self) -> str:
        """The next order number, by compare-and-swap: two nodes on one store never share one."""
        for _ in range(10):
            try:
                (record,) = await self.store.read("next", table=SEQUENCE)
                number, version = int(record.value), record.version
            except NotFound:
                number, version = 1, 0
            try:
                await self.store.write(
                    Record("next", b"%d" % (number + 1)), if_version=version, table=SEQUENCE
                )
            except Conflict:
                continue  # another node took this number: read again
            return f"o-{number:04d}"
        raise ServiceUnavailable("could not number the order (the store is too busy); try again")
