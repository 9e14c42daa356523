"""``trimicro services``, ``describe`` and ``nodes``: what the registry and the membership say."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from trimicro.mailbox.errors import MicroError

from ..cluster import Cluster
from ..registry import Service
from .common import client_node, print_table
from .discovery import listen_seconds, wait_for, wait_seconds

__all__ = ["describe", "nodes", "services"]


def _service_json(svc: Service) -> dict[str, Any]:
    return {
        "name": svc.name,
        "version": svc.version,
        "metadata": svc.metadata,
        "endpoints": [
            {
                "name": e.name,
                "request": e.request,
                "response": e.response,
                "metadata": e.metadata,
                "stream": e.stream,
            }
            for e in svc.endpoints
        ],
        "nodes": [{"id": n.id, "address": n.address, "metadata": n.metadata} for n in svc.nodes],
    }


#: A listing of every service is final once it has not changed for SETTLE seconds and the
#: registry has had LISTEN seconds to answer: mDNS answers arrive a few services at a time (a


async def services(args: argparse.Namespace, out: TextIO) -> int:
    async with client_node(args) as cluster:
        found = await wait_for(cluster, None, wait_seconds(args), listen_seconds(args))
    found.sort(key=lambda s: (s.name, s.version))
    if args.json:
        json.dump([_service_json(s) for s in found], out, indent=2)
        print(file=out)
    else:
        print_table(
            [[s.name, s.version, str(len(s.nodes))] for s in found], ["service", "version", "nodes"], out
        )
    return 0


async def describe(args: argparse.Namespace, out: TextIO) -> int:
    async with client_node(args) as cluster:
        found = await wait_for(cluster, args.service, wait_seconds(args), listen_seconds(args), complete=True)
    if args.json:
        json.dump([_service_json(s) for s in found], out, indent=2)
        print(file=out)
        return 0
    for svc in found:
        print(f"service {svc.name} version {svc.version}", file=out)
        if svc.metadata:
            print(f"  metadata: {json.dumps(svc.metadata)}", file=out)
        print("  nodes:", file=out)
        print_table([[n.id, n.address] for n in svc.nodes], ["id", "address"], out, "    ")
        print("  endpoints:", file=out)
        rows = [
            [
                e.name + (" (stream)" if e.stream else ""),
                json.dumps(e.request),
                json.dumps(e.response),
                "yes" if e.metadata.get("idempotent") == "true" else "",
            ]
            for e in svc.endpoints
        ]
        print_table(rows, ["endpoint", "request", "response", "idempotent"], out, "    ")
    return 0


async def nodes(args: argparse.Namespace, out: TextIO) -> int:
    async with client_node(args) as cluster:
        members = await _wait_for_members(cluster, wait_seconds(args))
    if args.json:
        json.dump(members, out, indent=2)
        print(file=out)
    else:
        rows = [[m["id"], m["address"], m["state"], m.get("services", "")] for m in members]
        print_table(rows, ["node", "address", "state", "services"], out)
    return 0


async def _wait_for_members(cluster: Cluster, wait: float) -> list[dict[str, Any]]:
    """Ask any announced node for its membership view."""
    nodes = await wait_for(cluster, "trimicro.node", wait)
    last: MicroError | None = None
    for svc in nodes:
        for info in svc.nodes:
            try:
                result: list[dict[str, Any]] = await cluster.call_node(info, "Membership.members", None)
                return result
            except MicroError as exc:
                last = exc
    raise last or MicroError("no node answered", code=503)
