"""Local (in-process) benchmark of trimicro actors, side by side with its ceiling and a peer.

One run measures, in interleaved rounds (``--rounds``, default 3):

* trimicro: ``tell`` throughput to one Counter actor (clock stops when an ``ask`` confirms the
  last one was processed), sequential ``ask`` round trips/s with p50/p99, spawn rate of
  ``--spawn-n`` (20000) trivial actors (node stopped outside timing), memory per idle actor
  for 10k and 100k actors (tracemalloc, each in a fresh subprocess);
* ceiling, bare trio memory channels: ``await send()`` to a consumer task (capacity 1000),
  ask with a fresh ``open_memory_channel(1)`` reply channel per request, start 20000 tasks each
  blocked on its own channel, memory per idle task + channel pair (10k and 100k);
* peer, Pykka ``ThreadingActor``: tell throughput (confirmed by an ask), ``ask().get()`` round
  trips with p50/p99, spawn rate (``ActorRef.start``) for 2000 actors, memory per idle actor
  (2000; each holds an OS thread, whose stack tracemalloc does not see).

Memory runs in round 1 only by default (``--mem-rounds``): the counts do not vary between runs.
Every message is the same small attrs class. Prints one JSON line per round, then one summary
line (medians over rounds, min-max, per-round ratios, target pass/fail).

``--middleware`` adds trimicro tell and ask with one no-op node middleware, measured beside
the same without in each round (ratios ``tell_mw_vs_tell``, ``ask_mw_vs_ask``; and
``ask_mw_await_vs_ask`` for a no-op middleware not declared ``passes_through``);
``--only-trimicro`` runs trimicro's phases only: tell, ask, spawn and idle memory (with
``--middleware``: tell and ask with and without it); an A/B of two checkouts runs this with
each checkout's interpreter in turn: see ``benchmarks/ab_checkouts.py``.

Run:  python benchmarks/bench_local.py [--rounds 3] [--seconds 1.0] [--middleware] [--only-trimicro]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc

import attrs
import trio
import trio.lowlevel

now_ns = time.perf_counter_ns

#: Hard caps so that every loop is bounded in count as well as in time.
MAX_MSGS = 20_000_000
MAX_CALLS = 5_000_000


@attrs.frozen
class Inc:
    k: int


@attrs.frozen
class Get:
    pass


MSG = Inc(1)


# ---------------------------------------------------------------------------------------------
# trimicro
# ---------------------------------------------------------------------------------------------


def _trimicro():
    from trimicro.actors import Actor, ask, start_node, tell

    class Counter(Actor):
        def __init__(self) -> None:
            self.n = 0

        async def inc(self, msg: Inc) -> int:
            self.n += msg.k
            return self.n

        async def get(self, msg: Get) -> int:
            return self.n

    class Idle(Actor):
        pass

    return Actor, ask, start_node, tell, Counter, Idle


async def noop(call, call_next):
    """A middleware that does nothing: what one layer of the onion costs."""
    return await call_next(call)


def _node_options(middleware):
    """``start_node`` options: none, or one no-op node middleware, declared as passing through
    (``"mw"``: inline handlers stay inline) or not (``"mw-await"``, a middleware as written
    without the mark). Imported here: an A/B run of a checkout without middleware never
    asks for it."""
    if not middleware:
        return {}
    if middleware == "mw-await":
        return {"middleware": [noop]}
    from trimicro.actors.middleware import passes_through

    async def marked(call, call_next):
        return await call_next(call)

    return {"middleware": [passes_through(marked)]}


async def tm_tell(seconds, middleware=False):
    _, ask, start_node, tell, Counter, _ = _trimicro()
    async with start_node("bench", **_node_options(middleware)) as node:
        ref = await node.spawn(Counter)
        out = []
        for dur in (min(0.2, seconds), seconds):  # warm-up, then measured
            base = await ask(ref, Get())
            sent = 0
            t0 = now_ns()
            deadline = t0 + int(dur * 1e9)
            while sent < MAX_MSGS and now_ns() < deadline:
                for _ in range(1000):
                    await tell(ref, MSG)
                sent += 1000
            got = await ask(ref, Get())
            elapsed = now_ns() - t0
            assert got - base == sent, (got, base, sent)
            out.append(sent / (elapsed / 1e9))
        return out[-1]


async def tm_ask(seconds, middleware=False):
    _, ask, start_node, _, Counter, _ = _trimicro()
    async with start_node("bench", **_node_options(middleware)) as node:
        ref = await node.spawn(Counter)
        for dur in (min(0.2, seconds), seconds):
            lat = []
            t0 = now_ns()
            deadline = t0 + int(dur * 1e9)
            n = 0
            while n < MAX_CALLS:
                t = now_ns()
                if t >= deadline:
                    break
                await ask(ref, MSG)
                lat.append(now_ns() - t)
                n += 1
            elapsed = now_ns() - t0
        return lat, elapsed


async def tm_spawn(n, max_seconds):
    _, _, start_node, _, _, Idle = _trimicro()
    async with start_node("bench", shutdown_timeout=60) as node:
        for _ in range(100):  # warm-up: handler table, allocator
            await node.spawn(Idle)
        t0 = now_ns()
        deadline = t0 + int(max_seconds * 1e9)
        done = 0
        while done < n and now_ns() < deadline:
            for _ in range(min(500, n - done)):
                await node.spawn(Idle)
            done += min(500, n - done)
        elapsed = now_ns() - t0
        t_stop = now_ns()
    stop_s = (now_ns() - t_stop) / 1e9  # node shutdown, outside the timing
    return done / (elapsed / 1e9), done, stop_s


# ---------------------------------------------------------------------------------------------
# trio memory channels (ceiling)
# ---------------------------------------------------------------------------------------------


async def ch_send(seconds):
    out = []
    for dur in (min(0.2, seconds), seconds):
        send, recv = trio.open_memory_channel(1000)
        received = 0

        async def consumer():
            nonlocal received
            async for msg in recv:
                received += msg.k

        sent = 0
        t0 = now_ns()
        deadline = t0 + int(dur * 1e9)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            async with send:
                while sent < MAX_MSGS and now_ns() < deadline:
                    for _ in range(1000):
                        await send.send(MSG)
                    sent += 1000
        elapsed = now_ns() - t0  # the consumer has drained everything
        assert received == sent
        out.append(sent / (elapsed / 1e9))
    return out[-1]


async def ch_ask(seconds):
    for dur in (min(0.2, seconds), seconds):
        mb_send, mb_recv = trio.open_memory_channel(1000)
        state = {"n": 0}

        async def server():
            async for msg, reply_to in mb_recv:
                state["n"] += msg.k
                reply_to.send_nowait(state["n"])

        lat = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            t0 = now_ns()
            deadline = t0 + int(dur * 1e9)
            n = 0
            while n < MAX_CALLS:
                t = now_ns()
                if t >= deadline:
                    break
                r_send, r_recv = trio.open_memory_channel(1)
                await mb_send.send((MSG, r_send))
                await r_recv.receive()
                lat.append(now_ns() - t)
                n += 1
            elapsed = now_ns() - t0
            await mb_send.aclose()
    return lat, elapsed


async def _blocked(recv, counter, all_up):
    counter[0] += 1
    if counter[0] == counter[1]:
        all_up.set()
    async for _ in recv:
        pass


async def ch_spawn(n, max_seconds):
    async def attempt(count):
        keep = []
        counter = [0, count]
        all_up = trio.Event()
        async with trio.open_nursery() as nursery:
            t0 = now_ns()
            for _ in range(count):
                s, r = trio.open_memory_channel(1)
                keep.append(s)
                nursery.start_soon(_blocked, r, counter, all_up)
            with trio.move_on_after(max_seconds):
                await all_up.wait()
            elapsed = now_ns() - t0
            nursery.cancel_scope.cancel()  # outside the timing
        return counter[0] / (elapsed / 1e9), counter[0]

    await attempt(100)
    return await attempt(n)


# ---------------------------------------------------------------------------------------------
# Pykka (peer)
# ---------------------------------------------------------------------------------------------


def _pykka_classes():
    import pykka

    class PCounter(pykka.ThreadingActor):
        def __init__(self):
            super().__init__()
            self.n = 0

        def on_receive(self, msg):
            if isinstance(msg, Inc):
                self.n += msg.k
                return self.n
            if isinstance(msg, Get):
                return self.n
            return None

    class PIdle(pykka.ThreadingActor):
        pass

    return pykka, PCounter, PIdle


def pk_tell(seconds):
    _pykka, PCounter, _ = _pykka_classes()
    ref = PCounter.start()
    try:
        out = []
        for dur in (min(0.2, seconds), seconds):
            base = ref.ask(Get(), block=False).get()
            sent = 0
            t0 = now_ns()
            deadline = t0 + int(dur * 1e9)
            while sent < MAX_MSGS and now_ns() < deadline:
                for _ in range(1000):
                    ref.tell(MSG)
                sent += 1000
            got = ref.ask(Get(), block=False).get(timeout=60)
            elapsed = now_ns() - t0
            assert got - base == sent
            out.append(sent / (elapsed / 1e9))
        return out[-1]
    finally:
        ref.stop()


def pk_ask(seconds):
    _pykka, PCounter, _ = _pykka_classes()
    ref = PCounter.start()
    try:
        for dur in (min(0.2, seconds), seconds):
            lat = []
            t0 = now_ns()
            deadline = t0 + int(dur * 1e9)
            n = 0
            while n < MAX_CALLS:
                t = now_ns()
                if t >= deadline:
                    break
                ref.ask(MSG, block=False).get(timeout=10)
                lat.append(now_ns() - t)
                n += 1
            elapsed = now_ns() - t0
        return lat, elapsed
    finally:
        ref.stop()


def pk_spawn(n, max_seconds):
    pykka, _, PIdle = _pykka_classes()
    refs = [PIdle.start() for _ in range(20)]  # warm-up
    for r in refs:
        r.stop()
    refs = []
    t0 = now_ns()
    deadline = t0 + int(max_seconds * 1e9)
    try:
        while len(refs) < n and now_ns() < deadline:
            for _ in range(min(100, n - len(refs))):
                refs.append(PIdle.start())
        elapsed = now_ns() - t0
        return len(refs) / (elapsed / 1e9), len(refs)
    finally:
        pykka.ActorRegistry.stop_all()  # outside the timing


# ---------------------------------------------------------------------------------------------
# memory per idle actor: each measurement in a fresh child process
# ---------------------------------------------------------------------------------------------


def _settle():
    gc.collect()
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _mem_trimicro(n):
    _, _, start_node, _, _, Idle = _trimicro()
    async with start_node("mem", shutdown_timeout=1) as node:
        for _ in range(10):
            await node.spawn(Idle)
        await trio.lowlevel.checkpoint()
        before = _settle()
        for _ in range(n):
            await node.spawn(Idle)
        await trio.sleep(0.01)
        after = _settle()
        result = {"n": len(node) - 10, "bytes": after - before}
        print(json.dumps(result), flush=True)
        os._exit(0)  # skip the orderly stop of n actors


async def _mem_channel(n):
    keep = []
    counter = [0, n + 10]
    all_up = trio.Event()
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            s, r = trio.open_memory_channel(1)
            keep.append(s)
            nursery.start_soon(_blocked, r, counter, all_up)
        await trio.sleep(0.01)
        before = _settle()
        for _ in range(n):
            s, r = trio.open_memory_channel(1)
            keep.append(s)
            nursery.start_soon(_blocked, r, counter, all_up)
        with trio.move_on_after(30):
            await all_up.wait()
        await trio.sleep(0.01)
        after = _settle()
        print(json.dumps({"n": counter[0] - 10, "bytes": after - before}), flush=True)
        os._exit(0)


def _mem_pykka(n):
    _pykka, _, PIdle = _pykka_classes()
    warm = [PIdle.start() for _ in range(10)]
    time.sleep(0.05)
    before = _settle()
    refs = [PIdle.start() for _ in range(n)]
    time.sleep(0.2)
    after = _settle()
    print(json.dumps({"n": len(refs), "bytes": after - before, "warm": len(warm)}), flush=True)
    os._exit(0)  # 2000 threads: do not wait for their orderly stop


def mem_child(kind, n):
    tracemalloc.start()
    if kind == "trimicro":
        trio.run(_mem_trimicro, n)
    elif kind == "channel":
        trio.run(_mem_channel, n)
    elif kind == "pykka":
        _mem_pykka(n)
    else:
        raise SystemExit(f"unknown kind {kind}")


def run_mem(jobs, timeout):
    """Run the memory children (2 at a time: memory is not timing-sensitive) -> bytes/actor."""
    out = {}
    pending = list(jobs)
    running = []
    t_end = time.monotonic() + timeout
    while pending or running:
        while pending and len(running) < 2:
            key, kind, n = pending.pop(0)
            p = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--mem-child", kind, str(n)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            running.append((key, p))
        key, p = running.pop(0)
        try:
            so, se = p.communicate(timeout=max(1.0, t_end - time.monotonic()))
            line = [ln for ln in so.splitlines() if ln.startswith("{")]
            if p.returncode == 0 and line:
                r = json.loads(line[-1])
                out[key] = round(r["bytes"] / max(1, r["n"]), 1)
            else:
                out[key] = None
                log(f"mem child {key} failed rc={p.returncode}: {se[-500:]}")
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            out[key] = None
            log(f"mem child {key} timed out")
    return out


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def pct_us(sorted_ns, q):
    if not sorted_ns:
        return None
    k = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return round(sorted_ns[k] / 1000.0, 1)


def lat_metrics(prefix, lat, elapsed):
    lat = sorted(lat)
    return {
        f"{prefix}.rtt_per_s": round(len(lat) / (elapsed / 1e9)),
        f"{prefix}.p50_us": pct_us(lat, 0.50),
        f"{prefix}.p99_us": pct_us(lat, 0.99),
    }


def calibrate(seconds=0.1):
    n = 0
    t_end = now_ns() + int(seconds * 1e9)
    while now_ns() < t_end:
        for _ in range(10_000):
            n += 1
    return round(n / seconds / 1e6, 1)


def middleware_round(m, s):
    """trimicro's tell and ask without and with one no-op node middleware (it runs around the
    call and around the handler), back to back; the ask also with the middleware not declared
    as passing through (the handler then loses its inline run)."""
    m["tell.trimicro.msgs_per_s"] = round(trio.run(tm_tell, s))
    m["tell.trimicro_mw.msgs_per_s"] = round(trio.run(tm_tell, s, "mw"))
    m.update(lat_metrics("ask.trimicro", *trio.run(tm_ask, s)))
    m.update(lat_metrics("ask.trimicro_mw", *trio.run(tm_ask, s, "mw")))
    m.update(lat_metrics("ask.trimicro_mw_await", *trio.run(tm_ask, s, "mw-await")))


def one_round(r, args):
    m = {}
    s = args.seconds
    if args.only_trimicro:
        if args.middleware:
            middleware_round(m, s)
        else:
            m["tell.trimicro.msgs_per_s"] = round(trio.run(tm_tell, s))
            m.update(lat_metrics("ask.trimicro", *trio.run(tm_ask, s)))
            m["spawn.trimicro.per_s"] = round(trio.run(tm_spawn, args.spawn_n, 10.0)[0])
            if r <= args.mem_rounds:
                jobs = [
                    ("mem.trimicro.100k.bytes", "trimicro", 100_000),
                    ("mem.trimicro.10k.bytes", "trimicro", 10_000),
                ]
                m.update(run_mem(jobs, timeout=60))
        log(f"round {r}: trimicro done")
        return m
    if args.middleware:
        middleware_round(m, s)
        log(f"round {r}: middleware done")
    # Interleave the three systems inside each kind of phase.
    if not args.middleware:  # else measured beside the middleware phases
        m["tell.trimicro.msgs_per_s"] = round(trio.run(tm_tell, s))
    m["tell.channel.msgs_per_s"] = round(trio.run(ch_send, s))
    m["tell.pykka.msgs_per_s"] = round(pk_tell(s))
    log(f"round {r}: tell done")
    if not args.middleware:
        m.update(lat_metrics("ask.trimicro", *trio.run(tm_ask, s)))
    m.update(lat_metrics("ask.channel", *trio.run(ch_ask, s)))
    m.update(lat_metrics("ask.pykka", *pk_ask(s)))
    log(f"round {r}: ask done")
    rate, done, stop_s = trio.run(tm_spawn, args.spawn_n, 10.0)
    m["spawn.trimicro.per_s"] = round(rate)
    m["spawn.trimicro.n"] = done
    m["spawn.trimicro.node_stop_s"] = round(stop_s, 3)
    rate, done = trio.run(ch_spawn, args.spawn_n, 8.0)
    m["spawn.channel.per_s"] = round(rate)
    m["spawn.channel.n"] = done
    rate, done = pk_spawn(args.pykka_n, 8.0)
    m["spawn.pykka.per_s"] = round(rate)
    m["spawn.pykka.n"] = done
    log(f"round {r}: spawn done")
    if r <= args.mem_rounds:
        mem = run_mem(
            [
                ("mem.trimicro.100k.bytes", "trimicro", 100_000),
                ("mem.channel.100k.bytes", "channel", 100_000),
                ("mem.trimicro.10k.bytes", "trimicro", 10_000),
                ("mem.channel.10k.bytes", "channel", 10_000),
                ("mem.pykka.2k.bytes", "pykka", args.pykka_n),
            ],
            timeout=60,
        )
        m.update(mem)
        log(f"round {r}: memory done")
    return m


RATIOS = {
    # name: (numerator, denominator, target, higher_is_better)
    "tell_vs_channel_send": ("tell.trimicro.msgs_per_s", "tell.channel.msgs_per_s", 2.0),
    "tell_vs_pykka_tell": ("tell.trimicro.msgs_per_s", "tell.pykka.msgs_per_s", 2.0),
    "ask_vs_channel_ask": ("ask.trimicro.rtt_per_s", "ask.channel.rtt_per_s", 0.8),
    "ask_vs_pykka_ask": ("ask.trimicro.rtt_per_s", "ask.pykka.rtt_per_s", 2.5),
    "tell_mw_vs_tell": ("tell.trimicro_mw.msgs_per_s", "tell.trimicro.msgs_per_s", None),
    "ask_mw_vs_ask": ("ask.trimicro_mw.rtt_per_s", "ask.trimicro.rtt_per_s", None),
    "ask_mw_await_vs_ask": ("ask.trimicro_mw_await.rtt_per_s", "ask.trimicro.rtt_per_s", None),
    "spawn_vs_channel_tasks": ("spawn.trimicro.per_s", "spawn.channel.per_s", None),
    "spawn_vs_pykka": ("spawn.trimicro.per_s", "spawn.pykka.per_s", None),
    "idle_bytes_10k_vs_channel_task": ("mem.trimicro.10k.bytes", "mem.channel.10k.bytes", None),
    "idle_bytes_100k_vs_channel_task": ("mem.trimicro.100k.bytes", "mem.channel.100k.bytes", None),
}


def summarise(rounds):
    keys = sorted({k for m in rounds for k in m})
    med, rng = {}, {}
    for k in keys:
        vals = [m[k] for m in rounds if m.get(k) is not None]
        if vals:
            med[k] = round(statistics.median(vals), 1)
            rng[k] = [min(vals), max(vals)]
    ratios = {}
    for name, (a, b, _target) in RATIOS.items():
        per_round = [m[a] / m[b] for m in rounds if m.get(a) and m.get(b)]
        if per_round:
            ratios[name] = {
                "median": round(statistics.median(per_round), 3),
                "min": round(min(per_round), 3),
                "max": round(max(per_round), 3),
            }
    targets = {}
    for name, (_, _, target) in RATIOS.items():
        if target is not None and name in ratios:
            targets[f"{name} >= {target}"] = ratios[name]["median"] >= target
    for size in ("10k", "100k"):
        k = f"mem.trimicro.{size}.bytes"
        if k in med:
            targets[f"idle_actor_bytes_{size} <= 2048"] = med[k] <= 2048
    if "spawn.trimicro.per_s" in med:
        targets["spawn_per_s >= 100000"] = med["spawn.trimicro.per_s"] >= 100_000
    return {"median": med, "min_max": rng, "ratios": ratios, "targets": targets}


def versions():
    from importlib import metadata

    out = {"python": platform.python_version()}
    for d in ("trio", "pykka", "attrs"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0, help="measured time per phase")
    p.add_argument("--spawn-n", type=int, default=20_000)
    p.add_argument("--pykka-n", type=int, default=2_000)
    p.add_argument(
        "--mem-rounds",
        type=int,
        default=1,
        help="rounds that also run the memory subprocesses (default 1: the byte counts "
        "are deterministic, identical run to run, and 100k tasks under tracemalloc are slow)",
    )
    p.add_argument(
        "--middleware",
        action="store_true",
        help="also measure trimicro's tell and ask with one no-op node middleware (client and "
        "server side), beside the same without, in each round",
    )
    p.add_argument(
        "--only-trimicro",
        action="store_true",
        help="only trimicro: tell, ask, spawn, idle memory (with --middleware: tell and ask with "
        "and without it); for A/B runs of two checkouts",
    )
    p.add_argument("--mem-child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mem_child:
        mem_child(args.mem_child[0], int(args.mem_child[1]))
        return
    t_start = time.monotonic()
    env = {**versions(), "cpus": os.cpu_count(), "seconds": args.seconds}
    rounds = []
    for r in range(1, max(1, min(args.rounds, 20)) + 1):
        calib = calibrate()
        load = os.getloadavg()[0]
        m = one_round(r, args)
        rounds.append(m)
        print(
            json.dumps(
                {"bench": "bench_local", "round": r, "calib_mops": calib, "loadavg_1m": load, "metrics": m}
            ),
            flush=True,
        )
    summary = summarise(rounds)
    print(
        json.dumps(
            {
                "bench": "bench_local",
                "summary": True,
                "rounds": len(rounds),
                "wall_s": round(time.monotonic() - t_start, 1),
                "env": env,
                **summary,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
