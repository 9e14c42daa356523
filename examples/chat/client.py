"""A user's side of the chat, from any node of the cluster: calls ``Chat`` by name, reads the feed.

:class:`ChatClient` is what an application (or the gateway, for browsers) does for one user;
:class:`Transcript` reads a feed into a list that a caller can wait on, with a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from trimicro.actors import ActorRef, Stream, open_stream
from trimicro.actors.streams import DEFAULT_WINDOW
from trimicro.cluster.client import Client

from .model import Join, Joined, Leave, Line, Presence, Say, Who


class ChatClient:
    def __init__(self, client: Client, user: str, *, timeout: float = 10.0) -> None:
        self.client = client
        self.user = user
        self.timeout = timeout

    async def join(self, room: str = "lobby") -> Joined:
        joined: Joined = await self.client.call(
            "chat", "Chat.join", Join(self.user, room), timeout=self.timeout
        )
        return joined

    async def say(self, text: str) -> int:
        count: int = await self.client.call("chat", "Chat.say", Say(self.user, text), timeout=self.timeout)
        return count

    async def who(self, room: str = "lobby") -> list[str]:
        presence: Presence = await self.client.call("chat", "Chat.who", Who(room), timeout=self.timeout)
        return presence.online

    async def leave(self) -> None:
        await self.client.call("chat", "Chat.leave", Leave(self.user), timeout=self.timeout)

    @asynccontextmanager
    async def feed(self, session: ActorRef, *, window: int = DEFAULT_WINDOW) -> AsyncIterator[Stream]:
        """The session's stream of lines; this side sends nothing (its direction ends at once).
        ``window`` is how many lines may be on their way to this client before it reads."""
        async with open_stream(session, "Session.feed", window=window, timeout=self.timeout) as stream:
            stream.close_send()
            yield stream


class Transcript:
    """The lines one user received, and a way to wait for one of them."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.lines: list[Line] = []
        #: Set when the feed ended normally (the user left).
        self.ended = trio.Event()
        self._changed = trio.Event()

    async def read(self, stream: Stream) -> None:
        """Append every line of ``stream`` until it ends."""
        async for line in stream:
            self.add(line)
        self.ended.set()
        self._changed.set()

    def add(self, line: Line) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, wanted: Callable[[Line], bool], *, timeout: float) -> Line:
        """The first line ``wanted`` accepts, waiting for it up to ``timeout`` seconds."""
        with trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if wanted(line):
                        return line
                if self.ended.is_set():
                    raise LookupError(f"{self.user}'s feed ended without the line wanted")
                await self._changed.wait()
