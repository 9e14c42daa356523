"""The NATS plugins beside raw nats-py doing the same work, in one run, on one server of its own.

Interleaved rounds (the order flips each round); each round measures, for trimicro's plugin
(trio, through the bridge) and for raw nats-py (plain asyncio, the ceiling):

* ``pubsub``: messages per second published on one subject and delivered to one subscriber
  (trimicro: ``NatsBroker.publish`` to an actor on another node; raw: ``nc.publish`` to a
  ``nc.subscribe`` callback on another connection), until the last one arrived;
* ``js_publish``: acknowledged publishes per second, one at a time, each waiting for the
  server's PubAck (trimicro: ``publish(..., ack=True)`` with no subscriber, so it returns at
  the PubAck; raw: ``js.publish``) into a stream of the same configuration;
* ``kv_write`` / ``kv_read``: store writes and reads per second, one at a time
  (trimicro: ``NatsStore.write``/``read``; raw: ``kv.put``/``kv.get`` on a bucket), and
  ``kv_read16``: reads by 16 concurrent tasks;
* ``lookup``: registry lookups per second (``NatsRegistry.get_service``: a local copy), and the
  raw nats-py cost of reading one node's key (``kv.get``), for scale.

Prints one JSON line per round and peer, then the medians and the median of per-round ratios
(trimicro / raw; the targets are >= 0.8 for pubsub, js_publish, kv_write and kv_read).

    python benchmarks/bench_nats.py [--rounds 5] [--messages 20000] [--ops 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import trio
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from trimicro.actors import Actor
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.natsio import NatsOptions
from trimicro.cluster.registry import MemoryRegistry, NodeInfo, Service
from trimicro.cluster.registry.nats import NatsRegistry
from trimicro.cluster.store import Record
from trimicro.cluster.store.nats import NatsStore
from trimicro.testing.nats import NatsServer

PAYLOAD = b"x" * 100
METRICS = ("pubsub", "js_publish", "kv_write", "kv_read", "kv_read16", "lookup")
CONCURRENT = 16


class Counter(Actor):
    def __init__(self, n: int, done: trio.Event) -> None:
        self.left = n
        self.done = done

    async def on_message(self, msg: Message) -> None:
        self.left -= 1
        if self.left == 0:
            self.done.set()


async def _trimicro(url: str, messages: int, ops: int, home: Path) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    broker = f"{url}?prefix=b{tag}&stream=B{tag}"
    registry = MemoryRegistry()
    out: dict[str, float] = {}
    async with (
        start_cluster("pub", registry=registry, broker=broker, home=home, membership=False) as pub,
        start_cluster("sub", registry=registry, broker=broker, home=home, membership=False) as sub,
    ):
        done = trio.Event()
        await sub.pubsub.subscribe("bench.m", await sub.node.spawn(Counter, messages, done))
        with trio.fail_after(10):
            while "sub" not in pub.pubsub.remote_interest:
                await pub.pubsub.wait_interest()
        t = time.perf_counter()
        for _ in range(messages):
            await pub.publish("bench.m", PAYLOAD)
        with trio.fail_after(60):
            await done.wait()
        out["pubsub"] = messages / (time.perf_counter() - t)
        await pub.publish("bench.a", PAYLOAD, ack=True)  # the stream exists; warm
        t = time.perf_counter()
        for _ in range(ops):
            await pub.publish("bench.a", PAYLOAD, ack=True)
        out["js_publish"] = ops / (time.perf_counter() - t)
    store = NatsStore(NatsOptions(servers=(url,)), bucket_prefix=f"s{tag}")
    try:
        await store.write(Record("warm", PAYLOAD))
        t = time.perf_counter()
        for i in range(ops):
            await store.write(Record(f"k{i}", PAYLOAD))
        out["kv_write"] = ops / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(ops):
            await store.read(f"k{i}")
        out["kv_read"] = ops / (time.perf_counter() - t)

        async def reader(start: int) -> None:
            for i in range(start, ops, CONCURRENT):
                await store.read(f"k{i}")

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for start in range(CONCURRENT):
                nursery.start_soon(reader, start)
        out["kv_read16"] = ops / (time.perf_counter() - t)
    finally:
        await store.aclose()
    reg = NatsRegistry(NatsOptions(servers=(url,)), bucket=f"r{tag}")
    try:
        await reg.register(Service("bench", nodes=(NodeInfo("n1", "127.0.0.1:1"),)))
        t = time.perf_counter()
        for _ in range(ops * 20):
            await reg.get_service("bench")
        out["lookup"] = ops * 20 / (time.perf_counter() - t)
    finally:
        await reg.aclose()
    return out


def trimicro_round(url: str, messages: int, ops: int, home: Path) -> dict[str, float]:
    return trio.run(_trimicro, url, messages, ops, home)


async def _raw(url: str, messages: int, ops: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    out: dict[str, float] = {}
    pub, sub = await nats.connect(url), await nats.connect(url)
    try:
        done = asyncio.Event()
        left = messages

        async def received(msg: Any) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                done.set()

        await sub.subscribe(f"r{tag}.m.bench", cb=received)
        await sub.flush()
        t = time.perf_counter()
        for _ in range(messages):
            await pub.publish(f"r{tag}.m.bench", PAYLOAD, headers={"Trimicro-Publisher": "pub"})
        await asyncio.wait_for(done.wait(), 60)
        out["pubsub"] = messages / (time.perf_counter() - t)
        js = pub.jetstream()
        await js.add_stream(
            StreamConfig(
                name=f"R{tag}",
                subjects=[f"r{tag}.a.>"],
                retention=RetentionPolicy.INTEREST,
                storage=StorageType.FILE,
            )
        )
        await js.publish(f"r{tag}.a.bench", PAYLOAD)
        t = time.perf_counter()
        for _ in range(ops):
            await js.publish(f"r{tag}.a.bench", PAYLOAD)
        out["js_publish"] = ops / (time.perf_counter() - t)
        kv = await js.create_key_value(bucket=f"raw{tag}", history=1)
        await kv.put("warm", PAYLOAD)
        t = time.perf_counter()
        for i in range(ops):
            await kv.put(f"k{i}", PAYLOAD)
        out["kv_write"] = ops / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(ops):
            await kv.get(f"k{i}")
        out["kv_read"] = ops / (time.perf_counter() - t)

        async def reader(start: int) -> None:
            for i in range(start, ops, CONCURRENT):
                await kv.get(f"k{i}")

        t = time.perf_counter()
        await asyncio.gather(*(reader(start) for start in range(CONCURRENT)))
        out["kv_read16"] = ops / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(ops):
            await kv.get("k0")
        out["lookup"] = ops / (time.perf_counter() - t)
    finally:
        await pub.close()
        await sub.close()
    return out


def raw_round(url: str, messages: int, ops: int, home: Path) -> dict[str, float]:
    return asyncio.run(_raw(url, messages, ops))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--ops", type=int, default=500)
    args = parser.parse_args()
    peers = {"trimicro": trimicro_round, "raw": raw_round}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in peers}
    with tempfile.TemporaryDirectory() as folder:
        server = NatsServer(Path(folder) / "js")
        server.start()
        try:
            for round_ in range(args.rounds):
                order = list(peers) if round_ % 2 == 0 else list(reversed(peers))
                for name in order:
                    result = peers[name](server.url, args.messages, args.ops, Path(folder))
                    results[name].append(result)
                    print(json.dumps({"round": round_, "peer": name, **result}), flush=True)
        finally:
            server.stop()
    summary: dict[str, Any] = {}
    for metric in METRICS:
        ratios = [a[metric] / b[metric] for a, b in zip(results["trimicro"], results["raw"], strict=True)]
        summary[metric] = {
            "trimicro": round(statistics.median(r[metric] for r in results["trimicro"])),
            "raw": round(statistics.median(r[metric] for r in results["raw"])),
            "ratio": round(statistics.median(ratios), 3),
        }
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
