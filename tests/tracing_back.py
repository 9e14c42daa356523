"""Service B of the tracing process test: ``back``, which publishes while handling."""

from __future__ import annotations

from typing import Any

from trimicro.actors import Actor


class Back(Actor):
    service_name = "Back"  # served as "back"; its endpoints are "Back.ship"

    async def ship(self, body: dict[str, Any]) -> int:
        """Publishes the order on ``shipped``; the number of deliveries."""
        deliveries: int = await self.context.node.extensions["cluster"].publish("shipped", body)
        return deliveries
