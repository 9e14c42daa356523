"""The chat service: who is online in which room, one session actor per user, and the fan-out.

``Chat.join`` spawns the user's :class:`~.session.Session` as a child of this actor (so it is
stopped with the service) and watches it; ``Chat.say`` tells the line to every session of the
speaker's room; ``Chat.who`` is the room's presence; ``Chat.leave`` closes the user's session.
A session that stops on its own (its user's client went away and stayed away) arrives here
as a :class:`~trimicro.actors.Terminated`: the user goes offline and the room is told.

Bounds: at most ``max_users`` online (a join beyond is a 429), names are plain words (the
messages' validators), a line is at most :data:`~.model.MAX_TEXT` characters.
"""

from __future__ import annotations

from typing import Any

from trimicro.actors import (
    Actor,
    ActorRef,
    Conflict,
    NotFound,
    Restart,
    Terminated,
    TooManyRequests,
    tell,
)

from .model import Join, Joined, Leave, Line, Presence, Say, Who
from .session import Close, Session


class Chat(Actor):
    service_name = "Chat"

    def __init__(self, *, max_users: int = 1000, **session_options: Any) -> None:
        self.max_users = max_users
        self.session_options = session_options
        self.rooms: dict[str, dict[str, ActorRef]] = {}  # room -> user -> session
        self.room_of: dict[str, str] = {}  # user -> room

    async def join(self, msg: Join) -> Joined:
        room = self.room_of.get(msg.user)
        if room is not None and room != msg.room:
            raise Conflict(f"{msg.user} is online in {room}: leave it first")
        if room is None:  # a join again (a client reconnecting) finds the session it had
            if len(self.room_of) >= self.max_users:
                raise TooManyRequests(f"the chat is full ({self.max_users} users online)")
            session = await self.context.spawn(
                Session, msg.user, name=msg.user, restart=Restart.TEMPORARY, **self.session_options
            )
            self.context.watch(session)
            self.rooms.setdefault(msg.room, {})[msg.user] = session
            self.room_of[msg.user] = msg.room
            await self._announce(msg.room, f"{msg.user} joined")
        members = self.rooms[msg.room]
        return Joined(msg.user, msg.room, members[msg.user], sorted(members))

    async def say(self, msg: Say) -> int:
        """Tell the line to everyone in the speaker's room; returns how many sessions got it."""
        room = self.room_of.get(msg.user)
        if room is None:
            raise NotFound(f"{msg.user} is not online: join first")
        return await self._fan_out(Line(room, msg.user, msg.text))

    async def who(self, msg: Who) -> Presence:
        return Presence(msg.room, sorted(self.rooms.get(msg.room, {})))

    async def leave(self, msg: Leave) -> None:
        session = self._forget(msg.user)
        if session is None:
            raise NotFound(f"{msg.user} is not online")
        await tell(session, Close())
        await self._announce(self.room_of.pop(msg.user), f"{msg.user} left")

    async def on_terminated(self, msg: Terminated) -> None:
        """A session stopped without a leave (idle, or failed): its user is offline."""
        for user, room in list(self.room_of.items()):
            if self.rooms[room].get(user) == msg.ref:
                self._forget(user)
                del self.room_of[user]
                why = "idle" if msg.reason is None else "gone"
                await self._announce(room, f"{user} left ({why})")

    def _forget(self, user: str) -> ActorRef | None:
        room = self.room_of.get(user)
        if room is None:
            return None
        session = self.rooms[room].pop(user)
        self.context.unwatch(session)
        if not self.rooms[room]:
            del self.rooms[room]
        return session

    async def _announce(self, room: str, text: str) -> None:
        await self._fan_out(Line(room, "*", text))

    async def _fan_out(self, line: Line) -> int:
        sessions = list(self.rooms.get(line.room, {}).values())
        for session in sessions:
            await tell(session, line)  # the session only queues it: this never waits long
        return len(sessions)
