"""The chat wired together: a server node serving ``Chat`` and a client node, in one process.

The nodes talk over real TCP on 127.0.0.1 through encrypted, authenticated links (one
development authority in ``workdir``) and find each other in one in-process registry. Every
client call and every feed crosses the link, as it would from another host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs

from trimicro.cluster import Cluster, MemoryRegistry, start_cluster

from .model import types
from .rooms import Chat


@attrs.frozen
class ChatApp:
    server: Cluster
    #: Where the users' clients run (another node: their calls and feeds cross the link).
    client: Cluster


@asynccontextmanager
async def open_chat(workdir: Path, **chat_options: Any) -> AsyncIterator[ChatApp]:
    """Run the chat for the duration of the block (``chat_options`` go to :class:`~.rooms.Chat`:
    ``max_users``, and the sessions' ``idle_after``, ``backlog``, ``drain_timeout``)."""
    common: dict[str, Any] = {
        "registry": MemoryRegistry(),
        "home": workdir / "home",
        "store": "",
        "types": types(),
    }
    async with (
        start_cluster("chat-server", **common) as server,
        start_cluster("chat-client", **common) as client,
    ):
        await server.serve(Chat, **chat_options)
        yield ChatApp(server, client)
