"""Faults between hosts: the figures behind docs/hosts.md, as JSON.

Three hosts (network namespaces on one bridge, tests/netsim.py; root needed), nodes a and b
serving ``echo``, c calling it through the selector every 0.2 s (each call with a 3 s deadline
and the selector's retries); b and c join through ``--seed`` a. Two scenarios, each ``--rounds``
times on fresh hosts:

* ``latency_loss``: 100 ms one way on every link (a delaying TCP relay in each host, reached
  through an nftables redirect; so 200 ms round trip) and 5 % of the packets into every host
  dropped (nftables ``numgen random mod 100 < 5 drop``), for ``--seconds``. Reported: calls
  made and failed, suspicions (``suspect`` events in any view: each is a member that missed a
  probe and its indirect probes, then refuted) and false evictions (``dead`` events).
* ``partition``: host a cut off (nftables drop of everything in and out of its veth) for 10 s,
  then healed. Reported: seconds from the cut until a is dead in b's view and in c's, calls
  failed during the cut and after it, and seconds from the heal until every view holds a, b
  and c alive again (the target is 5 s).

Event times are the nodes' wall clocks (one machine, one clock) as they print each membership
change; the agreement time is when this process read the last change needed. The machine is
shared: figures vary from run to run, medians over rounds are reported with every round.

    sudo .venv/bin/python benchmarks/bench_hosts.py --rounds 3 > hosts.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from netsim import Netsim, processes, three_hosts


def _calls(proc: Any) -> tuple[int, int]:
    return proc.calls, proc.failed


async def latency_loss(seconds: float) -> dict[str, Any]:
    sim = Netsim()
    try:
        with tempfile.TemporaryDirectory() as home:
            async with processes() as cluster:
                hosts, procs = await three_hosts(sim, cluster, Path(home), delay=0.1)
                await cluster.wait_for(cluster.agree, 120, "a, b and c in every view")
                for host in hosts:
                    sim.loss(host, 5)
                c = procs[2]
                start, calls0 = time.time(), _calls(c)
                await trio.sleep(seconds)  # the fault's duration
                calls1 = _calls(c)
                window = [(p.name, e) for p in procs for e in p.events if e[0] >= start]
                return {
                    "seconds": seconds,
                    "calls": calls1[0] - calls0[0],
                    "calls_failed": calls1[1] - calls0[1],
                    "suspicions": sum(1 for _, e in window if e[2] == "suspect"),
                    "false_evictions": sum(1 for _, e in window if e[2] in ("dead", "left")),
                    "views_agree_at_end": cluster.agree(),
                }
    finally:
        sim.close()


async def partition(seconds: float) -> dict[str, Any]:
    sim = Netsim()
    try:
        with tempfile.TemporaryDirectory() as home:
            async with processes() as cluster:
                hosts, (_, b, c) = await three_hosts(sim, cluster, Path(home))
                await cluster.wait_for(cluster.agree, 120, "a, b and c in every view")
                calls0 = _calls(c)
                cut = time.time()
                sim.partition(hosts[0])
                await cluster.wait_for(lambda: b.view.get("a") == c.view.get("a") == "dead", 60, "a dead")
                await trio.sleep(max(0.0, cut + seconds - time.time()))  # the fault's duration
                calls1 = _calls(c)
                healed = time.time()
                sim.heal(hosts[0])
                await cluster.wait_for(cluster.agree, 120, "every view agrees after the heal")
                agreed = time.time()  # the events are read as the nodes print them
                calls2 = _calls(c)

                def dead_after(p: Any) -> float:
                    return min(e[0] for e in p.events if e[1] == "a" and e[2] == "dead" and e[0] >= cut) - cut

                return {
                    "cut_seconds": seconds,
                    "dead_in_b_after": round(dead_after(b), 3),
                    "dead_in_c_after": round(dead_after(c), 3),
                    "calls_during_cut": calls1[0] - calls0[0],
                    "calls_failed_during_cut": calls1[1] - calls0[1],
                    "calls_failed_until_agreed": calls2[1] - calls1[1],
                    "views_agree_after_heal": round(max(0.0, agreed - healed), 3),
                }
    finally:
        sim.close()


async def main(args: argparse.Namespace) -> None:
    rounds: dict[str, list[dict[str, Any]]] = {"latency_loss": [], "partition": []}
    for _ in range(args.rounds):  # interleaved, so both see the same load over time
        rounds["latency_loss"].append(await latency_loss(args.seconds))
        rounds["partition"].append(await partition(10.0))
    medians = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0] if not isinstance(runs[0][k], bool)}
        for name, runs in rounds.items()
    }
    json.dump({"rounds": rounds, "medians": medians}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency/loss window")
    trio.run(main, parser.parse_args())
