"""Example services for ``trimicro run examples/services.py``.

``trimicro run`` serves every Actor class defined here that declares a ``service_name``: a
greeter (a plain request/response endpoint, one marked idempotent, and a stream) and a counter
that keeps state. Call them with ``trimicro call greeter Greeter.hello '{"name": "Ada"}'``.
"""

from __future__ import annotations

from typing import Any

import attrs

from trimicro.actors import Actor, BadRequest, Stream
from trimicro.cluster.service import idempotent


@attrs.frozen
class HelloRequest:
    name: str


class Greeter(Actor):
    service_name = "Greeter"

    @idempotent
    async def hello(self, msg: HelloRequest) -> str:
        if not msg.name:
            raise BadRequest("name must not be empty")
        return f"Hello, {msg.name}! (from node {self.context.node.id})"

    async def shout(self, stream: Stream) -> None:
        """Streams back every line it receives, upper-cased, until the caller closes its side."""
        async for line in stream:
            await stream.send(str(line).upper())


class Counter(Actor):
    service_name = "Counter"

    def __init__(self) -> None:
        self.total = 0

    async def add(self, body: Any) -> int:
        self.total += int(body.get("k", 1))
        return self.total
