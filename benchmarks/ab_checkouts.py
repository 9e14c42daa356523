"""A/B of two checkouts of trimicro: the same benchmark script, run with each checkout's
interpreter in turn (A, B, B, A, A, B, ...), one round per run; reports per-round ratios B/A
and their median for every numeric metric both runs report.

The machine is shared and noisy: interleaving the two and taking the median of per-round
ratios is what makes a few percent visible. Each checkout needs its own venv with its code
installed (``pip install -e``); the benchmark script is the one given (this checkout's, so
both sides run the same measurement code), and each run imports trimicro from its venv.

Run:  python benchmarks/ab_checkouts.py --a /path/to/base/.venv/bin/python --b .venv/bin/python \\
          --rounds 6 -- benchmarks/bench_local.py --only-trimicro --seconds 1
      python benchmarks/ab_checkouts.py --a ... --b ... --rounds 6 -- \\
          benchmarks/bench_remote.py --only trimicro --phases ask1,ask16 --seconds 2

      python benchmarks/ab_checkouts.py --a ... --b ... --rounds 4 \\
          --a-script /path/to/base/benchmarks/bench_store.py -- benchmarks/bench_store.py

``--a-script`` runs A's own copy of the benchmark, for a base that lacks the modules this
checkout's script imports (only worth it when the two copies measure the same way).

Output: one JSON line per run, then a summary line ``{"ratios_b_over_a": {metric: {median,
min, max, n, a, b}}}`` (``a``, ``b``: each side's median value). For bench_local the metrics
are those of its round line; for bench_remote, ``<contestant>.<phase>.ops_per_s`` (and p50,
p99, CPU per op) from its per-(round, contestant, phase) lines; for bench_pubsub
``<contestant>.sub<N>.deliveries_per_s``; for bench_store ``<contestant>.<operation>.ops_per_s``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any


def metrics(stdout: str) -> dict[str, float]:
    """The numeric metrics of one benchmark run (one round)."""
    out: dict[str, float] = {}
    for line in stdout.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("summary"):
            continue
        if isinstance(row.get("metrics"), dict):  # bench_local: one line per round
            out.update({k: v for k, v in row["metrics"].items() if isinstance(v, (int, float))})
        elif "contestant" in row and "phase" in row:  # bench_remote: one line per phase
            for k in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_op"):
                if isinstance(row.get(k), (int, float)):
                    out[f"{row['contestant']}.{row['phase']}.{k}"] = row[k]
        elif "contestant" in row and "subscribers" in row:  # bench_pubsub: one line per fan-out
            out[f"{row['contestant']}.sub{row['subscribers']}.deliveries_per_s"] = row["deliveries_per_s"]
        elif "contestant" in row:  # bench_store: one line per contestant, ops/s per operation
            for k, v in row.items():
                if k not in ("round", "contestant") and isinstance(v, (int, float)):
                    out[f"{row['contestant']}.{k}.ops_per_s"] = v
        elif "phase" in row and isinstance(row.get("rate"), dict):  # bench_store: a read phase
            phase = str(row["phase"]).split()[0]
            out.update({f"{who}.{phase}.ops_per_s": v for who, v in row["rate"].items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--a", required=True, help="python of checkout A (the base)")
    p.add_argument("--b", required=True, help="python of checkout B (the change)")
    p.add_argument("--rounds", type=int, default=6, help="runs of each (default 6)")
    p.add_argument(
        "--a-script",
        help="the script A runs instead of the one given (same options): for a base whose modules "
        "sit elsewhere, its own copy of the benchmark, whose measurement code is the same",
    )
    p.add_argument("bench", nargs=argparse.REMAINDER, help="-- script and its options")
    args = p.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if not bench:
        p.error("give the benchmark after --")
    per_round: dict[str, list[float]] = {}
    values: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
    for r in range(args.rounds):
        order = ("a", "b") if r % 2 == 0 else ("b", "a")
        got: dict[str, dict[str, float]] = {}
        for side in order:
            python = args.a if side == "a" else args.b
            script = [args.a_script, *bench[1:]] if side == "a" and args.a_script else bench
            run = subprocess.run(
                [python, *script, "--rounds", "1"], capture_output=True, text=True, check=True, timeout=3600
            )
            got[side] = metrics(run.stdout)
            for key, v in got[side].items():
                values[side].setdefault(key, []).append(v)
            print(json.dumps({"round": r + 1, "side": side, "metrics": got[side]}), flush=True)
        for key, a in got["a"].items():
            b = got["b"].get(key)
            if b is not None and a:
                per_round.setdefault(key, []).append(b / a)
    summary: dict[str, Any] = {
        key: {
            "median": round(statistics.median(v), 3),
            "min": round(min(v), 3),
            "max": round(max(v), 3),
            "n": len(v),
            "a": statistics.median(values["a"][key]),
            "b": statistics.median(values["b"][key]),
        }
        for key, v in sorted(per_round.items())
    }
    print(json.dumps({"summary": True, "ratios_b_over_a": summary}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
