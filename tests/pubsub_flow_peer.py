"""A cluster node with one slow "block" subscriber beside a fast actor, in its own OS process:
the pub/sub flow-control test (tests/test_pubsub_flow_process.py).

Usage: ``python tests/pubsub_flow_peer.py HOME NAME SERVICE_TYPE TOPIC``. Subscribes the slow
actor to ``TOPIC`` (policy ``"block"``), prints ``ready`` and serves until it is killed. Actors:

- ``slow`` (mailbox of 16): takes 10 ms per message while the node is in slow mode and counts
  what it handled;
- ``echo`` and ``control``: as in tests/flow_peer.py (``Control.handled`` also answers the
  dead letters of this node and its resident memory).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from flow_peer import SLOW_SECONDS, Control, Echo, State

from trimicro.actors import Actor, bounded
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MdnsRegistry


class SlowSubscriber(Actor):
    mailbox = bounded(16)

    def __init__(self, state: State) -> None:
        self.state = state

    async def on_message(self, msg: Message) -> None:
        if self.state.slow:
            await trio.sleep(SLOW_SECONDS)
        self.state.handled += 1
        self.state.changed.set()
        self.state.changed = trio.Event()


async def main(home: str, name: str, service_type: str, topic: str) -> None:
    async with (
        MdnsRegistry(service_type=service_type) as registry,
        start_cluster(name, registry=registry, home=Path(home)) as cluster,
    ):
        node = cluster.node
        state = State()
        slow = await node.spawn(SlowSubscriber, state, name="slow")
        await node.spawn(Echo, name="echo")
        await node.spawn(Control, state, name="control")
        await cluster.subscribe(topic, slow, policy="block")
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:5])
