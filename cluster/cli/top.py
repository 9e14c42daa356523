"""``trimicro top``: a live view of the cluster's nodes (or one), refreshed in place.

The view is :mod:`trimicro.cluster.metrics.top` (rich, the ``metrics`` extra); this finds the
nodes through the registry and hands them over. Each node is read with a request to its
metrics actor over the cluster's links, so every node can be watched, whether or not it serves
``/metrics`` (endpoint rates need the node to run with ``--metrics``). A snapshot is admin data
(scope ``admin``): the calls carry ``--token``, else an admin token signed with the home's
authority key, as ``trimicro auth`` does, signed again while top runs (it outlives a token).
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

import trio

from trimicro.mailbox.errors import NotFound
from trimicro.mailbox.secure.identity import IdentityError

from ..cluster import Cluster
from ..registry import NODE_SERVICE, NodeInfo
from .common import UsageError, admin_header_source, client_node
from .discovery import wait_for, wait_seconds

__all__ = ["add_top_parser", "top"]


def add_top_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", nargs="?", help="the node id to watch (default: every node of the cluster)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true", help="print one screen (after two rounds) and exit")


async def _nodes(cluster: Cluster, node: str | None, wait: float) -> list[NodeInfo]:
    """The announced nodes (``node`` only, if given), waiting up to ``wait`` s for discovery."""
    with trio.move_on_after(wait):
        while True:
            found = await wait_for(cluster, NODE_SERVICE, wait, complete=node is None)
            infos = {n.id: n for s in found for n in s.nodes if node is None or n.id == node}
            if infos:
                return sorted(infos.values(), key=lambda n: n.id)
            await trio.sleep(0.2)
    raise NotFound(f"no node {node} found" if node else "no node found", id="top")


async def top(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from ..metrics.top import poll, run_top
    except ImportError:
        raise UsageError("trimicro top needs the metrics extra: pip install 'trimicro[metrics]'") from None
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    wait = wait_seconds(args)
    try:
        headers = admin_header_source(args)  # a snapshot names paths and peers: scope admin reads it
    except IdentityError:  # a joined home: the authority key that signs admin tokens is elsewhere
        raise UsageError(
            "trimicro top reads the nodes' metrics, which only scope admin may: this home joined a "
            "cluster whose authority key is on another host, so give an admin's token "
            "(--token or $TRIMICRO_TOKEN)"
        ) from None
    async with client_node(args) as cluster:

        async def find() -> list[NodeInfo]:
            return await _nodes(cluster, args.node, wait)

        if args.json:  # one snapshot per node, for scripts
            snapshots = await poll(cluster.node, await find(), max(1.0, args.interval), headers())
            json.dump(snapshots, out, indent=2, sort_keys=True)
            print(file=out)
            return 0
        return await run_top(
            cluster.node, find, interval=args.interval, once=args.once, out=out, headers=headers
        )
