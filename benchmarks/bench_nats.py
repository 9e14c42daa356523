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

Like with like: the same payload (100 bytes), the same concurrency, the same number of NATS
connections, and raw nats-py encodes and decodes the payload with msgpack as trimicro's codec
does (a program on nats-py has to turn its values into bytes too; about 1 µs a message, under
1% of a round trip). What stays trimicro's own: its headers (publisher; for acked publishes the
reply subject and limits), the store's record envelope (value, metadata, expiry), and delivery
to an actor's mailbox rather than to a callback.

Besides the rates, each metric's process CPU time per operation (``cpu_<metric>``, µs: both
threads of the process, the kernel's share of its system calls included, the server's not):
on this shared machine the rates move with the load, the CPU cost much less.

Prints one JSON line per round and peer, then the medians and the median of per-round ratios
(trimicro / raw; the targets are >= 0.8 for pubsub, js_publish, kv_write and kv_read), with
the load average before and after the run.

    python benchmarks/bench_nats.py [--rounds 5] [--messages 20000] [--ops 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
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


@contextmanager
def measured(out: dict[str, float], metric: str, n: int) -> Iterator[None]:
    """Record ``n`` operations' rate (per second of wall-clock) and CPU cost (µs each)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out[metric] = n / (time.perf_counter() - wall)
    out[f"cpu_{metric}"] = (time.process_time() - cpu) / n * 1e6


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
        with measured(out, "pubsub", messages):
            for _ in range(messages):
                await pub.publish("bench.m", PAYLOAD)
            with trio.fail_after(60):
                await done.wait()
        await pub.publish("bench.a", PAYLOAD, ack=True)  # the stream exists; warm
        with measured(out, "js_publish", ops):
            for _ in range(ops):
                await pub.publish("bench.a", PAYLOAD, ack=True)
    store = NatsStore(NatsOptions(servers=(url,)), bucket_prefix=f"s{tag}")
    try:
        await store.write(Record("warm", PAYLOAD))
        with measured(out, "kv_write", ops):
            for i in range(ops):
                await store.write(Record(f"k{i}", PAYLOAD))
        with measured(out, "kv_read", ops):
            for i in range(ops):
                await store.read(f"k{i}")

        async def reader(start: int) -> None:
            for i in range(start, ops, CONCURRENT):
                await store.read(f"k{i}")

        with measured(out, "kv_read16", ops):
            async with trio.open_nursery() as nursery:
                for start in range(CONCURRENT):
                    nursery.start_soon(reader, start)
    finally:
        await store.aclose()
    reg = NatsRegistry(NatsOptions(servers=(url,)), bucket=f"r{tag}")
    try:
        await reg.register(Service("bench", nodes=(NodeInfo("n1", "127.0.0.1:1"),)))
        with measured(out, "lookup", ops * 20):
            for _ in range(ops * 20):
                await reg.get_service("bench")
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
            msgpack.unpackb(msg.data)
            left -= 1
            if left == 0:
                done.set()

        await sub.subscribe(f"r{tag}.m.bench", cb=received)
        await sub.flush()
        with measured(out, "pubsub", messages):
            for _ in range(messages):
                await pub.publish(f"r{tag}.m.bench", packb(PAYLOAD), headers={"Trimicro-Publisher": "pub"})
            await asyncio.wait_for(done.wait(), 60)
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
        with measured(out, "js_publish", ops):
            for _ in range(ops):
                await js.publish(f"r{tag}.a.bench", packb(PAYLOAD))
        kv = await js.create_key_value(bucket=f"raw{tag}", history=1)
        await kv.put("warm", PAYLOAD)
        with measured(out, "kv_write", ops):
            for i in range(ops):
                await kv.put(f"k{i}", packb(PAYLOAD))
        with measured(out, "kv_read", ops):
            for i in range(ops):
                msgpack.unpackb((await kv.get(f"k{i}")).value)

        async def reader(start: int) -> None:
            for i in range(start, ops, CONCURRENT):
                msgpack.unpackb((await kv.get(f"k{i}")).value)

        with measured(out, "kv_read16", ops):
            await asyncio.gather(*(reader(start) for start in range(CONCURRENT)))
        with measured(out, "lookup", ops):
            for _ in range(ops):
                await kv.get("k0")
    finally:
        await pub.close()
        await sub.close()
    return out


def packb(value: bytes) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


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
    load_before = os.getloadavg()
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
        cpu = {name: statistics.median(r[f"cpu_{metric}"] for r in rs) for name, rs in results.items()}
        summary[metric] = {
            "trimicro": round(statistics.median(r[metric] for r in results["trimicro"])),
            "raw": round(statistics.median(r[metric] for r in results["raw"])),
            "ratio": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "cpu_us": {name: round(v, 1) for name, v in cpu.items()},
        }
    load = {"before": [round(x, 1) for x in load_before], "after": [round(x, 1) for x in os.getloadavg()]}
    print(json.dumps({"summary": summary, "load_average": load}, indent=1))


if __name__ == "__main__":
    main()
