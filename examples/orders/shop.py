"""The orders service: takes an order, keeps it in the store, has it paid, announces it.

``Orders.place`` saves the order (``new``), charges it through the payment service with the
order's id as the idempotency key, saves it again (``paid``, or ``payment_failed`` when the
payment service still fails after the client's retries) and publishes the paid order on
``order.paid`` for whoever wants to know (the notifier). The store is the service's only
state: any node serving ``Orders`` on the same store answers ``Orders.get`` for any order.
An actor handles one message at a time, so a payment that is being retried holds the next
order back; to take more orders at once, serve ``Orders`` on more nodes sharing the store (the
order numbers come from a compare-and-swap, so they never collide).

Like every service that ``trimicro run`` can serve, it takes what it needs from the cluster of
its node: the store (``start_cluster(store=...)``, ``trimicro run --store``), calls by service
name (:func:`trimicro.cluster.call`: the selector, and retries with backoff within the deadline)
and publishing. A test gives it fakes of those (``trimicro.testing.unit``).
"""

from __future__ import annotations

from typing import Any

import attrs

from trimicro.actors import Actor, Conflict, MicroError, NotFound, ServiceUnavailable
from trimicro.cluster import call
from trimicro.cluster.store import Record, Store

from .model import PRICES, Charge, Order, OrderId, PlaceOrder, Receipt, dump, load

#: The store tables: the orders by id, and the counter that numbers them.
ORDERS = "orders"
SEQUENCE = "sequence"
#: Where paid orders are announced.
PAID_TOPIC = "order.paid"


class Orders(Actor):
    service_name = "Orders"

    #: How long a charge may take, retries included.
    payment_timeout = 10.0

    @property
    def cluster(self) -> Any:
        """The node's cluster (a :class:`~trimicro.cluster.Cluster`, or a test's fake of one)."""
        return self.context.node.extensions["cluster"]

    @property
    def store(self) -> Store:
        store: Store | None = self.cluster.store
        if store is None:
            raise ServiceUnavailable("the orders service needs a store (start_cluster(store=...))")
        return store

    async def place(self, msg: PlaceOrder) -> Order:
        order = Order(await self._next_id(), msg.customer, msg.item, msg.qty, PRICES[msg.item] * msg.qty)
        await self._save(order)
        charge = Charge(order.id, order.amount_cents, idempotency_key=order.id)
        try:
            # Retried after a 503 by the cluster's client: Payments.charge is marked idempotent.
            receipt: Receipt = await call("payments", "Payments.charge", charge, timeout=self.payment_timeout)
        except MicroError as exc:
            await self._save(attrs.evolve(order, status="payment_failed"))
            raise ServiceUnavailable(f"order {order.id} is saved but not paid: {exc.detail}") from exc
        paid = attrs.evolve(order, status="paid", payment_id=receipt.payment_id)
        await self._save(paid)
        await self.cluster.publish(PAID_TOPIC, paid)
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
