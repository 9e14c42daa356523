"""Two nodes, one encrypted link: remote ask, a typed error, a stream, and death watch.

Run: python examples/two_nodes.py

Both nodes run in this process but talk over real TCP on 127.0.0.1 through the Noise channel.
They trust each other because both use the development identity in one home folder (a
temporary one here; by default ``~/.trimicro``), which holds a local authority created on first
use. In production each node gets a certificate from your cluster authority instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor, ActorRef, NotFound, Stream, Terminated, ask, open_stream, start_node


class Greeter(Actor):
    service_name = "Greeter"

    async def hello(self, body: Any) -> str:
        if not body.get("name"):
            raise NotFound("whom should I greet?")
        return f"Hello, {body['name']}!"

    async def chat(self, stream: Stream) -> None:
        """Answers every line it receives until the caller closes its side."""
        async for line in stream:
            await stream.send(line.upper())


class Watcher(Actor):
    def __init__(self, done: trio.Event) -> None:
        self.done = done

    async def watch(self, ref: ActorRef) -> None:
        self.context.watch(ref)

    async def on_terminated(self, msg: Terminated) -> None:
        print(f"watcher: {msg.ref.path} on node {msg.ref.node} stopped")
        self.done.set()


async def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="trimicro-example-"))
    async with (
        start_node("server", listen="127.0.0.1:0", home=home) as server,
        start_node("client", home=home) as client,
    ):
        greeter = await server.spawn(Greeter, name="greeter")
        peer = await client.connect(server.address or "")
        print(f"client connected to node {peer!r} at {server.address} (encrypted, authenticated)")

        ref = client.remote_ref(peer, "greeter")
        print("remote ask:", await ask(ref, {"name": "Ada"}, endpoint="Greeter.hello"))
        try:
            await ask(ref, {}, endpoint="Greeter.hello")
        except NotFound as err:
            print("remote error:", err.to_fields())

        async with open_stream(ref, "Greeter.chat") as stream:
            for line in ["one", "two", "three"]:
                await stream.send(line)
            stream.close_send()
            print("stream replies:", [item async for item in stream])

        done = trio.Event()
        watcher = await client.spawn(Watcher, done)
        await ask(watcher, ref)
        await ask(ref, {"name": "again"}, endpoint="Greeter.hello")  # the watch has arrived
        await server.stop(greeter)
        await done.wait()


if __name__ == "__main__":
    trio.run(main)
