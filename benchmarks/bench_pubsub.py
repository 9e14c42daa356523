"""Pub/sub throughput: local fan-out to 1, 10 and 100 subscribers, and one subscriber in another
process, trimicro beside nats-py in the same run.

trimicro: one cluster node (in-memory registry, no membership traffic), N subscriber actors on
one topic, one publisher; the clock stops when every subscriber has counted every message (an
``ask`` to each after the last publish, behind the messages in its mailbox).
nats-py: a nats-server started here on 127.0.0.1 (stopped by pid), N subscriptions in this
process on one connection, one publisher connection; the clock stops when every subscription
has received every message. Rounds are interleaved; every loop is bounded in count.

Across two processes (``x1``): the subscriber runs in a child process (trimicro: a cluster node
on mDNS bound to 127.0.0.1, encrypted link; NATS: a nats-py subscriber); the clock stops when
a count request, sent after the last message, returns them all.

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
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import start_cluster
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


SUBSCRIBER_CODE = r"""
import sys, trio
from pathlib import Path
from typing import Any
from trimicro.actors import Actor, bounded
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MdnsRegistry
from trimicro.cluster.broker import Message

class Counter(Actor):
    service_name = "Counter"
    mailbox = bounded(100_000)
    def __init__(self) -> None:
        self.n = 0
    async def on_message(self, msg: Message) -> None:
        self.n += 1
    async def count(self, body: Any) -> int:
        return self.n

async def main(home: str, stype: str) -> None:
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("bench-sub", registry=registry, home=Path(home)) as c,
    ):
        ref = await c.serve(Counter, name="counter")
        await c.subscribe("bench.topic", ref)
        print("ready", flush=True)
        await trio.sleep_forever()

trio.run(main, sys.argv[1], sys.argv[2])
"""

NATS_SUBSCRIBER_CODE = r"""
import asyncio, sys, nats
async def main(url: str) -> None:
    nc = await nats.connect(url)
    n = 0
    async def on_msg(msg):
        nonlocal n
        if msg.reply:
            await msg.respond(str(n).encode())
        else:
            n += 1
    await nc.subscribe("bench.topic", cb=on_msg, pending_msgs_limit=10_000_000)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(sys.argv[1]))
"""


def trimicro_cross(messages: int) -> float:
    import sys
    import uuid

    from trimicro.cluster.registry import MdnsRegistry

    home = tempfile.mkdtemp(prefix="trimicro-bench-")
    stype = f"_b{uuid.uuid4().hex[:10]}._tcp.local."
    child = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER_CODE, home, stype], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"

        async def run() -> float:
            async with (
                MdnsRegistry(service_type=stype) as registry,
                start_cluster("bench-pub", registry=registry, home=Path(home)) as c,
            ):
                with trio.fail_after(30):
                    while "bench-sub" not in c.pubsub.remote_interest:
                        await c.pubsub.wait_interest()
                # Find the counter before the clock starts, as the NATS client connects first:
                # the confirmation below is then one call, not a discovery round.
                before = await c.call("counter", "Counter.count", {}, timeout=30)
                body = {"id": 0, "a": 1}
                start = time.perf_counter()
                for _ in range(messages):
                    await c.publish("bench.topic", body)
                n = await c.call("counter", "Counter.count", {}, timeout=120) - before
                elapsed = time.perf_counter() - start
                assert n == messages, (n, messages)
                return messages / elapsed

        return trio.run(run)
    finally:
        child.kill()
        child.wait()


def nats_cross(messages: int, url: str) -> float:
    import sys

    import nats

    child = subprocess.Popen(
        [sys.executable, "-c", NATS_SUBSCRIBER_CODE, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"

        async def run() -> float:
            nc = await nats.connect(url)
            payload = json.dumps({"id": 0, "a": 1}).encode()
            start = time.perf_counter()
            for _ in range(messages):
                await nc.publish("bench.topic", payload)
            await nc.flush()
            for _ in range(10_000):  # bounded: the count request is answered once all arrived
                reply = await nc.request("bench.topic", b"", timeout=30)
                if int(reply.data) >= messages:
                    break
            elapsed = time.perf_counter() - start
            await nc.close()
            return messages / elapsed

        return asyncio.run(run())
    finally:
        child.kill()
        child.wait()


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
    results: dict[str, dict[Any, list[float]]] = {"trimicro": {}, "nats": {}}
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
            cross = {"trimicro": trimicro_cross(args.messages)}
            if url:
                cross["nats"] = nats_cross(args.messages, url)
            for who, rate in cross.items():
                results[who].setdefault("x1", []).append(rate)
                line = {"round": rnd, "contestant": who, "subscribers": "x1", "deliveries_per_s": round(rate)}
                print(json.dumps(line))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    summary: dict[str, Any] = {"summary": True, "median": {}, "ratio_trimicro_nats": {}}
    for who, per in results.items():
        summary["median"][who] = {n: round(statistics.median(v)) for n, v in per.items()}
    for n in (*FANOUTS, "x1"):
        t, s = results["trimicro"].get(n), results["nats"].get(n)
        if t and s:
            summary["ratio_trimicro_nats"][n] = round(statistics.median(t) / statistics.median(s), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
