"""A queue-group subscriber in its own process, for the multi-process pub/sub test.

Usage: ``python tests/pubsub_peer.py HOME NAME SERVICE_TYPE TOPIC QUEUE``. Prints ``ready`` once
subscribed, then ``got <body>`` for every message it handles, until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from trimicro.actors import Actor
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MdnsRegistry


class Worker(Actor):
    async def on_message(self, msg: Message) -> None:
        print(f"got {msg.body}", flush=True)


async def main(home: str, name: str, service_type: str, topic: str, queue: str) -> None:
    async with (
        MdnsRegistry(service_type=service_type) as registry,
        start_cluster(name, registry=registry, home=Path(home)) as cluster,
    ):
        await cluster.subscribe(topic, await cluster.node.spawn(Worker), queue=queue)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:6])
