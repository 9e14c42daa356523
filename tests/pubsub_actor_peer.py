"""Plain (non-queue) subscribers in their own process, for the multi-process pub/sub tests.

Usage: ``python tests/pubsub_actor_peer.py HOME NAME SERVICE_TYPE LABEL=PATTERN...``. Spawns one
actor per ``LABEL=PATTERN`` and subscribes it to ``PATTERN``; prints ``ready`` once every
subscription is made, then ``got <label> <topic> <body>`` for every message an actor handles.
An actor that receives the body ``stop <label>`` stops itself after printing it, and prints
``stopped <label>`` as it stops. Runs until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from trimicro.actors import Actor
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MdnsRegistry


class Subscriber(Actor):
    def __init__(self, label: str) -> None:
        self.label = label

    async def on_message(self, msg: Message) -> None:
        print(f"got {self.label} {msg.topic} {msg.body}", flush=True)
        if msg.body == f"stop {self.label}":
            self.context.stop()

    async def stopping(self) -> None:
        print(f"stopped {self.label}", flush=True)


async def main(home: str, name: str, service_type: str, *specs: str) -> None:
    async with (
        MdnsRegistry(service_type=service_type) as registry,
        start_cluster(name, registry=registry, home=Path(home)) as cluster,
    ):
        for spec in specs:
            label, pattern = spec.split("=", 1)
            await cluster.subscribe(pattern, await cluster.node.spawn(Subscriber, label))
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
