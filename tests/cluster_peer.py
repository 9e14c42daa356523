"""A cluster node in its own process, for the multi-process cluster tests.

Usage: ``python tests/cluster_peer.py HOME NAME SERVICE_TYPE [SERVICE]``. Joins the cluster
announced under the mDNS ``SERVICE_TYPE`` (unique per test, on 127.0.0.1), serves ``SERVICE``
(an ``Echo`` actor) if given, prints ``ready NAME ADDRESS`` and serves until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MdnsRegistry
from trimicro.cluster.service import idempotent


class Echo(Actor):
    service_name = "Echo"

    @idempotent
    async def who(self, body: Any) -> str:
        return self.context.node.id


async def main(home: str, name: str, service_type: str, service: str | None) -> None:
    async with (
        MdnsRegistry(service_type=service_type) as registry,
        start_cluster(name, registry=registry, home=Path(home)) as cluster,
    ):
        if service:
            await cluster.serve(Echo, name=service)
        print(f"ready {cluster.id} {cluster.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
