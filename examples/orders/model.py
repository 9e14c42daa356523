"""The order flow's messages: what the services send each other, and how they are stored.

Every message is a frozen attrs class: the services' handlers are chosen by these types, the
HTTP gateway checks JSON bodies against them (a 400 names the field that does not fit), and
the registry shows their fields in ``/openapi.json``. :func:`types` names them for the wire, so
a typed ``Order`` published by one node arrives as an ``Order`` on another.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import attrs
import cattrs

from trimicro.mailbox.codec import TypeRegistry

T = TypeVar("T")

#: The shop's price list, in cents (an order for anything else is a 400).
PRICES = {"tea": 350, "coffee": 420, "cake": 500}


@attrs.frozen
class PlaceOrder:
    """``POST /api/orders/Orders.place``: what a customer asks for."""

    customer: str = attrs.field(validator=attrs.validators.min_len(1))
    item: str = attrs.field(validator=attrs.validators.in_(sorted(PRICES)))
    qty: int = attrs.field(validator=[attrs.validators.ge(1), attrs.validators.le(100)])


@attrs.frozen
class OrderId:
    id: str


@attrs.frozen
class Order:
    """An order as the orders service keeps it (``status``: ``new``, ``paid``, ``payment_failed``)."""

    id: str
    customer: str
    item: str
    qty: int
    amount_cents: int
    status: str = "new"
    payment_id: str = ""


@attrs.frozen
class Charge:
    """Take ``amount_cents`` for ``order_id``. Requests with the same ``idempotency_key`` are
    one payment: a retry of a charge that went through returns its receipt again."""

    order_id: str
    amount_cents: int = attrs.field(validator=attrs.validators.gt(0))
    idempotency_key: str = attrs.field(validator=attrs.validators.min_len(1))


@attrs.frozen
class Receipt:
    payment_id: str
    order_id: str
    amount_cents: int


@attrs.frozen
class Ledger:
    """What the payment service has charged (one entry per idempotency key) and how many
    requests reached its handler."""

    charges: list[Receipt]
    requests: int


def types() -> TypeRegistry:
    """The wire names of the flow's messages (every node of the app uses this registry)."""
    registry = TypeRegistry()
    for cls in (PlaceOrder, OrderId, Order, Charge, Receipt, Ledger):
        registry.register(cls, f"orders.{cls.__name__}")
    return registry


_converter = cattrs.Converter(forbid_extra_keys=True)


def dump(value: Any) -> bytes:
    """A stored record's value: the message as JSON (readable with ``trimicro store read``)."""
    return json.dumps(_converter.unstructure(value), sort_keys=True).encode()


def load(cls: type[T], data: bytes) -> T:
    return _converter.structure(json.loads(data), cls)
