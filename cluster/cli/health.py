"""``trimicro health [NODE]``: is a node live, is it ready, and if not, which check fails.

``NODE`` is a node id (found through the registry's ``trimicro.node`` records) or ``HOST:PORT``
(dialed directly: no registry needed, so it also reaches a node whose registry is down); without
it, every node the registry announces. Each is asked with ``SYSTEM health`` (docs/protocol.md
§4.4). Exit 0 when every node asked is ready (``--live``: answered at all), 1 otherwise (a node
that does not answer is neither). ``--json`` prints the report (a list of them without ``NODE``).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import TextIO

import trio

from trimicro.actors.lowlevel import Check, Report, ask_health, printable
from trimicro.mailbox.errors import MicroError

from ..cluster import Cluster
from ..registry import NODE_SERVICE
from .common import client_node, print_table
from .discovery import wait_for, wait_seconds

__all__ = ["add_health_parser", "health"]

EXIT_READY = 0
EXIT_NOT_READY = 1
#: ``host:port`` or ``[v6]:port``: dialed directly instead of looked up.
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\s]+):\d{1,5}$")


def add_health_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", nargs="?", help="node id or HOST:PORT (default: every announced node)")
    p.add_argument("--live", action="store_true", help="only ask whether it answers (no readiness checks)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each node's answer")


async def health(args: argparse.Namespace, out: TextIO) -> int:
    target: str | None = args.node
    if target is not None and _ADDRESS.match(target):
        # An address needs no discovery: the client node gets a registry that asks nobody.
        args = argparse.Namespace(**{**vars(args), "registry": "memory://"})
    async with client_node(args) as cluster:
        if target is not None and _ADDRESS.match(target):
            reports = [await _by_address(cluster, target, args)]
        else:
            reports = await _by_registry(cluster, target, args)
    if args.json:
        docs = [r.to_dict() for r in reports]
        json.dump(docs[0] if target is not None else docs, out, indent=2)
        print(file=out)
    else:
        for report in reports:
            _print(report, out, live_only=args.live)
    good = all(r.live if args.live else r.ready for r in reports)
    return EXIT_READY if good and reports else EXIT_NOT_READY


async def _by_address(cluster: Cluster, address: str, args: argparse.Namespace) -> Report:
    remote = cluster.node.remote
    try:
        with trio.fail_after(args.timeout):
            node_id = await remote.connect(address, args.timeout)
    except (MicroError, trio.TooSlowError) as exc:
        return _silent(address, exc)
    return await _ask(cluster, node_id, args)


async def _by_registry(cluster: Cluster, target: str | None, args: argparse.Namespace) -> list[Report]:
    records = await wait_for(cluster, NODE_SERVICE, wait_seconds(args))
    nodes = {n.id: n for svc in records for n in svc.nodes if cluster.accepts(n)}
    if target is not None:
        if target not in nodes:
            raise MicroError(f"no node {target} is announced in the registry", id="health", code=404)
        nodes = {target: nodes[target]}
    for info in nodes.values():
        peer = cluster.node.remote.peer(info.id)
        if peer.address is None and info.address:
            peer.address = info.address  # a hint: the handshake checks the node id
    reports: dict[str, Report] = {}
    async with trio.open_nursery() as nursery:

        async def one(node_id: str) -> None:
            reports[node_id] = await _ask(cluster, node_id, args)

        for node_id in nodes:
            nursery.start_soon(one, node_id)
    return [reports[k] for k in sorted(reports)]


async def _ask(cluster: Cluster, node_id: str, args: argparse.Namespace) -> Report:
    try:
        return await ask_health(cluster.node.remote.peer(node_id), args.timeout, checks=not args.live)
    except MicroError as exc:
        return _silent(node_id, exc)


def _silent(node: str, exc: BaseException) -> Report:
    """A node that did not answer: not live, so not ready."""
    detail = exc.detail if isinstance(exc, MicroError) else f"no answer in time ({type(exc).__name__})"
    return Report(node, False, False, (Check("live", False, detail),))


def _print(report: Report, out: TextIO, *, live_only: bool) -> None:
    if not report.live:
        state = "NOT LIVE"
    elif live_only:
        state = "live"
    elif report.ready:
        state = "live, ready"
    else:
        state = "live, NOT READY (" + ", ".join(printable(c.name) for c in report.failing()) + ")"
    # What a node reports is its own to choose: escaped, so it cannot drive the terminal.
    print(f"node {printable(report.node)}: {state}", file=out)
    if report.checks:
        rows = [[printable(c.name), "ok" if c.ok else "FAIL", printable(c.detail)] for c in report.checks]
        print_table(rows, ["check", "status", "detail"], out, "  ")
