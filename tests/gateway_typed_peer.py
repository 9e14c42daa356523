"""A service whose reply class exists only in this process, for the gateway's process test.

Usage: ``python tests/gateway_typed_peer.py HOME SERVICE_TYPE SERVICE``. Joins the cluster
announced under the mDNS ``SERVICE_TYPE`` (127.0.0.1), serves ``SERVICE`` (a ``Ledger`` whose
``balance`` answers an attrs ``Balance`` registered only here), prints ``ready NAME ADDRESS``
and serves until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import trio

from trimicro.actors import Actor
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MdnsRegistry
from trimicro.mailbox.codec import TypeRegistry


@attrs.frozen
class Entry:
    memo: str
    cents: int


@attrs.frozen
class Balance:
    account: str
    cents: int
    entries: list[Entry]


@attrs.frozen
class Query:
    account: str


class Ledger(Actor):
    async def balance(self, query: Query) -> Balance:
        entries = [Entry("opening", 1000), Entry("coffee", -250)]
        return Balance(query.account, sum(e.cents for e in entries), entries)


async def main(home: str, service_type: str, service: str) -> None:
    types = TypeRegistry()
    types.register(Balance, "ledger.Balance")
    types.register(Entry, "ledger.Entry")
    async with (
        MdnsRegistry(service_type=service_type) as registry,
        start_cluster("ledger", registry=registry, home=Path(home), types=types) as cluster,
    ):
        await cluster.serve(Ledger, name=service)
        print(f"ready {cluster.id} {cluster.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
