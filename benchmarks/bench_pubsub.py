"""Local pub/sub fan-out: deliveries/s to 1, 10 and 100 subscribers, trimicro beside nats-py.

trimicro: one cluster node (in-memory registry, no membership traffic), N subscriber actors on
one topic, one publisher; the clock stops when every subscriber has counted every message (an
``ask`` to each after the last publish, behind the messages in its mailbox).
nats-py: a nats-server started here on 127.0.0.1 (stopped by pid), N subscriptions in this
process on one connection, one publisher connection; the clock stops when every subscription
has received every message. Rounds are interleaved; every loop is bounded in count.

    python benchmarks/bench_pubsub.py [--rounds 3] [--messages 20000]

Prints one JSON line per measurement and a summary line with medians and trimicro/nats ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor, ask, bounded
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.pubsub import Message
from trimicro.cluster.registry import MemoryRegistry

FANOUTS = (1, 10, 100)


class Counter(Actor):
    mailbox = bounded(100_000)

    def __init__(self) -> None:
        self.n = 0

    async def on_message(self, msg: Message) -> None:
        self.n += 1

    async def count(self, body: Any) -> int:
        return self.n


async def trimicro_fanout(subscribers: int, messages: int) -> float:
    home = Path(tempfile.mkdtemp(prefix="trimicro-bench-"))
    async with start_cluster("bench", registry=MemoryRegistry(), home=home, membership=False) as cluster:
        refs = [await cluster.node.spawn(Counter) for _ in range(subscribers)]
        for ref in refs:
            await cluster.subscribe("bench.topic", ref)
        body = {"id": 0, "a": 1}
        start = time.perf_counter()
        for _ in range(messages):
            await cluster.publish("bench.topic", body)
        for ref in refs:
            assert await ask(ref, None, endpoint="Counter.count", timeout=120) == messages
        elapsed = time.perf_counter() - start
    return messages * subscribers / elapsed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nats_fanout(subscribers: int, messages: int, url: str) -> float:
    import nats

    async def run() -> float:
        sub_conn = await nats.connect(url)
        pub_conn = await nats.connect(url)
        counts = [0] * subscribers
        done = asyncio.Event()
        remaining = subscribers

        def handler_for(i: int) -> Any:
            async def handler(msg: Any) -> None:
                nonlocal remaining
                counts[i] += 1
                if counts[i] == messages:
                    remaining -= 1
                    if remaining == 0:
                        done.set()

            return handler

        for i in range(subscribers):
            await sub_conn.subscribe("bench.topic", cb=handler_for(i), pending_msgs_limit=messages * 2)
        await sub_conn.flush()
        payload = json.dumps({"id": 0, "a": 1}).encode()
        start = time.perf_counter()
        for _ in range(messages):
            await pub_conn.publish("bench.topic", payload)
        await pub_conn.flush()
        await asyncio.wait_for(done.wait(), timeout=120)
        elapsed = time.perf_counter() - start
        await sub_conn.close()
        await pub_conn.close()
        return messages * subscribers / elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    exe = shutil.which("nats-server")
    server = None
    url = ""
    if exe:
        port = _free_port()
        server = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)], stderr=subprocess.DEVNULL)
        url = f"nats://127.0.0.1:{port}"
        for _ in range(100):  # wait until it accepts connections (bounded)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
    results: dict[str, dict[int, list[float]]] = {"trimicro": {}, "nats": {}}
    try:
        for rnd in range(1, args.rounds + 1):
            for n in FANOUTS:
                msgs = max(200, args.messages // n)
                rate = trio.run(trimicro_fanout, n, msgs)
                results["trimicro"].setdefault(n, []).append(rate)
                print(
                    json.dumps(
                        {
                            "round": rnd,
                            "contestant": "trimicro",
                            "subscribers": n,
                            "deliveries_per_s": round(rate),
                        }
                    )
                )
                if url:
                    rate = nats_fanout(n, msgs, url)
                    results["nats"].setdefault(n, []).append(rate)
                    print(
                        json.dumps(
                            {
                                "round": rnd,
                                "contestant": "nats",
                                "subscribers": n,
                                "deliveries_per_s": round(rate),
                            }
                        )
                    )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    summary: dict[str, Any] = {"summary": True, "median": {}, "ratio_trimicro_nats": {}}
    for who, per in results.items():
        summary["median"][who] = {n: round(statistics.median(v)) for n, v in per.items()}
    for n in FANOUTS:
        t, s = results["trimicro"].get(n), results["nats"].get(n)
        if t and s:
            summary["ratio_trimicro_nats"][n] = round(statistics.median(t) / statistics.median(s), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
