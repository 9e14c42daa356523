"""How to drive nats-py (asyncio) from trio: a dedicated asyncio thread, or trio-asyncio?

Three ways, side by side in one run, against one nats-server of the benchmark's own:

* ``raw``: nats-py on plain asyncio (``asyncio.run``): the ceiling;
* ``thread``: trimicro's bridge (:mod:`trimicro.cluster.natsio.bridge`): the client on an
  asyncio loop in its own thread; a call is ``Bridge.call`` (a hand-off each way), publishes
  go through an ``Outbox`` (batched hand-offs);
* ``trio_asyncio``: the asyncio loop inside trio's (``trio_asyncio.open_loop``); a call is
  ``aio_as_trio(...)``, and so is each publish (there is no cheaper way to reach the client).

Measured: ``rtt``, calls per second of a round trip to the server (``nc.flush()``: PING/PONG),
one at a time; ``publish``, messages per second published and flushed (no subscriber).
Rounds interleave the three; the summary gives medians and per-round ratios to ``raw``.

    python benchmarks/bench_nats_bridge.py [--rounds 5] [--calls 2000] [--messages 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import trio
import trio_asyncio

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


async def _thread(url: str, calls: int, messages: int) -> dict[str, float]:
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


def thread_round(url: str, calls: int, messages: int) -> dict[str, float]:
    return trio.run(_thread, url, calls, messages)


async def _trio_asyncio(url: str, calls: int, messages: int) -> dict[str, float]:
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
    args = parser.parse_args()
    peers = {"raw": raw_round, "thread": thread_round, "trio_asyncio": trio_asyncio_round}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in peers}
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(Path(folder))
        server.start()
        try:
            for round_ in range(args.rounds):
                order = list(peers) if round_ % 2 == 0 else list(reversed(peers))
                for name in order:
                    result = peers[name](server.url, args.calls, args.messages)
                    results[name].append(result)
                    print(json.dumps({"round": round_, "peer": name, **result}))
        finally:
            server.stop()
    summary: dict[str, Any] = {}
    for metric in ("rtt", "publish"):
        summary[metric] = {name: statistics.median(r[metric] for r in rs) for name, rs in results.items()}
        for name in ("thread", "trio_asyncio"):
            ratios = [a[metric] / b[metric] for a, b in zip(results[name], results["raw"], strict=True)]
            summary[metric][f"{name}/raw"] = round(statistics.median(ratios), 3)
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
