"""Service A of the tracing process test: ``front``, which asks ``back`` while handling."""

from __future__ import annotations

from typing import Any

from trimicro.actors import Actor
from trimicro.cluster import call


class Front(Actor):
    service_name = "Front"  # served as "front"; its endpoints are "Front.order"

    async def order(self, body: dict[str, Any]) -> Any:
        return await call("back", "Back.ship", body)
