"""Services the gateway tests call (also served by a separate process in the browser test)."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from trimicro.actors import Actor, Stream


@attrs.frozen
class Order:
    item: str = attrs.field(validator=attrs.validators.min_len(1))
    # A value check in the type, not the handler: the OpenAPI document carries it (minimum).
    qty: int = attrs.field(validator=attrs.validators.gt(0))
    note: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.max_len(200))
    )


@attrs.frozen
class Cart:
    orders: list[Order]
    coupon: str = ""


@attrs.frozen
class Receipt:
    total: int
    lines: list[Order]


@attrs.frozen
class Wait:
    seconds: float


class Shop(Actor):
    service_name = "Shop"

    def __init__(self) -> None:
        self.cancelled = trio.Event()
        self.flooded = 0

    async def buy(self, order: Order) -> dict[str, Any]:
        return {"item": order.item, "qty": order.qty}

    async def checkout(self, cart: Cart) -> Receipt:
        return Receipt(sum(o.qty for o in cart.orders), cart.orders)

    async def headers(self, body: Any) -> dict[str, str]:
        return dict(self.context.headers)

    async def slow(self, body: Wait) -> str:
        try:
            await trio.sleep(body.seconds)
        except trio.Cancelled:
            self.cancelled.set()
            raise
        return "done"

    async def count(self, stream: Stream) -> None:
        """Sends 0..n-1 for the request's ``n``, then echoes what the caller sends until it ends."""
        for i in range(int((stream.request or {}).get("n", 0))):
            await stream.send(i)
        async for item in stream:
            await stream.send({"echo": item})

    async def flood(self, stream: Stream) -> None:
        """Sends ``n`` items of ``size`` characters as fast as the stream's credit lets it."""
        request = stream.request or {}
        item = "x" * int(request.get("size", 1))
        for _ in range(int(request.get("n", 0))):
            await stream.send(item)
            self.flooded += 1
