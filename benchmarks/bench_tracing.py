"""What tracing costs: asks with no SDK, with every call traced, and with 1% sampling.

Three modes of the same workload, compared with each other in the same run:

* ``off``: no OpenTelemetry SDK in play (the node finds no provider and installs nothing);
* ``all``: an SDK ``TracerProvider`` sampling every trace, its spans going to an in-memory
  exporter through a ``SimpleSpanProcessor`` (the span's whole life on the caller's task; the
  exporter is cleared every 1,000 calls so memory stays bounded);
* ``ratio``: the same provider with ``ParentBased(TraceIdRatioBased(0.01))``: one trace in a
  hundred is recorded, the other calls make non-recording spans and still carry the context.

Scenarios: ``local-ask`` (sequential asks to an actor of the same node) and ``remote-ask1``
(sequential asks to an actor of another node in the same process, over TCP on 127.0.0.1:
client and server CPU both count). Every such ask starts a trace of its own: a root, where
the sampler decides. The ``-nested`` variants make the same asks from inside a handler that
serves a request which came with a ``traceparent`` (sampled in ``all``, not sampled in
``ratio``, as the 99 requests in 100 that an upstream gateway sampled out): the calls inside
a trace, which are most calls in a system where traces start at its edge. Each node gets the
provider as ``start_node(tracing=)``, so the modes need no global state and one process can
run them all.

Two measures:

* default: wall-clock, the modes interleaved round by round in one process, reported as
  calls per second (median of the rounds) and as the ratio of each mode to ``off`` in the
  same run (a busy machine moves the absolute rates, much less the ratios);
* ``--instructions``: callgrind instruction counts per call (as
  ``benchmarks/count_instructions.py`` counts them: two runs of different lengths, the
  difference divided by the difference in calls), which do not move with the machine's load.

Run:  python benchmarks/bench_tracing.py [--scenarios local-ask,remote-ask1] [--calls 2000]
          [--rounds 5] [--instructions [--small 1000 --large 3000]]
Output: JSON lines, one per (scenario, mode), then a summary line with the ratios to ``off``.
Needs the ``otel`` extra (and valgrind for ``--instructions``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

MODES = ("off", "all", "ratio")
SCENARIOS = ("local-ask", "remote-ask1", "local-ask-nested", "remote-ask1-nested")
#: The upstream request of the ``-nested`` scenarios, sampled or not.
UPSTREAM = {
    "all": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "ratio": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
}


def provider(mode: str) -> Any:
    """The ``tracing=`` setting of a mode (and the exporter to clear, if any)."""
    if mode == "off":
        return False, None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    sampler = ALWAYS_ON if mode == "all" else ParentBased(TraceIdRatioBased(0.01))
    tracer_provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


async def run(scenario: str, mode: str, calls: int) -> float:
    """Seconds ``calls`` sequential asks take (after a warm-up) in ``scenario`` and ``mode``."""
    from trimicro.actors import Actor, ask, start_node
    from trimicro.mailbox.secure.identity import Authority, NodeIdentity
    from trimicro.mailbox.transport.tcp import TcpTransport

    class Counter(Actor):
        def __init__(self) -> None:
            self.n = 0

        async def inc(self, msg: int) -> int:
            self.n += msg
            return self.n

    tracing, exporter = provider(mode)

    async def loop(ref: Any) -> float:
        for _ in range(200):  # warm-up: first-call paths, caches
            await ask(ref, 1)
        started = time.perf_counter()
        for i in range(calls):
            await ask(ref, 1)
            if exporter is not None and i % 1000 == 999:
                exporter.clear()
        return time.perf_counter() - started

    class Driver(Actor):
        """Makes the asks while serving one request (the ``-nested`` scenarios)."""

        def __init__(self, ref: Any) -> None:
            self.ref = ref

        async def run(self, msg: str) -> float:
            return await loop(self.ref)

    async def measure(node: Any, ref: Any) -> float:
        if not scenario.endswith("-nested"):
            return await loop(ref)
        driver = await node.spawn(Driver, ref)
        headers = {"traceparent": UPSTREAM[mode]} if mode in UPSTREAM else None
        seconds: float = await ask(driver, "go", headers=headers, timeout=3600)
        return seconds

    if scenario.startswith("local-ask"):
        async with start_node("bench", tracing=tracing) as node:
            return await measure(node, await node.spawn(Counter))
    authority, transport = Authority.generate(), TcpTransport()
    options: dict[str, Any] = {"busy_poll": 0, "transport": transport, "tracing": tracing}
    async with (
        start_node("a", listen="127.0.0.1:0", identity=NodeIdentity.issue("a", authority), **options) as a,
        start_node("b", listen="127.0.0.1:0", identity=NodeIdentity.issue("b", authority), **options) as b,
    ):
        await b.spawn(Counter, name="counter")
        assert b.address is not None
        await a.connect(b.address)
        return await measure(a, a.remote_ref("b", "counter"))


def wall_clock(scenarios: list[str], modes: list[str], calls: int, rounds: int) -> None:
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for scenario in scenarios:
            for mode in modes:
                seconds = trio.run(run, scenario, mode, calls)
                rates.setdefault((scenario, mode), []).append(calls / seconds)
    summary: dict[str, dict[str, float]] = {}
    for scenario in scenarios:
        base = statistics.median(rates[(scenario, "off")])
        for mode in modes:
            median = statistics.median(rates[(scenario, mode)])
            row = {"scenario": scenario, "mode": mode, "calls_per_s": round(median), "rounds": rounds}
            print(json.dumps(row), flush=True)
            summary.setdefault(scenario, {})[mode] = round(median / base, 4)
    print(json.dumps({"summary": True, "measure": "calls_per_s", "ratio_to_off": summary}))


def instructions(scenarios: list[str], modes: list[str], small: int, large: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from count_instructions import callgrind_total

    per_call: dict[str, dict[str, float]] = {}
    for scenario in scenarios:
        for mode in modes:
            argv = [__file__, "--one", scenario, mode]
            totals = [callgrind_total([sys.executable, *argv, str(n)]) for n in (small, large)]
            value = (totals[1] - totals[0]) / (large - small)
            per_call.setdefault(scenario, {})[mode] = value
            row = {"scenario": scenario, "mode": mode, "instructions_per_call": round(value)}
            print(json.dumps(row), flush=True)
    ratios = {
        s: {m: round(v / per_call[s]["off"], 4) for m, v in modes.items()} for s, modes in per_call.items()
    }
    print(json.dumps({"summary": True, "measure": "instructions_per_call", "ratio_to_off": ratios}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--modes", default=",".join(MODES), help="off (the baseline) and others")
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (wall-clock)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=3000)
    parser.add_argument("--one", nargs=3, metavar=("SCENARIO", "MODE", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # one run under callgrind (see instructions())
        scenario, mode, calls = args.one
        trio.run(run, scenario, mode, int(calls))
        return
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; known: {', '.join(SCENARIOS)}")
    modes = [m for m in args.modes.split(",") if m]
    if "off" not in modes or not set(modes) <= set(MODES):
        raise SystemExit(f"modes: off and any of {', '.join(MODES[1:])}")
    if args.instructions:
        instructions(scenarios, modes, args.small, args.large)
    else:
        wall_clock(scenarios, modes, args.calls, args.rounds)


if __name__ == "__main__":
    main()
