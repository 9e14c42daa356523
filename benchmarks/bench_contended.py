"""Remote ask on an idle machine and on a shared one: trimicro beside raw trio TCP and ZeroMQ,
throughput and CPU per call, in the same run.

Conditions (every round runs both, in turn):

* ``idle``: nothing but the benchmark;
* ``busy``: one CPU-bound process (``while True: pass``) that this script starts before the
  round's runs and stops (by pid) after them, pinned to the machine's last CPU: another service
  on the same host. On a 2-core machine it leaves one core to share.

Contestants (each run is a fresh set of processes; the order rotates from round to round):

* ``raw``: ``limit_trio_tcp.py`` of the shared baselines (``shared/bench``, found in a parent
  folder of this checkout or given with ``--shared-bench``), run there as it is: trio TCP with
  length-prefixed msgpack, no encryption, no actors. ``seq_direct`` (one caller, no reader
  task) is the reference for ``ask1``, ``c16_wc`` (16 callers, one writer task coalescing
  writes) for ``ask16``.
* ``zmq``: ``peer_zmq.py`` of the same folder (blocking pyzmq DEALER/ROUTER; ``seq``, ``c16``).
* ``trimicro``: two nodes in two processes (this file with ``--client``, which starts the
  server with ``--serve``), default options (busy polling on, Noise encryption, the development
  identity of a private temporary home), the public API: ``ask1`` (one caller) and ``ask16``
  (16 callers on one link), the same message as the baselines'.
* ``trimicro-nopoll``: the same with ``start_node(busy_poll=0)`` (``--only`` to include it).
* ``trimicro-b``: the same as ``trimicro`` with another checkout's interpreter
  (``--ab PYTHON``): an A/B of two versions in the same rounds.

Every phase reports ``rtt_per_s``, ``p50_us``/``p99_us`` and ``cpu_us_per_op``: the CPU time
(user + system) of the client and the server process over the measured phase, per call
(``/proc/PID/stat`` for the server, clock ticks). Each run records the load average and the
share of the machine that was busy just before it. The trimicro client also reports, for
client + server, the signals a busy-poll gate could watch: the share of wall time spent waiting
on a run queue (``runq_wait_share``, ``/proc/PID/schedstat``), involuntary context switches per
call (``nivcsw_per_op``), and of the client's polls the share that found their reply within
the budget (``client_poll_hit_share``), how many calls polled at all (``client_polled_share``),
and the cores the machine's other processes kept busy at the gate's last sample
(``client_others_cores``).

Output: one JSON line per run, then a summary line: per condition, contestant and metric the
median and min-max over rounds, and ratios (per round, then the median and min-max) of every
trimicro contestant to raw trio (rate and CPU per call: ``ask1``/``seq_direct``,
``ask16``/``c16_wc``) and of ``ask16`` to ZeroMQ's ``c16``; a markdown table on stderr.

Run:  .venv/bin/python benchmarks/bench_contended.py [--rounds 3] [--seconds 2] [--warmup 0.3]
      [--conditions idle,busy] [--only raw,zmq,trimicro,trimicro-nopoll] [--ab PYTHON]
      [--shared-bench DIR]
Needs: pyzmq (the ``bench`` extra) for the zmq contestant; one round of both conditions takes about
a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
HOST = "127.0.0.1"  # the only interface anything binds or connects to
MAX_CALLS = 2_000_000
PHASES = {"ask1": 1, "ask16": 16}
#: trimicro phase -> the phase of each baseline it is compared with.
REFERENCE = {"raw": {"ask1": "seq_direct", "ask16": "c16_wc"}, "zmq": {"ask1": "seq", "ask16": "c16"}}
CONTESTANTS = ("raw", "zmq", "trimicro", "trimicro-nopoll", "trimicro-b")
RUN_TIMEOUT = 120.0
#: What the trimicro client reports besides rate and CPU: the signals a poll gate could use.
SIGNALS = (
    "runq_wait_share",
    "nivcsw_per_op",
    "client_poll_hit_share",
    "client_polled_share",
    "client_others_cores",
)


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---- the trimicro contestant (client and server processes) ---------------------------------------


def _options(busy_poll: float | None) -> dict[str, Any]:
    return {} if busy_poll is None else {"busy_poll": busy_poll}


def _home() -> Path:
    return Path(tempfile.gettempdir()) / f"trimicro-bench-{os.getuid()}"


async def _serve(port_file: str, busy_poll: float | None) -> None:
    import trio

    from trimicro.actors import Actor, start_node

    class Adder(Actor):
        service_name = "Adder"

        async def add(self, m: Any) -> Any:
            return {"op": "reply", "id": m["id"], "r": m["a"] + m["b"]}

    async with start_node(
        "contended-server", listen=f"{HOST}:0", home=_home(), **_options(busy_poll)
    ) as node:
        await node.spawn(Adder, name="adder")
        tmp = f"{port_file}.tmp"
        await trio.Path(tmp).write_text(node.address or "")
        os.replace(tmp, port_file)
        await trio.sleep_forever()


def _cpu_ns(pid: int) -> int:
    """CPU time (user + system) of another process, from its clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _signals(pids: tuple[int, ...]) -> tuple[int, int]:
    """The candidate signals for "polling does not pay", summed over ``pids``: nanoseconds
    spent waiting on a run queue (``/proc/PID/schedstat``) and involuntary context switches
    (``/proc/PID/status``)."""
    wait = switches = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            wait += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches"):
                    switches += int(line.split()[1])
    return wait, switches


def _pct(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    return round(sorted_ns[min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns)) - 1))] / 1000, 1)


async def _client(
    address: str, server_pid: int, seconds: float, warmup: float, busy_poll: float | None
) -> dict[str, Any]:
    import trio

    from trimicro.actors import ask, start_node

    metrics: dict[str, Any] = {}
    async with start_node("contended-client", home=_home(), ask_timeout=30, **_options(busy_poll)) as node:
        server = await node.connect(address)
        ref = node.remote_ref(server, "adder")

        async def run(concurrency: int, span: float) -> tuple[list[int], int]:
            lat: list[int] = []
            ids = iter(range(MAX_CALLS))
            t0 = time.perf_counter_ns()
            deadline = t0 + int(span * 1e9)

            async def caller() -> None:
                for i in ids:
                    t = time.perf_counter_ns()
                    if t >= deadline:
                        return
                    reply = await ask(
                        ref, {"op": "add", "id": i, "a": 1, "b": 2, "s": "hello"}, endpoint="Adder.add"
                    )
                    lat.append(time.perf_counter_ns() - t)
                    assert reply["id"] == i and reply["r"] == 3

            async with trio.open_nursery() as nursery:
                for _ in range(concurrency):
                    nursery.start_soon(caller)
            return lat, time.perf_counter_ns() - t0

        for phase, concurrency in PHASES.items():
            await run(concurrency, warmup)
            poller = getattr(getattr(node, "remote", None), "poller", None)
            hits0, misses0 = getattr(poller, "hits", 0), getattr(poller, "misses", 0)
            wait0, switches0 = _signals((os.getpid(), server_pid))
            cpu0 = time.process_time_ns() + _cpu_ns(server_pid)
            lat, elapsed = await run(concurrency, seconds)
            cpu = time.process_time_ns() + _cpu_ns(server_pid) - cpu0
            wait, switches = _signals((os.getpid(), server_pid))
            hits, misses = getattr(poller, "hits", 0) - hits0, getattr(poller, "misses", 0) - misses0
            # The signals a poll gate could use (client + server): see trimicro.actors.busypoll.
            metrics[f"{phase}.runq_wait_share"] = round((wait - wait0) / elapsed, 3)
            metrics[f"{phase}.nivcsw_per_op"] = round((switches - switches0) / max(len(lat), 1), 3)
            metrics[f"{phase}.client_poll_hit_share"] = (
                round(hits / (hits + misses), 3) if hits + misses else None
            )
            metrics[f"{phase}.client_others_cores"] = getattr(poller, "others", None)
            metrics[f"{phase}.client_polled_share"] = round((hits + misses) / max(len(lat), 1), 3)
            lat.sort()
            metrics[f"{phase}.rtt_per_s"] = round(len(lat) / (elapsed / 1e9))
            metrics[f"{phase}.p50_us"] = _pct(lat, 0.5)
            metrics[f"{phase}.p99_us"] = _pct(lat, 0.99)
            metrics[f"{phase}.cpu_us_per_op"] = round(cpu / 1000 / max(len(lat), 1), 2)
    return metrics


def trimicro_client(args: argparse.Namespace) -> None:
    """The ``--client`` process: start the server, measure, print one JSON line."""
    import trio

    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        cmd = [sys.executable, str(HERE), "--serve", port_file]
        if args.busy_poll is not None:
            cmd += ["--busy-poll", str(args.busy_poll)]
        server = subprocess.Popen(cmd)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(port_file):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start (exit code {server.poll()})")
                time.sleep(0.02)
            address = Path(port_file).read_text()
            metrics = trio.run(_client, address, server.pid, args.seconds, args.warmup, args.busy_poll)
        finally:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    print(json.dumps({"bench": "trimicro", "ok": True, "metrics": metrics}), flush=True)


# ---- the orchestrator ----------------------------------------------------------------------------


def find_shared_bench(given: str | None) -> Path | None:
    """``shared/bench`` in a parent folder of this checkout (or the folder given)."""
    if given:
        return Path(given)
    for parent in HERE.parents:
        candidate = parent / "shared" / "bench"
        if (candidate / "limit_trio_tcp.py").exists():
            return candidate
    return None


def busy_fraction(seconds: float = 0.3) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat)."""

    def read() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]

    t1, i1 = read()
    time.sleep(seconds)
    t2, i2 = read()
    return round(1.0 - (i2 - i1) / max(t2 - t1, 1), 3)


@contextlib.contextmanager
def busy_loop(on: bool) -> Iterator[int | None]:
    """One CPU-bound process pinned to the last CPU while the block runs (stopped by pid)."""
    if not on:
        yield None
        return
    cpu = max(os.sched_getaffinity(0))
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)  # let it start spinning
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def command(contestant: str, args: argparse.Namespace, shared: Path | None) -> tuple[list[str], Path | None]:
    timing = ["--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    if contestant == "raw" and shared is not None:
        return [args.baseline_python, str(shared / "limit_trio_tcp.py"), *timing], shared
    if contestant == "zmq" and shared is not None:
        return [args.baseline_python, str(shared / "peer_zmq.py"), *timing], shared
    if contestant == "trimicro":
        return [sys.executable, str(HERE), "--client", *timing], None
    if contestant == "trimicro-nopoll":
        return [sys.executable, str(HERE), "--client", "--busy-poll", "0", *timing], None
    if contestant == "trimicro-b":
        return [args.ab, str(HERE), "--client", *timing], None
    raise SystemExit(f"contestant {contestant} is not available (shared bench not found?)")


def run_one(contestant: str, args: argparse.Namespace, shared: Path | None) -> dict[str, Any]:
    cmd, cwd = command(contestant, args, shared)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        # The scripts stop their own servers on SIGTERM; the group is theirs alone.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return {"ok": False, "error": f"timed out after {RUN_TIMEOUT:g}s"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": f"exit {proc.returncode}: {err.strip()[-400:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def metric(run: dict[str, Any] | None, contestant: str, phase: str, what: str) -> float | None:
    """``what`` of trimicro's ``phase`` in a run of ``contestant`` (a baseline: its reference)."""
    if run is None or not run.get("ok"):
        return None
    name = REFERENCE[contestant][phase] if contestant in REFERENCE else phase
    value = run["metrics"].get(f"{name}.{what}")
    return None if value is None else float(value)


def summarise(runs: list[dict[str, Any]], conditions: list[str], contestants: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"medians": {}, "ratios": {}}
    for cond in conditions:
        mine = [r for r in runs if r["condition"] == cond]
        medians = summary["medians"][cond] = {}
        for c in contestants:
            for phase in PHASES:
                for what in ("rtt_per_s", "cpu_us_per_op", "p50_us", *SIGNALS):
                    vals = [
                        v
                        for r in mine
                        if r["contestant"] == c
                        if (v := metric(r, c, phase, what)) is not None
                    ]
                    if vals:
                        medians[f"{c} {phase}.{what}"] = _stats(vals)
        ratios = summary["ratios"][cond] = {}
        for c in (c for c in contestants if c.startswith("trimicro")):
            for ref in ("raw", "zmq", "trimicro"):
                if ref not in contestants or ref == c:
                    continue
                for phase in PHASES:
                    for what in ("rtt_per_s", "cpu_us_per_op"):
                        per_round = []
                        for rnd in sorted({r["round"] for r in mine}):
                            by = {r["contestant"]: r for r in mine if r["round"] == rnd}
                            a, b = metric(by.get(c), c, phase, what), metric(by.get(ref), ref, phase, what)
                            if a and b:
                                per_round.append(round(a / b, 3))
                        if per_round:
                            ratios[f"{c}/{ref} {phase}.{what}"] = _stats(per_round)
    return summary


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| condition | ratio (per round, median) | min-max |", "|---|---|---|"]
    for cond, ratios in summary["ratios"].items():
        for name, st in ratios.items():
            lines.append(f"| {cond} | {name} | {st['median']:.2f} ({st['min']:.2f}-{st['max']:.2f}) |")
    lines += ["", "| condition | contestant metric | median | min-max |", "|---|---|---:|---:|"]
    for cond, medians in summary["medians"].items():
        for name, st in medians.items():
            lines.append(f"| {cond} | {name} | {st['median']:,.1f} | {st['min']:,.1f}-{st['max']:,.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--conditions", default="idle,busy")
    parser.add_argument("--only", default="raw,zmq,trimicro")
    parser.add_argument("--ab", metavar="PYTHON", help="another checkout's interpreter: trimicro-b")
    parser.add_argument("--shared-bench", help="the folder of limit_trio_tcp.py and peer_zmq.py")
    parser.add_argument(
        "--baseline-python", default=sys.executable, help="the interpreter for raw and zmq (needs pyzmq)"
    )
    # the processes of the trimicro contestant
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--busy-poll", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import trio

        trio.run(_serve, args.serve, args.busy_poll)  # until SIGTERM ends the process
        return
    if args.client:
        trimicro_client(args)
        return

    shared = find_shared_bench(args.shared_bench)
    contestants = [c for c in args.only.split(",") if c]
    if args.ab:
        contestants.append("trimicro-b")
    for c in contestants:
        if c not in CONTESTANTS:
            raise SystemExit(f"unknown contestant {c!r}; known: {', '.join(CONTESTANTS)}")
    if shared is None and ("raw" in contestants or "zmq" in contestants):
        raise SystemExit("shared/bench not found in a parent folder: pass --shared-bench DIR")
    conditions = [c for c in args.conditions.split(",") if c]
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for cond in conditions:
            with busy_loop(cond == "busy"):
                order = contestants[rnd % len(contestants) :] + contestants[: rnd % len(contestants)]
                for c in order:
                    before = busy_fraction()
                    result = run_one(c, args, shared)
                    result.update(
                        round=rnd,
                        condition=cond,
                        contestant=c,
                        busy_before=before,
                        loadavg_1m=round(os.getloadavg()[0], 2),
                    )
                    runs.append(result)
                    print(json.dumps(result), flush=True)
                    log(f"round {rnd} {cond} {c}: {'ok' if result.get('ok') else result.get('error')}")
    summary = summarise(runs, conditions, contestants)
    loads = [r["loadavg_1m"] for r in runs]
    summary.update(
        summary=True,
        rounds=args.rounds,
        seconds=args.seconds,
        cpus=os.cpu_count(),
        loadavg_1m={"min": min(loads), "max": max(loads)},
    )
    print(json.dumps(summary), flush=True)
    log(markdown(summary))


if __name__ == "__main__":
    main()
