"""CPU cost per operation as instructions, counted by valgrind's callgrind: a figure that does
not move with the machine's load, for A/B comparisons on a shared machine.

Wall-clock rates on a busy 2-core machine scatter by +-50% between runs; the number of
instructions a fixed amount of work executes does not (the same count twice, whatever else
runs). Each scenario runs twice, with ``--small`` and ``--large`` operations; the difference of
the two totals divided by the difference in operations is the cost of one operation, with the
interpreter's start-up and the node's set-up cancelled out. What it cannot show: time spent
waiting (scheduling, the kernel's side of a system call), so it complements, not replaces, the
wall-clock benchmarks.

Scenarios (each in a fresh interpreter of the checkout under test):

* ``local-tell``: tells to one local actor (one ask at the end confirms them);
* ``local-ask``: sequential asks to one local actor;
* ``remote-ask1`` / ``remote-ask16``: asks between two nodes in one process over TCP on
  127.0.0.1 (Noise, envelope, codec, dispatch on both sides: client + server CPU), one caller or
  16 in flight; busy polling off (a spin would count instructions by wall time);
* ``...-mw``: the same with one no-op middleware per node (it runs on both sides);
* ``remote-tell``: tells from one caller between the same two nodes (client + server CPU per
  tell; batching and tell credit included); one ask behind them confirms every tell arrived;
* ``pubsub1`` / ``pubsub10``: publishes on one cluster node (in-memory registry, no membership)
  to 1 or 10 local subscriber actors, as ``bench_pubsub.py`` does: CPU per publish, its
  deliveries included; an ask to each subscriber at the end confirms them.
* ``...-metrics``: the same with per-endpoint metrics on (``start_node(metrics=True)``, every
  node; a checkout without them fails these).
* ``raw-ask1`` / ``raw-seq`` / ``raw-ask16``: the yardstick of issue 19, raw trio TCP + msgpack,
  with the shared baselines' own code (``shared/bench/limit_trio_tcp.py``, imported from a
  parent folder of this checkout or ``--shared-bench``: its server, ``FramedStream`` and
  ``RpcClient``), client and server as tasks of one process, as the remote scenarios run:
  ``seq_direct`` (one caller reading its own reply), ``seq`` (one caller, a reader task) and
  ``c16_wc`` (16 in flight, one writer task). ``remote-askN / raw-askN`` is the issue's CPU
  ratio as instructions over instructions.

Run:  python benchmarks/count_instructions.py [--python A/.venv/bin/python --python B/...]
          [--scenarios local-tell,local-ask,remote-ask16] [--small 2000 --large 6000]
Output: one JSON line per (python, scenario) with ``instructions_per_op``, then a summary line
with the ratio of every later interpreter to the first. Needs ``valgrind`` (Debian package).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The workload, run by the interpreter under test: ``python -c WORKLOAD scenario n``.
WORKLOAD = r"""
import sys, trio
from trimicro.actors import Actor, ask, start_node, tell

class Counter(Actor):
    def __init__(self):
        self.n = 0
    async def inc(self, msg: int) -> int:
        self.n += msg
        return self.n

async def noop(call, call_next):
    return await call_next(call)

try:  # marks a middleware that only awaits call_next (keeps inline handlers inline)
    from trimicro.actors.middleware import passes_through
    noop = passes_through(noop)
except ImportError:
    pass

async def local(kind, n, metrics):
    async with start_node("count", **({"metrics": True} if metrics else {})) as node:
        ref = await node.spawn(Counter)
        if kind == "tell":
            for _ in range(n):
                await tell(ref, 1)
            await ask(ref, 1)
        else:
            for _ in range(n):
                await ask(ref, 1)

async def remote(n, inflight, mw, metrics, tells=False):
    try:
        from trimicro.mailbox.secure.identity import Authority, NodeIdentity
        from trimicro.mailbox.transport.tcp import TcpTransport
    except ImportError:  # the flat mailbox layout before the pluggable interfaces (a452b81)
        from trimicro.mailbox.identity import Authority, NodeIdentity
        from trimicro.mailbox.tcp import TcpTransport
    auth, tr = Authority.generate(), TcpTransport()
    kw = {"busy_poll": 0}
    if mw:
        kw["middleware"] = [noop]
    if metrics:
        kw["metrics"] = True
    async with start_node("a", listen="127.0.0.1:0", transport=tr,
                          identity=NodeIdentity.issue("a", auth), **kw) as a, \
               start_node("b", listen="127.0.0.1:0", transport=tr,
                          identity=NodeIdentity.issue("b", auth), **kw) as b:
        await b.spawn(Counter, name="counter")
        await a.connect(b.address)
        ref = a.remote_ref("b", "counter")
        if tells:
            for _ in range(n):
                await tell(ref, 1)
            got = await ask(ref, 0)  # behind every tell on the link
            if got != n:
                raise SystemExit(f"{got} of {n} tells arrived")
            return
        async def worker(k):
            for _ in range(k):
                await ask(ref, 1)
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker, n // inflight)

async def pubsub(n, subscribers):
    import tempfile
    from pathlib import Path
    from trimicro.actors import bounded, handles
    from trimicro.cluster.cluster import start_cluster
    from trimicro.cluster.registry import MemoryRegistry
    try:
        from trimicro.cluster.broker import Message
    except ImportError:  # before the broker package (a452b81)
        from trimicro.cluster.pubsub import Message

    class Subscriber(Actor):
        mailbox = bounded(n + 10)
        def __init__(self):
            self.n = 0
        @handles(Message)
        async def on_message(self, msg) -> None:
            self.n += 1
        async def count(self, body) -> int:
            return self.n

    with tempfile.TemporaryDirectory(prefix="trimicro-count-") as home:  # the node's keys
        async with start_cluster("count", registry=MemoryRegistry(), home=Path(home),
                                 membership=False) as cluster:
            refs = [await cluster.node.spawn(Subscriber) for _ in range(subscribers)]
            for ref in refs:
                await cluster.subscribe("count.topic", ref)
            body = {"id": 0, "a": 1}
            for _ in range(n):
                await cluster.publish("count.topic", body)
            for ref in refs:
                got = await ask(ref, None, endpoint="Subscriber.count", timeout=600)
                if got != n:
                    raise SystemExit(f"{got} of {n} messages delivered")

scenario, n = sys.argv[1], int(sys.argv[2])
scenario, metrics = scenario.removesuffix("-metrics"), scenario.endswith("-metrics")
if scenario.startswith("pubsub"):
    trio.run(pubsub, n, int(scenario[len("pubsub"):]))
elif scenario in ("local-tell", "local-ask"):
    trio.run(local, scenario.split("-")[1], n, metrics)
else:
    base, _, mw = scenario.partition("-mw")
    inflight = 16 if base == "remote-ask16" else 1
    trio.run(remote, n, inflight, scenario.endswith("-mw"), metrics, base == "remote-tell")
"""

#: The raw trio TCP + msgpack round trips, run by ``python -c RAW_WORKLOAD scenario n DIR``
#: where DIR holds ``limit_trio_tcp.py`` (its functions are used as they are, not copied).
RAW_WORKLOAD = r"""
import sys, trio
sys.path.insert(0, sys.argv[3])
from limit_trio_tcp import FramedStream, RpcClient, handle_connection
from _common import make_msg

async def main(scenario, n):
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handle_connection, listeners)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        if scenario == "raw-ask1":  # seq_direct
            fs = FramedStream(stream)
            for i in range(n):
                await fs.send(make_msg(i))
                (reply,) = await fs.receive_batch()
                assert reply["id"] == i
        else:  # seq (1 caller) or c16_wc (16), through the RPC client's reader (and writer)
            inflight = 16 if scenario == "raw-ask16" else 1
            client = RpcClient(stream, coalesce=inflight > 1)
            async def caller(k):
                for i in range(k):
                    reply = await client.call(make_msg(i))
                    assert reply["r"] == 3
            async with trio.open_nursery() as tasks:
                tasks.start_soon(client.reader)
                if inflight > 1:
                    tasks.start_soon(client.writer)
                async with trio.open_nursery() as callers:
                    for _ in range(inflight):
                        callers.start_soon(caller, n // inflight)
                tasks.cancel_scope.cancel()
        await stream.aclose()
        nursery.cancel_scope.cancel()

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""

RAW_SCENARIOS = ("raw-ask1", "raw-seq", "raw-ask16")

SCENARIOS = (
    "local-tell",
    "local-ask",
    "remote-ask1",
    "remote-ask16",
    "remote-ask16-mw",
    "remote-tell",
    "pubsub1",
    "pubsub10",
    "local-tell-metrics",
    "local-ask-metrics",
    "remote-ask1-metrics",
    "remote-ask16-metrics",
    *RAW_SCENARIOS,
)


def count(python: str, scenario: str, n: int, shared: Path | None = None) -> int:
    """Instructions a whole run of ``scenario`` with ``n`` operations executes."""
    if scenario in RAW_SCENARIOS:
        if shared is None:
            raise SystemExit("the raw scenarios need shared/bench (--shared-bench DIR)")
        return callgrind_total([python, "-c", RAW_WORKLOAD, scenario, str(n), str(shared)])
    return callgrind_total([python, "-c", WORKLOAD, scenario, str(n)])


def find_shared_bench(given: str | None) -> Path | None:
    """``shared/bench`` (the baselines' folder) given, or in a parent folder of this checkout."""
    if given:
        return Path(given)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "bench"
        if (candidate / "limit_trio_tcp.py").is_file():
            return candidate
    return None


def callgrind_total(argv: list[str]) -> int:
    """Instructions the command ``argv`` executes, counted by callgrind (other benchmarks
    count their own workloads with it)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        proc = subprocess.run([*tool, *argv], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:1] + argv[-3:])} failed:\n{proc.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--python", action="append", help="an interpreter with trimicro installed (repeat for A/B)"
    )
    parser.add_argument("--scenarios", default="local-tell,local-ask,remote-ask16,remote-ask16-mw")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=6000)
    parser.add_argument("--shared-bench", help="the folder of limit_trio_tcp.py (raw-* scenarios)")
    args = parser.parse_args()
    shared = find_shared_bench(args.shared_bench)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    pythons = args.python or [sys.executable]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    per_op: dict[str, dict[str, float]] = {}
    for python in pythons:
        for scenario in scenarios:
            small = count(python, scenario, args.small, shared)
            large = count(python, scenario, args.large, shared)
            value = (large - small) / (args.large - args.small)
            per_op.setdefault(python, {})[scenario] = value
            row = {"python": python, "scenario": scenario, "instructions_per_op": round(value)}
            print(json.dumps(row), flush=True)
    first = pythons[0]
    ratios = {p: {s: round(per_op[p][s] / per_op[first][s], 4) for s in scenarios} for p in pythons[1:]}
    print(json.dumps({"summary": True, "baseline": first, "ratio_to_baseline": ratios}))


if __name__ == "__main__":
    main()
