"""One actor per online user: what the room says to them, held until their client reads it.

The room (:class:`~.rooms.Chat`) spawns a :class:`Session` when a user joins and tells it every
line of the room (``deliver``, which never waits, so one slow user never slows the room). The
user's client opens the session's ``Session.feed`` stream and reads the lines from it.

**Flow control.** The stream is credit-based: the client grants ``window`` lines and more as
it reads, and ``stream.send`` waits while no credit is left. So a client that reads slowly is
not flooded: its lines wait here, in ``pending``, which is bounded (``backlog``; past it the
oldest line is dropped and counted in ``dropped``, as IRC servers drop a slow client's
backlog). A fast client keeps ``pending`` near empty.

**Lifetime.** A session stops itself after ``idle_after`` seconds without a connected feed (a
client that went away and did not come back), and on :class:`Close` (the user left), after
handing its client what was still pending (within ``drain_timeout``) and ending the stream
normally. The room watches its sessions, so either way the user goes offline.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio

from trimicro.actors import Actor, Conflict, MicroError, Stream

from .model import Line, SessionStats


@attrs.frozen
class Idle:
    """The session's own timer: no client has been connected for ``idle_after`` seconds."""


@attrs.frozen
class Close:
    """From the room: the user left."""


class Session(Actor):
    service_name = "Session"

    def __init__(
        self, user: str, *, idle_after: float = 60.0, backlog: int = 256, drain_timeout: float = 5.0
    ) -> None:
        self.user = user
        self.idle_after = idle_after
        self.backlog = backlog
        self.drain_timeout = drain_timeout
        self.pending: deque[Line] = deque()
        #: The line the feed is sending (waiting for the client's credit); still pending.
        self.sending: Line | None = None
        self.delivered = 0
        self.dropped = 0
        self.connected = False
        self.closing = False
        self._wakeup = trio.Event()
        self._fed = trio.Event()  # set when a feed ends

    async def started(self) -> None:
        self._idle_timer()

    async def deliver(self, line: Line) -> None:
        if len(self.pending) >= self.backlog:
            self.pending.popleft()
            self.dropped += 1
        self.pending.append(line)
        self._wakeup.set()

    async def feed(self, stream: Stream) -> None:
        """The user's lines, as they come, until the user leaves (then the stream ends)."""
        if self.connected:
            raise Conflict(f"{self.user} is already connected")
        self.connected = True
        self._fed = trio.Event()
        self.context.cancel_timer("idle")
        try:
            while not (self.closing and not self.pending):
                if not self.pending:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                    continue
                self.sending = self.pending.popleft()
                await stream.send(self.sending)  # waits here while the client has no credit
                self.sending = None
                self.delivered += 1
            stream.close_send()
        except MicroError:
            pass  # the client went away: the lines wait for it to come back, or for idleness
        finally:
            if self.sending is not None:  # not sent: first in line for the next feed
                self.pending.appendleft(self.sending)
                self.sending = None
            self.connected = False
            self._fed.set()
            if not self.closing:
                self._idle_timer()

    async def close(self, _: Close) -> None:
        """Hand the client what is pending, end its stream, and stop."""
        self.closing = True
        self._wakeup.set()
        if self.connected:
            with trio.move_on_after(self.drain_timeout):
                await self._fed.wait()
        self.context.stop()

    async def idle(self, _: Idle) -> None:
        if not self.connected and not self.closing:
            self.context.stop()

    async def stats(self, _: Any = None) -> SessionStats:
        held = len(self.pending) + (self.sending is not None)
        return SessionStats(self.user, self.connected, held, self.delivered, self.dropped)

    def _idle_timer(self) -> None:
        self.context.send_after(self.idle_after, Idle(), key="idle")
