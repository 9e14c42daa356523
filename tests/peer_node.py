"""A trimicro node in its own OS process, for the multi-process tests.

Usage: ``python tests/peer_node.py HOME NAME [DIAL]``. Listens on 127.0.0.1 (a free port), spawns
the ``echo`` actor, dials the node at address ``DIAL`` if given, prints ``address <host:port>``
and then one line per notable event, and serves until it is killed. Messages are maps sent to
endpoints, so the tests share no classes with it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from trimicro.actors import Actor, NotFound, Stream, start_node


@attrs.frozen
class Line:
    sku: str
    qty: int


@attrs.frozen
class Basket:
    """A body structured by the handler's annotation (the sender has no such class)."""

    owner: str
    lines: list[Line]


class Echo(Actor):
    service_name = "Echo"

    def __init__(self, gate: trio.Event) -> None:
        self.total = 0
        self.gate = gate

    async def hold(self, stream: Stream) -> None:
        """Reads one item, then nothing until the ``gate`` actor is told to open; then counts
        the rest and answers the count (flow control: the sender must stop meanwhile)."""
        n = 0
        async for _ in stream:
            n += 1
            if n == 1:
                print("holding", flush=True)
                await self.gate.wait()
        await stream.send(n)

    async def add(self, body: dict[str, Any]) -> int:
        self.total += int(body["k"])
        return self.total

    async def total(self, basket: Basket) -> dict[str, Any]:
        kinds = sorted({type(line).__name__ for line in basket.lines})
        return {"owner": basket.owner, "qty": sum(line.qty for line in basket.lines), "kinds": kinds}

    async def fail(self, body: dict[str, Any]) -> None:
        raise NotFound(str(body.get("why", "nothing here")))

    async def sleep(self, body: dict[str, Any]) -> str:
        print("sleeping", flush=True)
        try:
            await trio.sleep(float(body["seconds"]))
        except trio.Cancelled:
            print("cancelled", flush=True)  # the caller's deadline or CANCEL reached this process
            raise
        return "woke"


class Gate(Actor):
    service_name = "Gate"

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def open(self, body: Any) -> None:
        self.gate.set()


async def main(home: str, name: str, dial: str | None = None) -> None:
    async with start_node(name, listen="127.0.0.1:0", home=Path(home)) as node:
        gate = trio.Event()
        await node.spawn(Echo, gate, name="echo")
        await node.spawn(Gate, gate, name="gate")
        if dial:
            await node.connect(dial)
        print(f"address {node.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
