"""``trimicro api``: the HTTP gateway (docs/gateway.md) on a member node of the cluster.

The node is a member (not only a client) because pub/sub needs the interest members exchange
and the dashboard shows the membership view; it serves nothing itself. It follows the auth
service's rules like a serving node, so ``/api/subscribe`` judges each token by current rules.
It serves every service without their classes: its node decodes a typed value whose class it
has not registered as the map of its fields (``unknown_as_maps``), which the reply's JSON,
msgpack or CBOR carries as an object.
The HTTP side needs the ``gateway`` extra (``pip install 'trimicro[gateway]'``): it is imported
when the command runs, so the rest of the CLI works without it.
"""

from __future__ import annotations

import argparse
import signal
import uuid
from typing import Any, TextIO, get_args

import trio

from trimicro.mailbox.codec import default_registry

from ..broker import Policy
from ..cluster import start_cluster
from .common import UsageError, broker_url, home_dir, registry_url, token_audience

__all__ = ["add_api_parser", "api"]


def add_api_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", default="127.0.0.1:8080", help="host:port to serve HTTP on (default loopback)"
    )
    p.add_argument("--name", help="the gateway node's id (default: random)")
    p.add_argument("--max-body", type=int, default=1 << 20, help="largest request body in bytes (413 beyond)")
    p.add_argument("--timeout", type=float, default=10.0, help="a call's deadline without a Timeout header")
    p.add_argument(
        "--subscriber-policy",
        choices=get_args(Policy),
        help="what an SSE subscriber that reads too slowly costs unless it asks (?policy=): drop_oldest"
        " (the default: it misses the oldest messages, no publisher waits), block (publishers wait for"
        " it; only this default lets clients ask for it) or drop_subscriber (its subscription ends)",
    )


async def api(args: argparse.Namespace, out: TextIO) -> int:
    try:
        from ..gateway import GatewayOptions, run_gateway
    except ImportError as exc:
        raise UsageError(f"the gateway needs its extra: pip install 'trimicro[gateway]' ({exc})") from None
    chosen: dict[str, Any] = {"subscriber_policy": args.subscriber_policy} if args.subscriber_policy else {}
    options = GatewayOptions(
        address=args.address, max_body=args.max_body, default_timeout=args.timeout, **chosen
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            start_cluster(
                args.name or f"gateway-{uuid.uuid4().hex[:8]}",
                registry=registry_url(args),
                broker=broker_url(args),
                store="",
                home=home_dir(args),
                audience=token_audience(args),
                types=default_registry(unknown_as_maps=True),
            ) as cluster,
            trio.open_nursery() as nursery,
        ):
            url, _ = await nursery.start(run_gateway, cluster, options)
            print(
                f"gateway {cluster.id} at {url} (dashboard {url}/dashboard, docs {url}/docs)",
                file=out,
                flush=True,
            )
            async for sig in signals:
                print(f"{signal.Signals(sig).name}: stopping the gateway", file=out, flush=True)
                break
            nursery.cancel_scope.cancel()
    return 0
