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

import trio

from trimicro.actors import Actor, NotFound, start_node


class Echo(Actor):
    service_name = "Echo"

    def __init__(self) -> None:
        self.total = 0

    async def add(self, body: dict[str, Any]) -> int:
        self.total += int(body["k"])
        return self.total

    async def fail(self, body: dict[str, Any]) -> None:
        raise NotFound(str(body.get("why", "nothing here")))

    async def sleep(self, body: dict[str, Any]) -> str:
        print("sleeping", flush=True)
        await trio.sleep(float(body["seconds"]))
        return "woke"


async def main(home: str, name: str, dial: str | None = None) -> None:
    async with start_node(name, listen="127.0.0.1:0", home=Path(home)) as node:
        await node.spawn(Echo, name="echo")
        if dial:
            await node.connect(dial)
        print(f"address {node.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
