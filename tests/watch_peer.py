"""A node in its own OS process at which the tests aim hostile peers, reporting what they cost it.

Usage: ``python tests/watch_peer.py HOME NAME``. Listens on 127.0.0.1 (a free port), spawns
``target`` and ``target1``..``target4`` (actors to watch) and ``probe`` (which reports the
node's resident memory and the objects that watches from other nodes leave behind), prints
``address <host:port>`` and serves until it is killed. A handshake may take 60 s here (5 s by
default), so that a test tells a connection the node refused at once from one whose handshake
merely timed out.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor, Node, start_node
from trimicro.actors.remote import RemoteActor
from trimicro.mailbox.errors import MicroError

#: Actors to watch: ``target`` and four more, so a flood can spread over several.
TARGETS = ("target", "target1", "target2", "target3", "target4")


def resident_bytes() -> int:
    """This process's resident set size (Linux: ``/proc/self/statm``, in pages), once the C
    allocator has given its free pages back: what is left is what live objects (and Python's
    own allocator) hold, not what glibc keeps for reuse after a burst (up to 30 MiB here)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc; elsewhere the figure is merely higher
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Target(Actor):
    service_name = "Target"

    async def ping(self, body: Any) -> str:
        return "pong"


class Probe(Actor):
    service_name = "Probe"

    def __init__(self, node: Node) -> None:
        self.node = node

    async def stats(self, body: Any) -> dict[str, Any]:
        """Resident memory after a full collection, the target's watchers, and how many
        bindings of refs to actors on other nodes are alive (one per watcher from elsewhere)."""
        gc.collect()
        each = [len(getattr(self.node.cells[f"/user/{t}"], "_watchers", None) or ()) for t in TARGETS]
        return {
            "rss": resident_bytes(),
            "watchers": sum(each),
            "each": each,
            "remote_actors": sum(1 for o in gc.get_objects() if type(o) is RemoteActor),
        }

    async def watch(self, body: Any) -> str:
        """A watch of ``target`` by an actor of this node: ``"ok"``, or the refusal's words."""
        try:
            self.context.watch(self.node.ref("target"))
        except MicroError as exc:
            return f"{exc.code} {exc.detail}"
        self.context.unwatch(self.node.ref("target"))
        return "ok"

    async def handshakes(self, body: Any) -> int | None:
        """Inbound connections whose handshake is running (``None`` if the node does not count)."""
        count: int | None = getattr(self.node.remote, "handshaking", None)
        return count

    async def gone(self, body: Any) -> dict[str, Any]:
        """Wait until node ``body["node"]`` has no link here any more, then report :meth:`stats`."""
        peer = self.node.remote.peers.get(body["node"])
        while peer is not None and peer.links:
            await peer.wait_changed()
        return await self.stats(body)


async def main(home: str, name: str) -> None:
    async with start_node(name, home=Path(home)) as node:
        node.remote.handshake_timeout = 60.0
        await node.listen("127.0.0.1:0")
        for target in TARGETS:
            await node.spawn(Target, name=target)
        await node.spawn(Probe, node, name="probe")
        print(f"address {node.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
