"""Where one remote call's CPU goes, layer by layer: a deterministic profile (cProfile) of remote
asks between two nodes in one process over TCP on 127.0.0.1, both sides counted.

Each function's own time (``tottime``) is charged to a layer by the file it is defined in:

* ``codec`` (the message body's msgpack), ``envelope``, ``framing``, ``noise`` (the secure
  channel, libsodium through cffi included), ``transport`` (the TCP connection's frames);
* ``remote: send`` (the ask, the outbox, the flusher), ``remote: receive`` (the link's reader,
  dispatch), ``polling`` (:mod:`trimicro.actors.busypoll`);
* ``actors`` (cells, mailboxes, the reply slot, middleware, the public API), ``auth``;
* ``trio: scheduler`` (the run loop, tasks, checkpoints) and ``trio: other``;
* ``syscalls``: the time inside ``epoll_wait``, ``read``, ``write``, ``send`` and ``recv`` as
  seen from Python (the kernel's work, not what it costs to be woken by another process).

A built-in function (a C call) other than those system calls is charged to the layer of the
Python function that called it (cProfile records the time per caller). The shares are then
scaled to the CPU time one call takes without the profiler (measured first, in the same
process, with ``time.process_time``), so the figures are microseconds per call. cProfile
reads the wall clock, so a preemption (a busy machine) charges its time to whatever function
was running: each layer and function is the median of ``--runs`` profiled runs.

What it does not show: two processes waking each other (the scheduler's and the kernel's side
of a cross-process round trip): the remote benchmarks measure that (``bench_contended.py``).
cProfile slows Python functions more than C ones, so small layers read a little high.

Run:  python benchmarks/profile_remote.py [--calls 3000] [--inflight 1,16] [--top 25] [--runs 5]
Output: one JSON line per in-flight count: ``cpu_us_per_call`` (no profiler), ``layers_us``
(per call, by layer) and ``top`` (the functions with the most own time, µs per call).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from collections import defaultdict
from typing import Any

import trio

from trimicro.actors import Actor, ask, start_node
from trimicro.mailbox.secure.identity import Authority, NodeIdentity
from trimicro.mailbox.transport.tcp import TcpTransport

#: Built-in calls that are the kernel's work (charged to ``syscalls``, not to their caller).
SYSCALLS = ("poll' of 'select.epoll", "posix.write", "posix.read", "method 'send'", "method 'recv'")

#: (substring of a file path, layer), first match wins.
LAYERS = (
    ("/mailbox/codec/", "codec"),
    ("/mailbox/envelope.py", "envelope"),
    ("trimicro.mailbox.envelope", "envelope"),  # attrs' generated __init__ of Envelope
    ("/mailbox/framing.py", "framing"),
    ("/mailbox/secure/", "noise"),
    ("/nacl/", "noise"),
    ("/mailbox/transport/", "transport"),
    ("/actors/remote/link.py", "remote: receive"),
    ("/actors/remote/tellflow.py", "remote: receive"),
    ("/actors/remote/", "remote: send"),
    ("/actors/busypoll.py", "polling"),
    ("/cluster/auth/", "auth"),
    ("/actors/", "actors"),
    ("/mailbox/", "actors"),
    ("/trio/_core/", "trio: scheduler"),
    ("/trio/", "trio: other"),
    ("outcome", "trio: scheduler"),
    ("profile_remote.py", "the benchmark's callers"),
)


class Counter(Actor):
    async def inc(self, msg: int) -> int:
        return msg + 1


def layer_of(func: tuple[str, int, str]) -> str | None:
    """The layer of a profiled function, or None for a built-in (charged to its caller)."""
    path, _, name = func
    if path == "~":
        return "syscalls" if any(s in name for s in SYSCALLS) else None
    for part, layer in LAYERS:
        if part in path:
            return layer
    return "other"


def by_layer(stats: pstats.Stats) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Own time per layer (seconds), and every function's own time."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    layers: dict[str, float] = defaultdict(float)
    funcs: list[tuple[float, str]] = []
    for func, (_, _, tottime, _, callers) in raw.items():
        funcs.append((tottime, f"{func[0].rsplit('/', 2)[-1]}:{func[1]}({func[2]})"))
        layer = layer_of(func)
        if layer is not None:
            layers[layer] += tottime
            continue
        # A C call: split its time over its callers' layers, by the time spent per caller.
        for caller, (_, _, caller_tt, _) in callers.items():
            layers[layer_of(caller) or "other"] += caller_tt
    return layers, sorted(funcs, reverse=True)


async def _calls(n: int, inflight: int, prof: cProfile.Profile | None = None) -> float:
    """Run ``n`` asks with ``inflight`` callers; the CPU seconds the asks took (set-up excluded,
    and from the profile too)."""
    auth, tr = Authority.generate(), TcpTransport()
    kw: dict[str, Any] = {"busy_poll": 0, "transport": tr, "listen": "127.0.0.1:0"}
    async with (
        start_node("a", identity=NodeIdentity.issue("a", auth), **kw) as a,
        start_node("b", identity=NodeIdentity.issue("b", auth), **kw) as b,
    ):
        await b.spawn(Counter, name="counter")
        await a.connect(b.address or "")
        ref = a.remote_ref("b", "counter")
        for _ in range(200):  # warm up: the link, the caches
            await ask(ref, 1)

        async def worker(k: int) -> None:
            for _ in range(k):
                await ask(ref, 1)

        t0 = time.process_time()
        if prof is not None:
            prof.enable()
        async with trio.open_nursery() as nursery:
            for _ in range(inflight):
                nursery.start_soon(worker, n // inflight)
        if prof is not None:
            prof.disable()
        return time.process_time() - t0


def profile(n: int, inflight: int, top: int, runs: int) -> dict[str, Any]:
    n -= n % inflight
    cpu = min(trio.run(_calls, n, inflight) for _ in range(3)) / n  # least disturbed of three
    # cProfile times by the wall clock: a preemption charges its time to whatever function ran.
    # Each layer's and function's median over several profiled runs leaves such spikes out.
    per_layer: dict[str, list[float]] = defaultdict(list)
    per_func: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        prof = cProfile.Profile()
        trio.run(_calls, n, inflight, prof)
        layers, funcs = by_layer(pstats.Stats(prof))
        for name, seconds in layers.items():
            per_layer[name].append(seconds)
        for seconds, name in funcs:
            per_func[name].append(seconds)
    layers = {name: statistics.median(v + [0.0] * (runs - len(v))) for name, v in per_layer.items()}
    funcs = sorted(
        ((statistics.median(v + [0.0] * (runs - len(v))), name) for name, v in per_func.items()), reverse=True
    )
    total = sum(layers.values())
    scale = cpu / total * 1e6  # profiled seconds -> unprofiled µs per call
    return {
        "inflight": inflight,
        "calls": n,
        "runs": runs,
        "cpu_us_per_call": round(cpu * 1e6, 1),
        "layers_us": {k: round(v * scale, 2) for k, v in sorted(layers.items(), key=lambda kv: -kv[1])},
        "top": [[name, round(tt * scale, 2)] for tt, name in funcs[:top]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--inflight", default="1,16")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--runs", type=int, default=5, help="profiled runs (medians)")
    args = parser.parse_args()
    for k in (int(x) for x in args.inflight.split(",")):
        print(json.dumps(profile(args.calls, k, args.top, args.runs)), flush=True)


if __name__ == "__main__":
    main()
