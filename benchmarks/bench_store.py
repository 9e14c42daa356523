"""Store benchmark: trimicro's LmdbStore beside raw py-lmdb (the ceiling) and sqlite3 (WAL).

Same operations, same process, same disk, interleaved rounds, everything durable (LMDB sync on,
sqlite ``synchronous=FULL``): point writes one at a time, 64 concurrent writers (trimicro's
group commit shares one fsync among them; raw LMDB and sqlite commit each write, as a
one-writer-at-a-time program would), point reads, and a prefix scan. Bounded in count. Point
reads run in a phase of their own where the three take turns in chunks of 1000 reads (the
read ratio is the median of the per-chunk ratios: a change of the shared machine's speed
between phases would otherwise decide it). The read phase runs twice: over the written keys
(they fit trimicro's cache of decoded records: the common hot-key case) and, as "read_cold",
over 2x CACHE_RECORDS keys read in turn, so that every trimicro read misses that cache and
fetches and decodes the record (the worst case).

    python benchmarks/bench_store.py [--rounds 3] [--writes 500] [--reads 20000]

Prints one JSON line per measurement and a summary with medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb  # type: ignore[import-untyped, unused-ignore]
import trio

from trimicro.cluster.store import LmdbStore, Record
from trimicro.cluster.store.lmdb import CACHE_RECORDS

VALUE = b"v" * 100


async def trimicro_round(path: Path, writes: int, reads: int) -> dict[str, float]:
    store = LmdbStore(path)
    out: dict[str, float] = {}
    try:
        t = time.perf_counter()
        for i in range(writes):
            await store.write(Record(f"k/{i:08d}", VALUE))
        out["write1"] = writes / (time.perf_counter() - t)

        async def writer(start: int) -> None:
            for i in range(start, start + writes, 64):
                await store.write(Record(f"c/{i:08d}", VALUE))

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for w in range(64):
                nursery.start_soon(writer, w)
        out["write64"] = writes / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(20):
            await store.read("k/", prefix=True)
        out["scan"] = 20 * writes / (time.perf_counter() - t)
    finally:
        await store.aclose()
    return out


def lmdb_round(path: Path, writes: int, reads: int) -> dict[str, float]:
    env = lmdb.open(str(path), map_size=1 << 30, sync=True)
    out: dict[str, float] = {}
    try:
        t = time.perf_counter()
        for i in range(writes):
            with env.begin(write=True) as txn:
                txn.put(f"k/{i:08d}".encode(), VALUE)
        out["write1"] = writes / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(writes):  # the "64 writers" one commit each: LMDB has one writer at a time
            with env.begin(write=True) as txn:
                txn.put(f"c/{i:08d}".encode(), VALUE)
        out["write64"] = writes / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(20):
            with env.begin() as txn:
                cursor = txn.cursor()
                cursor.set_range(b"k/")
                _ = [k for k, _ in cursor if k.startswith(b"k/")]
        out["scan"] = 20 * writes / (time.perf_counter() - t)
    finally:
        env.close()
    return out


def sqlite_round(path: Path, writes: int, reads: int) -> dict[str, float]:
    db = sqlite3.connect(str(path / "s.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)")
    out: dict[str, float] = {}
    try:
        t = time.perf_counter()
        for i in range(writes):
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"k/{i:08d}", VALUE))
        out["write1"] = writes / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(writes):
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (f"c/{i:08d}", VALUE))
        out["write64"] = writes / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(20):
            db.execute("SELECT k, v FROM kv WHERE k >= 'k/' AND k < 'k0'").fetchall()
        out["scan"] = 20 * writes / (time.perf_counter() - t)
    finally:
        db.close()
    return out


READ_CHUNK = 1000


async def read_interleaved(path: Path, writes: int, reads: int) -> dict[str, Any]:
    """Point reads of the three side by side: chunks of READ_CHUNK reads, taking turns, so a
    change of the shared machine's speed hits all three alike; ratios are per chunk."""
    store = LmdbStore(path / "t")
    env = lmdb.open(str(path / "l"), map_size=1 << 30, sync=True)
    db = sqlite3.connect(str(path / "s.db"), isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB)")
        for i in range(writes):
            await store.write(Record(f"k/{i:08d}", VALUE))
            with env.begin(write=True) as txn:
                txn.put(f"k/{i:08d}".encode(), VALUE)
            db.execute("INSERT INTO kv VALUES (?, ?)", (f"k/{i:08d}", VALUE))

        async def trimicro_reads(start: int) -> None:
            for i in range(start, start + READ_CHUNK):
                await store.read(f"k/{i % writes:08d}")

        def lmdb_reads(start: int) -> None:
            for i in range(start, start + READ_CHUNK):
                with env.begin() as txn:
                    txn.get(f"k/{i % writes:08d}".encode())

        def sqlite_reads(start: int) -> None:
            for i in range(start, start + READ_CHUNK):
                db.execute("SELECT v FROM kv WHERE k = ?", (f"k/{i % writes:08d}",)).fetchone()

        took: dict[str, list[float]] = {"trimicro": [], "lmdb": [], "sqlite": []}
        for start in range(0, max(reads, READ_CHUNK), READ_CHUNK):
            t = time.perf_counter()
            await trimicro_reads(start)
            took["trimicro"].append(time.perf_counter() - t)
            for who, fn in (("lmdb", lmdb_reads), ("sqlite", sqlite_reads)):
                t = time.perf_counter()
                fn(start)
                took[who].append(time.perf_counter() - t)
    finally:
        await store.aclose()
        env.close()
        db.close()
    rate = {who: READ_CHUNK * len(ts) / sum(ts) for who, ts in took.items()}
    chunk_ratio = {
        peer: statistics.median(p / t for t, p in zip(took["trimicro"], took[peer], strict=True))
        for peer in ("lmdb", "sqlite")
    }
    return {"rate": rate, "chunk_ratio": chunk_ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--reads", type=int, default=20000, help="point reads, cycling over the written keys")
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    chunk_ratios: dict[str, list[float]] = {}
    for rnd in range(1, args.rounds + 1):
        runs: dict[str, Any] = {
            "trimicro": lambda p: trio.run(trimicro_round, p, args.writes, args.reads),
            "lmdb": lambda p: lmdb_round(p, args.writes, args.reads),
            "sqlite": lambda p: sqlite_round(p, args.writes, args.reads),
        }
        for who, fn in runs.items():
            with tempfile.TemporaryDirectory(dir=".") as tmp:
                out = fn(Path(tmp))
            for op, rate in out.items():
                results.setdefault(who, {}).setdefault(op, []).append(rate)
            print(json.dumps({"round": rnd, "contestant": who, **{k: round(v) for k, v in out.items()}}))
        for phase, keys in (("read", args.writes), ("read_cold", 2 * CACHE_RECORDS)):
            with tempfile.TemporaryDirectory(dir=".") as tmp:
                mixed = trio.run(read_interleaved, Path(tmp), keys, args.reads)
            for who, rate in mixed["rate"].items():
                results.setdefault(who, {}).setdefault(phase, []).append(rate)
            for peer, ratio in mixed["chunk_ratio"].items():
                chunk_ratios.setdefault(f"{phase} trimicro/{peer}", []).append(ratio)
            print(
                json.dumps(
                    {
                        "round": rnd,
                        "phase": f"{phase} (interleaved chunks, {keys} keys)",
                        "rate": {k: round(v) for k, v in mixed["rate"].items()},
                        "per chunk": {f"trimicro/{k}": round(v, 3) for k, v in mixed["chunk_ratio"].items()},
                    }
                )
            )
    median = {who: {op: round(statistics.median(v)) for op, v in ops.items()} for who, ops in results.items()}
    ratios = {
        f"trimicro/{peer}": {op: round(median["trimicro"][op] / median[peer][op], 2) for op in median[peer]}
        for peer in ("lmdb", "sqlite")
    }
    read_chunks = {name: round(statistics.median(v), 3) for name, v in chunk_ratios.items()}
    summary = {"summary": True, "median": median, "ratios": ratios, "read ratio per chunk": read_chunks}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
