"""How to drive nats-py (asyncio) from trio: a dedicated asyncio thread, or trio-asyncio?

Four ways, side by side in one run, against one nats-server of the benchmark's own:

* ``raw``: nats-py on plain asyncio (``asyncio.run``): the ceiling;
* ``hosted``: trimicro's bridge (:mod:`trimicro.cluster.natsio.bridge` on
  :mod:`~trimicro.cluster.natsio.hosted`): the client's asyncio loop stepped by trio in trio's
  thread; a call is ``Bridge.call``, publishes go through an ``Outbox`` (batched);
* ``thread``: the design before it, kept here to compare: the loop in a thread of its own, a
  call handed over with ``loop.call_soon_threadsafe`` and its end with
  ``TrioToken.run_sync_soon``, publishes handed over in batches the same way;
* ``trio_asyncio``: the asyncio loop inside trio's (``trio_asyncio.open_loop``); a call is
  ``aio_as_trio(...)``, and so is each publish (there is no cheaper way to reach the client).

Measured: ``rtt``, calls per second of a round trip to the server (``nc.flush()``: PING/PONG),
one at a time; ``publish``, messages per second published and flushed (no subscriber).
Rounds interleave them, each round of each peer in a fresh interpreter (trio-asyncio, once
imported, slows asyncio down for the whole process); the summary gives medians and per-round
ratios to ``raw``.

    python benchmarks/bench_nats_bridge.py [--rounds 5] [--calls 2000] [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import nats
import trio

from trimicro.cluster.natsio import Bridge, Outbox
from trimicro.testing.nats import NatsServer

PAYLOAD = b"x" * 100


async def _raw(url: str, calls: int, messages: int) -> dict[str, float]:
    nc = await nats.connect(url)
    try:
        t = time.perf_counter()
        for _ in range(calls):
            await nc.flush()
        rtt = calls / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(messages):
            await nc.publish("bench.bridge", PAYLOAD)
        await nc.flush()
        return {"rtt": rtt, "publish": messages / (time.perf_counter() - t)}
    finally:
        await nc.close()


def raw_round(url: str, calls: int, messages: int) -> dict[str, float]:
    return asyncio.run(_raw(url, calls, messages))


class ThreadBridge:
    """The previous design, reduced to what this benchmark uses: an asyncio loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.SelectorEventLoop()  # not new_event_loop(): trio-asyncio refuses it in trio
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.token = trio.lowlevel.current_trio_token()
        self.thread.start()
        self.queue: list[bytes] = []
        self.lock = threading.Lock()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def call(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        done = trio.Event()
        box: list[asyncio.Task[Any]] = []

        def start() -> None:
            task = self.loop.create_task(make())
            task.add_done_callback(lambda _: self.token.run_sync_soon(done.set))
            box.append(task)

        self.loop.call_soon_threadsafe(start)
        with trio.fail_after(10):
            await done.wait()
        return box[0].result()

    def publish(self, nc: Any, payload: bytes) -> None:
        with self.lock:
            self.queue.append(payload)
            if len(self.queue) > 1:
                return
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._send(nc)))

    async def _send(self, nc: Any) -> None:
        with self.lock:
            batch, self.queue = self.queue, []
        for payload in batch:
            await nc.publish("bench.bridge", payload)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _thread(url: str, calls: int, messages: int) -> dict[str, float]:
    bridge = ThreadBridge()
    try:
        nc: Any = await bridge.call(lambda: nats.connect(url))
        t = time.perf_counter()
        for _ in range(calls):
            await bridge.call(nc.flush)
        rtt = calls / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(messages):
            bridge.publish(nc, PAYLOAD)
            if i % 256 == 0:
                await trio.lowlevel.checkpoint()
        await bridge.call(nc.flush)
        result = {"rtt": rtt, "publish": messages / (time.perf_counter() - t)}
        await bridge.call(nc.close)
        return result
    finally:
        bridge.close()


def thread_round(url: str, calls: int, messages: int) -> dict[str, float]:
    return trio.run(_thread, url, calls, messages)


async def _hosted(url: str, calls: int, messages: int) -> dict[str, float]:
    bridge = Bridge("bench")
    bridge.open()
    try:
        nc: Any = await bridge.call(lambda: nats.connect(url), timeout=10)

        async def send(batch: list[bytes]) -> None:
            for payload in batch:
                await nc.publish("bench.bridge", payload)

        outbox: Outbox[bytes] = Outbox(bridge, send)
        t = time.perf_counter()
        for _ in range(calls):
            await bridge.call(nc.flush, timeout=10)
        rtt = calls / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(messages):
            await outbox.put(PAYLOAD, timeout=10)
        await bridge.call(nc.flush, timeout=10)
        result = {"rtt": rtt, "publish": messages / (time.perf_counter() - t)}
        await bridge.call(nc.close, timeout=10)
        return result
    finally:
        await bridge.close()


def hosted_round(url: str, calls: int, messages: int) -> dict[str, float]:
    return trio.run(_hosted, url, calls, messages)


async def _trio_asyncio(url: str, calls: int, messages: int) -> dict[str, float]:
    import trio_asyncio  # only here: importing it patches asyncio for the whole process

    async with trio_asyncio.open_loop():
        nc = await trio_asyncio.aio_as_trio(nats.connect)(url)
        flush = trio_asyncio.aio_as_trio(nc.flush)
        publish = trio_asyncio.aio_as_trio(nc.publish)
        try:
            t = time.perf_counter()
            for _ in range(calls):
                await flush()
            rtt = calls / (time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(messages):
                await publish("bench.bridge", PAYLOAD)
            await flush()
            return {"rtt": rtt, "publish": messages / (time.perf_counter() - t)}
        finally:
            await trio_asyncio.aio_as_trio(nc.close)()


def trio_asyncio_round(url: str, calls: int, messages: int) -> dict[str, float]:
    return trio.run(_trio_asyncio, url, calls, messages)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=50000)
    parser.add_argument("--peer", help=argparse.SUPPRESS)  # one round of one peer (a child)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    peers = {
        "raw": raw_round,
        "hosted": hosted_round,
        "thread": thread_round,
        "trio_asyncio": trio_asyncio_round,
    }
    if args.peer:
        print(json.dumps(peers[args.peer](args.url, args.calls, args.messages)))
        return
    results: dict[str, list[dict[str, float]]] = {name: [] for name in peers}
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(Path(folder))
        server.start()
        try:
            for round_ in range(args.rounds):
                order = list(peers) if round_ % 2 == 0 else list(reversed(peers))
                for name in order:
                    # Each round of each peer in a fresh interpreter: trio-asyncio, once
                    # imported, replaces asyncio's get_running_loop with a slower one, which
                    # would slow the raw peer that shared its process.
                    child = subprocess.run(
                        [
                            *(sys.executable, __file__, "--peer", name, "--url", server.url),
                            *("--calls", str(args.calls), "--messages", str(args.messages)),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=600,
                        check=True,
                    )
                    result = json.loads(child.stdout.splitlines()[-1])
                    results[name].append(result)
                    print(json.dumps({"round": round_, "peer": name, **result}))
        finally:
            server.stop()
    summary: dict[str, Any] = {}
    for metric in ("rtt", "publish"):
        summary[metric] = {name: statistics.median(r[metric] for r in rs) for name, rs in results.items()}
        for name in ("hosted", "thread", "trio_asyncio"):
            ratios = [a[metric] / b[metric] for a, b in zip(results[name], results["raw"], strict=True)]
            summary[metric][f"{name}/raw"] = round(statistics.median(ratios), 3)
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
