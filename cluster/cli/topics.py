"""``trimicro publish`` and ``subscribe``: pub/sub from a short-lived member node."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

import trio

from ..cluster import Cluster
from .common import auth_headers, member_node, parse_json
from .discovery import PUBLISH_WAIT, wait_seconds

__all__ = ["publish", "subscribe"]


async def _settle_interest(cluster: Cluster, wait: float) -> None:
    """Give members ``wait`` seconds to find us and send their interest (ends early when every
    known member has)."""
    with trio.move_on_after(wait):
        while True:
            members = {m.id for m in cluster.membership.swim.alive_members()} - {cluster.id}
            if members and members <= set(cluster.pubsub.remote_interest):
                return
            await cluster.pubsub.wait_interest()


async def publish(args: argparse.Namespace, out: TextIO) -> int:
    body = parse_json(args.body, "the message")
    async with member_node(args) as cluster:
        await _settle_interest(cluster, wait_seconds(args, PUBLISH_WAIT))
        n = await cluster.publish(args.topic, body, ack=args.ack, headers=auth_headers(args))
    if args.json:
        json.dump({"topic": args.topic, "deliveries": n}, out)
        print(file=out)
    else:
        print(f"published on {args.topic}: {n} deliveries", file=out)
    return 0


async def subscribe(args: argparse.Namespace, out: TextIO) -> int:
    async with (
        member_node(args) as cluster,
        cluster.pubsub.messages(args.topic, queue=args.queue) as messages,
    ):
        print(f"# subscribed to {args.topic}", file=sys.stderr, flush=True)
        seen = 0
        async for msg in messages:
            line = {"topic": msg.topic, "body": msg.body, "headers": msg.headers, "publisher": msg.publisher}
            print(json.dumps(line, default=str), file=out, flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0
