"""Calls per second through the selector to one worker and to two (``trimicro run --workers``).

Two servers run side by side for the whole run, each a real ``trimicro run`` of the same
module under its own service name: ``--workers 1`` (one node process, the default) and
``--workers 2`` (a supervisor and two worker processes). Client processes (``--clients``, 2 by
default, each a client node with ``--concurrency`` callers, 16 by default) call through
``Cluster.call``, so the selector spreads the calls over the nodes of the service. Rounds
interleave the two servers (the order alternates per round), and the figure is the median of
the per-round ratios calls/s(2 workers) / calls/s(1 worker).

Two handlers, each measured on both servers:

* ``echo`` returns its body: the framework's own cost per call, about as much CPU on the
  client's side as on the server's;
* ``work`` first runs a fixed pure-Python loop (``--work`` iterations, about a millisecond):
  a service whose handlers cost more than the call around them.

**The clients use the same cores as the workers.** On a 2-core machine the client processes
and the workers compete for 2 cores, so the ratio can only show what the cores left to the
servers allow. To account for it, every measurement reports the CPU time of each side over the
measured window, from the kernel's accounting: the clients' (``time.process_time`` in each
client process) and the workers' (``utime + stime`` of ``/proc/PID/stat`` for each process
that answered, found from the pids the handlers return), as microseconds per call and as cores
used (CPU seconds per wall second). With several client processes the client side is not held
to one core.

Wall-clock rates depend on what else the machine runs: under load two worker processes also
win a larger share of the scheduler than one, which inflates the ratio (the summary records the
load average). CPU per call does not depend on that share, so the summary also gives
``cpu_model_ratio``: the ratio of the rates this machine's cores would allow, computed per round
from the CPU per call measured in that round. A setup's rate is bounded by each process being
one thread (``workers / worker CPU per call``, ``clients / client CPU per call``) and by the
cores shared by both sides (``cores / (client + worker CPU per call)``); it is the smallest of
the three. ``cpu_model_ratio_clients_elsewhere`` bounds each setup by its workers alone
(``min(workers, cores) / worker CPU per call``): the gain when the callers run on other hosts.

Every socket is loopback (mDNS on 127.0.0.1); the servers use a temporary home (their own
authority). Every load loop is bounded in time (``--seconds``) and in count (2M calls).

Output: one JSON line per (round, handler, server) on stdout, then a summary line; ``--markdown``
adds a table on stderr.

Run:  .venv/bin/python benchmarks/bench_workers.py [--rounds 5] [--seconds 3] [--clients 2]
      [--concurrency 16] [--work 20000] [--handlers echo,work] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

HERE = os.path.abspath(__file__)
MAX_CALLS = 2_000_000
START = 120.0
SETUPS = {"w1": 1, "w2": 2}

MODULE = """
import os

from trimicro.actors import Actor

WORK = {work}


class Bench(Actor):
    service_name = {name!r}

    async def echo(self, body: dict) -> dict:
        return {{"node": self.context.node.id, "pid": os.getpid()}}

    async def work(self, body: dict) -> dict:
        x = 0
        for i in range(WORK):
            x += i * i
        return {{"node": self.context.node.id, "pid": os.getpid(), "x": x & 1}}
"""


# ---- a client process ------------------------------------------------------------------------------


async def client_main(home: str) -> None:
    """Read a job per line on stdin; answer ``ready`` (with the servers' pids) after warming up,
    then run it on ``go`` and answer the result."""
    from trimicro.cluster.cluster import start_cluster
    from trimicro.mailbox.errors import MicroError

    stdin = trio.lowlevel.FdStream(os.dup(0))
    buffer = b""

    async def line() -> str:
        nonlocal buffer
        while b"\n" not in buffer:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                raise SystemExit(0)
            buffer += chunk
        text, buffer = buffer.split(b"\n", 1)
        return text.decode()

    def answer(obj: Any) -> None:
        print(json.dumps(obj), flush=True)

    async with start_cluster(
        home=Path(home), listen=None, membership=False, announce=False, auth_refresh=None
    ) as cluster:
        while True:
            job = json.loads(await line())
            service, endpoint = job["service"], f"{job['service']}.{job['handler']}"
            nodes: dict[str, int] = {}
            with trio.fail_after(START):  # warm up: a link to every node of the service
                for _ in range(MAX_CALLS):
                    try:
                        reply = await cluster.call(service, endpoint, {}, timeout=10)
                    except MicroError:
                        continue
                    nodes[reply["node"]] = reply["pid"]
                    if len(nodes) >= job["nodes"]:
                        break
            answer({"ready": sorted(nodes.values())})
            assert await line() == "go"
            calls = errors = 0
            cpu0, t0 = time.process_time(), trio.current_time()
            deadline = t0 + job["seconds"]

            async def caller() -> None:
                nonlocal calls, errors
                while trio.current_time() < deadline and calls < MAX_CALLS:
                    try:
                        await cluster.call(service, endpoint, {}, timeout=10)
                        calls += 1
                    except MicroError:
                        errors += 1

            async with trio.open_nursery() as nursery:
                for _ in range(job["concurrency"]):
                    nursery.start_soon(caller)
            answer(
                {
                    "calls": calls,
                    "errors": errors,
                    "seconds": trio.current_time() - t0,
                    "cpu": time.process_time() - cpu0,
                }
            )


# ---- the orchestrating process ---------------------------------------------------------------------


class Lines:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.buffer = b""

    async def next(self) -> str:
        stream = self.proc.stdout
        assert stream is not None
        while b"\n" not in self.buffer:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise EOFError("the process ended")
            self.buffer += chunk
        text, self.buffer = self.buffer.split(b"\n", 1)
        return text.decode()

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(text.encode() + b"\n")


@asynccontextmanager
async def process(argv: list[str], *, stdin: bool = False) -> Any:
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    try:
        yield Lines(proc)
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)  # servers deregister; clients end on SIGINT too
                with trio.move_on_after(30):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (and of its waited-for children: none here), from the kernel."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    clients: list[Lines], service: str, handler: str, nodes: int, args: argparse.Namespace
) -> dict[str, Any]:
    job = {
        "service": service,
        "handler": handler,
        "nodes": nodes,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
    }
    for c in clients:
        await c.send(json.dumps(job))
    pids: set[int] = set()
    with trio.fail_after(START):
        for c in clients:
            pids.update(json.loads(await c.next())["ready"])
    before = {pid: cpu_seconds(pid) for pid in pids}
    wall0 = time.monotonic()
    for c in clients:
        await c.send("go")
    results = []
    with trio.fail_after(START + args.seconds):
        for c in clients:
            results.append(json.loads(await c.next()))
    wall = time.monotonic() - wall0
    workers_cpu = sum(cpu_seconds(pid) - before[pid] for pid in pids)
    calls = sum(r["calls"] for r in results)
    seconds = max(r["seconds"] for r in results)
    client_cpu = sum(r["cpu"] for r in results)
    return {
        "calls": calls,
        "errors": sum(r["errors"] for r in results),
        "calls_per_s": calls / seconds,
        "client_cpu_us_per_call": 1e6 * client_cpu / max(calls, 1),
        "workers_cpu_us_per_call": 1e6 * workers_cpu / max(calls, 1),
        "client_cores": client_cpu / wall,
        "workers_cores": workers_cpu / wall,
        "worker_processes": len(pids),
    }


async def main(args: argparse.Namespace) -> None:
    handlers = args.handlers.split(",")
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        home = Path(tmp) / "home"
        cli = [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home)]
        services = {}
        async with AsyncExitStack() as stack:
            for setup, count in SETUPS.items():
                name = f"bench-{setup}-{uuid.uuid4().hex[:8]}"
                module = Path(tmp) / f"svc_{setup}.py"
                module.write_text(MODULE.format(name=name, work=args.work))
                server = await stack.enter_async_context(
                    process([*cli, "run", str(module), "--workers", str(count), "--name", setup])
                )
                with trio.fail_after(START):
                    seen = 0
                    while seen < count:
                        seen += (await server.next()).startswith("node ")
                services[setup] = name
            clients = [
                await stack.enter_async_context(
                    process([sys.executable, HERE, "--client", str(home)], stdin=True)
                )
                for _ in range(args.clients)
            ]
            rows: list[dict[str, Any]] = []
            for round_ in range(args.rounds):
                for handler in handlers:
                    order = list(SETUPS) if round_ % 2 == 0 else list(reversed(SETUPS))
                    for setup in order:
                        row = await measure(clients, services[setup], handler, SETUPS[setup], args)
                        row.update(round=round_, handler=handler, server=setup, load=os.getloadavg()[0])
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    summary = summarise(rows, handlers, cores, args)
    print(json.dumps(summary), flush=True)
    if args.markdown:
        print(markdown(summary), file=sys.stderr)


def summarise(
    rows: list[dict[str, Any]], handlers: list[str], cores: int, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cores": cores,
        "clients": args.clients,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "work": args.work,
        "handlers": {},
    }
    for handler in handlers:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for row in rows:
            if row["handler"] == handler:
                by_round.setdefault(row["round"], {})[row["server"]] = row
        ratios = [r["w2"]["calls_per_s"] / r["w1"]["calls_per_s"] for r in by_round.values()]
        model = [
            capacity(r["w2"], 2, cores, args) / capacity(r["w1"], 1, cores, args) for r in by_round.values()
        ]
        alone = [
            min(2, cores) * r["w1"]["workers_cpu_us_per_call"] / r["w2"]["workers_cpu_us_per_call"]
            for r in by_round.values()
        ]
        entry: dict[str, Any] = {
            "ratio_w2_w1": statistics.median(ratios),
            "ratio_min_max": [min(ratios), max(ratios)],
            "cpu_model_ratio": statistics.median(model),
            "cpu_model_ratio_clients_elsewhere": statistics.median(alone),
            "load_average": [min(r["load"] for r in rows), max(r["load"] for r in rows)],
        }
        for setup in SETUPS:
            mine = [r[setup] for r in by_round.values()]
            entry[setup] = {
                key: statistics.median(m[key] for m in mine)
                for key in (
                    "calls_per_s",
                    "client_cpu_us_per_call",
                    "workers_cpu_us_per_call",
                    "client_cores",
                    "workers_cores",
                )
            }
            entry[setup]["errors"] = sum(m["errors"] for m in mine)
        out["handlers"][handler] = entry
    return out


def capacity(row: dict[str, Any], workers: int, cores: int, args: argparse.Namespace) -> float:
    """Calls/s this machine's cores would allow at the CPU per call of ``row`` (see the module
    docstring): each process is one thread, and both sides share the cores."""
    client, worker = row["client_cpu_us_per_call"], row["workers_cpu_us_per_call"]
    return 1e6 * min(
        min(workers, cores) / worker, min(args.clients, cores) / client, cores / (client + worker)
    )


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| handler | server | calls/s | client CPU µs/call | workers CPU µs/call | client cores | "
        "workers cores | ratio w2/w1 (min-max) | CPU model ratio | clients elsewhere |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for handler, entry in summary["handlers"].items():
        for setup in SETUPS:
            s = entry[setup]
            low, high = entry["ratio_min_max"]
            ratio = f"{entry['ratio_w2_w1']:.2f} ({low:.2f}-{high:.2f})" if setup == "w2" else ""
            ideal = f"{entry['cpu_model_ratio']:.2f}" if setup == "w2" else ""
            alone = f"{entry['cpu_model_ratio_clients_elsewhere']:.2f}" if setup == "w2" else ""
            lines.append(
                f"| {handler} | {setup} | {s['calls_per_s']:.0f} | {s['client_cpu_us_per_call']:.0f} | "
                f"{s['workers_cpu_us_per_call']:.0f} | {s['client_cores']:.2f} | {s['workers_cores']:.2f} | "
                f"{ratio} | {ideal} | {alone} |"
            )
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="callers per client process")
    parser.add_argument("--work", type=int, default=20000, help="loop iterations of the work handler")
    parser.add_argument("--handlers", default="echo,work")
    parser.add_argument("--markdown", action="store_true", help="a table on stderr")
    parser.add_argument("--client", metavar="HOME", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    options = parse()
    if options.client:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # the orchestrator ends us with SIGINT
        trio.run(client_main, options.client)
    else:
        trio.run(main, options)
