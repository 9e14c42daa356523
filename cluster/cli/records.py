"""``trimicro store``: read, write, delete or list the keys of a store service."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from .common import UsageError, client_node
from .discovery import wait_for, wait_seconds

__all__ = ["store"]


async def store(args: argparse.Namespace, out: TextIO) -> int:
    from ..store import Record
    from ..store.service import RemoteStore

    async with client_node(args) as cluster:
        await wait_for(cluster, args.service, wait_seconds(args))
        store = RemoteStore(cluster, args.service)
        ns = {"database": args.database, "table": args.table}
        result: Any
        if args.action == "write":
            if args.value is None:
                raise UsageError("store write needs KEY and VALUE")
            await store.write(Record(args.key, args.value.encode()), ttl=args.ttl, **ns)
            result = {"written": args.key}
        elif args.action == "read":
            records = await store.read(args.key or "", prefix=args.prefix, **ns)
            result = [
                {
                    "key": r.key,
                    "value": r.value.decode(errors="replace"),
                    "metadata": dict(r.metadata),
                    "expiry": r.expiry,
                    "version": r.version,
                }
                for r in records
            ]
        elif args.action == "delete":
            await store.delete(args.key or "", **ns)
            result = {"deleted": args.key}
        else:
            result = await store.list(prefix=args.key or "", **ns)
    if args.json or not isinstance(result, list):
        json.dump(result, out)
        print(file=out)
    elif args.action == "list":
        for key in result:
            print(key, file=out)
    else:
        for item in result:
            print(f"{item['key']}\t{item['value']}", file=out)
    return 0
