"""A node with one slow actor beside a fast one, in its own OS process: the flow-control tests.

Usage: ``python tests/flow_peer.py HOME NAME``. Listens on 127.0.0.1 (a free port), prints
``address <host:port>`` and serves until it is killed. Actors (messages are maps and ints, so the
tests share no classes with it):

- ``slow`` (mailbox of 16): ``Slow.work`` takes 10 ms per message while the node is in slow mode
  and counts what it handled;
- ``echo``: ``Echo.ping`` answers its body at once;
- ``control``: ``Control.fast`` ends slow mode, ``Control.handled`` waits (up to its ``timeout``)
  until ``slow`` has handled ``n`` messages and answers the count, the dead letters of this node
  and its resident memory, ``Control.rss`` answers the memory only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor, ActorRef, ask, bounded, start_node

SLOW_SECONDS = 0.010


def rss_kib() -> int:
    """This process's resident memory (KiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def timed_asks(
    echo: ActorRef, control: ActorRef, count: int, peer_rss: list[int], own_rss: list[int]
) -> list[float]:
    """Ask ``echo`` ``count`` times (for the tests, in their process), each within 5 s; the
    latencies, sorted; samples both processes' memory every 50 asks into the lists given."""
    latencies: list[float] = []
    for i in range(count):
        started = time.perf_counter()
        assert await ask(echo, i, endpoint="Echo.ping", timeout=5) == i
        latencies.append(time.perf_counter() - started)
        if i % 50 == 0:
            peer_rss.append(await ask(control, None, endpoint="Control.rss", timeout=5))
            own_rss.append(rss_kib())
    return sorted(latencies)


class State:
    def __init__(self) -> None:
        self.slow = True
        self.handled = 0
        self.changed = trio.Event()


class Slow(Actor):
    service_name = "Slow"
    mailbox = bounded(16)

    def __init__(self, state: State) -> None:
        self.state = state

    async def work(self, body: Any) -> None:
        if self.state.slow:
            await trio.sleep(SLOW_SECONDS)
        self.state.handled += 1
        self.state.changed.set()
        self.state.changed = trio.Event()


class Echo(Actor):
    service_name = "Echo"

    async def ping(self, body: Any) -> Any:
        return body


class Control(Actor):
    service_name = "Control"

    def __init__(self, state: State) -> None:
        self.state = state

    async def fast(self, body: Any) -> None:
        self.state.slow = False

    async def handled(self, body: dict[str, Any]) -> dict[str, int]:
        with trio.move_on_after(float(body["timeout"])):
            while self.state.handled < int(body["n"]):
                await self.state.changed.wait()
        node = self.context.node
        return {"handled": self.state.handled, "dead_letters": node.dead_letters.count, "rss_kib": rss_kib()}

    async def rss(self, body: Any) -> int:
        return rss_kib()


async def main(home: str, name: str) -> None:
    async with start_node(name, listen="127.0.0.1:0", home=Path(home)) as node:
        state = State()
        await node.spawn(Slow, state, name="slow")
        await node.spawn(Echo, name="echo")
        await node.spawn(Control, state, name="control")
        print(f"address {node.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
