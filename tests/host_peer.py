"""A cluster node on one simulated host (a network namespace), for the multi-host tests.

Usage: ``python tests/host_peer.py --home H --name N --listen ADDR:PORT [--interface ADDR]...
[--seed HOST:PORT]... [--registry URL] [--serve SERVICE] [--call SERVICE --period S]``.

Prints JSON lines: ``{"ready": N, "address": A}`` once up, ``{"member": M, "event": K, "t": T}``
for every membership event (``joined``, ``suspect``, ``alive``, ``dead``, ...), and with
``--call``, ``{"calls": C, "failed": F, "t": T}`` after each call of ``SERVICE`` (through the
selector, with its retries) that it makes every ``--period`` seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import trio
from cluster_peer import Echo

from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.membership import MemberEvent
from trimicro.mailbox.errors import MicroError


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


async def main(args: argparse.Namespace) -> None:
    async with start_cluster(
        args.name,
        registry=args.registry,
        interfaces=args.interface or None,
        seeds=args.seed or (),
        listen=args.listen,
        home=Path(args.home),
    ) as cluster:

        def on_event(event: MemberEvent) -> None:
            emit(member=event.member.id, event=event.kind, t=time.time())

        cluster.membership.listeners.append(on_event)
        for member in cluster.membership.view():  # what happened before the listener was added
            if member["id"] != cluster.id:
                emit(member=member["id"], event=member["state"], t=time.time())
        if args.serve:
            await cluster.serve(Echo, name=args.serve)
        emit(ready=cluster.id, address=cluster.address)
        if not args.call:
            await trio.sleep_forever()
        calls = failed = 0
        while True:
            started = trio.current_time()
            try:
                await cluster.call(args.call, "Echo.who", None, timeout=args.timeout)
            except MicroError:
                failed += 1
            calls += 1
            emit(calls=calls, failed=failed, t=time.time())
            await trio.sleep_until(started + args.period)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--home", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--interface", action="append")
    p.add_argument("--seed", action="append")
    p.add_argument("--registry")
    p.add_argument("--serve")
    p.add_argument("--call")
    p.add_argument("--period", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=3.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse())
