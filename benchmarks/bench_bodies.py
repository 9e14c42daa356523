"""What structuring endpoint bodies costs: in-process asks by endpoint with map bodies.

One node, one actor; sequential ``ask`` round trips (the handler has no ``await``, so a direct
ask runs it inline: what is left is the ask machinery plus the body's conversion):

* ``type``: ``ask(ref, Add(...))``, by type: no conversion, the baseline;
* ``flat``: ``ask(ref, {"op", "id", "a", "b"}, endpoint="Bench.add")`` into a 4-field attrs class
  (the ``ask1attrs`` body of bench_remote.py);
* ``nested``: a map with a list of 3 nested maps into a class holding a ``list[Line]``;
* ``map``: the same flat map to a handler annotated ``dict[str, Any]`` (taken as it is).

Each phase runs ``--n`` calls per round; a round's figure is ns per call, and the run reports
the best (lowest) round per phase, the figure least disturbed by other load on the machine,
plus the median. One JSON line per round, then a summary line.

Run:  python benchmarks/bench_bodies.py [--rounds 7] [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from trimicro.actors import Actor, ask, start_node

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _remote_trimicro import Add  # the ask1attrs body of bench_remote.py


@attrs.frozen
class Line:
    sku: str
    qty: int


@attrs.frozen
class Basket:
    owner: str
    lines: list[Line]


class Bench(Actor):
    service_name = "Bench"

    async def add(self, m: Add) -> int:
        return m.a + m.b

    async def basket(self, m: Basket) -> int:
        return len(m.lines)

    async def plain(self, m: dict[str, Any]) -> int:
        return int(m["a"]) + int(m["b"])


FLAT = {"op": "add", "id": 7, "a": 1, "b": 2}
NESTED = {"owner": "ann", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}, {"sku": "c", "qty": 3}]}
PHASES = ("type", "flat", "nested", "map")


async def run(rounds: int, n: int) -> None:
    async with start_node("bench") as node:
        ref = await node.spawn(Bench, name="bench")
        calls = {
            "type": lambda: ask(ref, Add("add", 7, 1, 2)),
            "flat": lambda: ask(ref, FLAT, endpoint="Bench.add"),
            "nested": lambda: ask(ref, NESTED, endpoint="Bench.basket"),
            "map": lambda: ask(ref, FLAT, endpoint="Bench.plain"),
        }
        for call in calls.values():  # warm-up (and a check that each phase works)
            for _ in range(min(n, 2000)):
                await call()
        best: dict[str, list[float]] = {p: [] for p in PHASES}
        for r in range(1, rounds + 1):
            line: dict[str, Any] = {"bench": "bench_bodies", "round": r}
            for phase in PHASES:
                call = calls[phase]
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    await call()
                ns = (time.perf_counter_ns() - t0) / n
                best[phase].append(ns)
                line[f"{phase}_ns"] = round(ns)
            print(json.dumps(line), flush=True)
        summary = {
            "bench": "bench_bodies",
            "summary": True,
            "n": n,
            "rounds": rounds,
            "best_ns": {p: round(min(v)) for p, v in best.items()},
            "median_ns": {p: round(statistics.median(v)) for p, v in best.items()},
        }
        print(json.dumps(summary), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--n", type=int, default=20000, help="calls per phase and round")
    args = p.parse_args()
    trio.run(run, args.rounds, args.n)


if __name__ == "__main__":
    main()
