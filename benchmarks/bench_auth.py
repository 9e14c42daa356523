"""The cost of auth on a remote ask: the same two-process ask with auth off and on, side by side.

Run: python benchmarks/bench_auth.py [--rounds 3] [--seconds 2]

Three server processes (127.0.0.1 only) run a node with one ``Bench`` actor, identical but for
the guard in front of it:

* ``off``:   no guard (``node.remote.guard = None``), requests carry no token;
* ``node``:  the cluster's ``AuthGuard`` with Go Micro's default rule plus 20 more rules;
  requests carry no token, so the caller is the client node's certificate account;
* ``token``: the same guard, and every request carries a user's bearer JWT (EdDSA) that the
  guard verifies (once, then from its cache: expiry and revocation are still checked on every
  request) and judges against the rules; the handler sees ``context.account``.

The client process calls each server in turn: ``ask1`` (one caller) and ``ask16`` (16
concurrent callers on one link), for ``--seconds`` per mode, phase and round, after a short
warm-up. The time is cut into ``--chunks`` slices and the modes take turns slice by slice (the
order rotating), so that a change of the shared machine's speed hits the three alike; the
ratios ``node/off`` and ``token/off`` are computed per slice, then the median over all slices
of all rounds. Encryption is on in every case (it is not optional between nodes). Output: one
JSON line per (round, mode, phase), then a summary with medians. The target is at most 15%
fewer round trips with auth on (ratio >= 0.85).
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
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _remote_trimicro import HOME, Bench, _asks

from trimicro.actors import start_node
from trimicro.cluster.auth import DEFAULT_RULES, Access, Account, AuthGuard, Resource, Rule, issue_token
from trimicro.mailbox.secure.identity import dev_authority

MODES = ("off", "node", "token")
PHASES = {"ask1": 1, "ask16": 16}


def rules() -> list[Rule]:
    """Twenty rules for other services and topics in front of the one that grants the bench."""
    out = list(DEFAULT_RULES)
    for i in range(20):
        out.append(Rule(f"r{i}", "ops", Resource("service", f"svc{i}", f"Svc{i}.*"), Access.GRANTED, i))
    out.append(Rule("bench", "bench", Resource("service", "bench", "Bench.*"), Access.GRANTED, 50))
    return out


async def serve(mode: str, port_file: str) -> None:
    async with start_node(f"auth-bench-{mode}", listen="127.0.0.1:0", home=HOME) as node:
        ref = await node.spawn(Bench, name="bench")
        if mode != "off":
            trusted = [dev_authority(HOME).public_key]
            guard = AuthGuard(
                trusted, rules=rules(), service_of=lambda path: "bench" if path == ref.path else None
            )
            node.remote.guard = guard
        tmp = f"{port_file}.tmp"
        await trio.Path(tmp).write_text(node.address or "")
        os.replace(tmp, port_file)
        await trio.sleep_forever()


def token() -> str:
    authority = dev_authority(HOME)
    account = Account("bench-user", "user", authority.public_key.hex(), ("bench", "ops"))
    return issue_token(authority.signing_key, account, ttl=3600)


async def client(
    addresses: dict[str, str], order: list[str], seconds: float, warmup: float, chunks: int
) -> tuple[list[dict[str, Any]], list[dict[str, float]]]:
    """Per (mode, phase) totals, and per slice each mode's rate (the modes taking turns)."""
    results = []
    slices: list[dict[str, float]] = []
    bearer = {"authorization": f"Bearer {token()}"}
    async with start_node("auth-bench-client", home=HOME) as node:
        refs = {}
        for mode in order:
            refs[mode] = node.remote_ref(await node.remote.connect(addresses[mode]), "bench")
        for phase, concurrency in PHASES.items():
            ops = dict.fromkeys(order, 0)
            took = dict.fromkeys(order, 0.0)
            for mode in order:
                await _asks(refs[mode], warmup, concurrency, bearer if mode == "token" else None)
            for n in range(chunks):
                rates: dict[str, float] = {"phase": float(concurrency)}
                for mode in order[n % 3 :] + order[: n % 3]:
                    out = await _asks(
                        refs[mode], seconds / chunks, concurrency, bearer if mode == "token" else None
                    )
                    ops[mode] += out["ops"]
                    took[mode] += out["seconds"]
                    rates[mode] = out["ops"] / out["seconds"]
                slices.append(rates)
            for mode in order:
                results.append({"mode": mode, "phase": phase, "ops_per_s": ops[mode] / took[mode]})
    return results, slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--chunks", type=int, default=8, help="slices the modes take turns in")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.serve, args.port_file)
        return
    tmp = Path(tempfile.mkdtemp(prefix="trimicro-auth-bench-"))
    servers, addresses = [], {}
    try:
        for mode in MODES:
            port_file = tmp / f"{mode}.port"
            cmd = [sys.executable, __file__, "--serve", mode, "--port-file", str(port_file)]
            servers.append(subprocess.Popen(cmd))
            deadline = time.monotonic() + 30
            while not port_file.exists():  # the server writes it atomically once it listens
                if time.monotonic() > deadline:
                    raise SystemExit(f"server {mode} did not start")
                time.sleep(0.05)
            addresses[mode] = port_file.read_text()
        rows: list[dict[str, Any]] = []
        slices: list[dict[str, float]] = []
        for rnd in range(args.rounds):
            order = list(MODES[rnd % 3 :] + MODES[: rnd % 3])
            got, cut = trio.run(client, addresses, order, args.seconds, args.warmup, args.chunks)
            slices += cut
            for row in got:
                row["round"] = rnd
                print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in row.items()}))
                rows.append(row)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)
    summary: dict[str, Any] = {"summary": True, "median_ops_per_s": {}, "ratios": {}}
    for phase in PHASES:
        for mode in MODES:
            values = [r["ops_per_s"] for r in rows if r["mode"] == mode and r["phase"] == phase]
            summary["median_ops_per_s"][f"{mode}/{phase}"] = round(statistics.median(values))
        for mode in ("node", "token"):
            per_slice = [c[mode] / c["off"] for c in slices if c["phase"] == PHASES[phase]]
            summary["ratios"][f"{mode}/off {phase}"] = round(statistics.median(per_slice), 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
