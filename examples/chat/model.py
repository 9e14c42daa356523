"""The chat's messages. Names are checked at the edge (attrs validators run on every body a
node decodes), so a session actor is never spawned under a name that is not a plain word."""

from __future__ import annotations

import re

import attrs

from trimicro.actors import ActorRef
from trimicro.mailbox.codec import TypeRegistry

#: User and room names: what may appear in an actor's path.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: The longest line a user may say.
MAX_TEXT = 500

_name = attrs.validators.matches_re(NAME)


@attrs.frozen
class Join:
    """Come online in ``room``: answered with :class:`Joined` (the user's session actor)."""

    user: str = attrs.field(validator=_name)
    room: str = attrs.field(default="lobby", validator=_name)


@attrs.frozen
class Joined:
    user: str
    room: str
    #: The user's own actor: open its ``Session.feed`` stream to receive the room's lines.
    session: ActorRef
    online: list[str]


@attrs.frozen
class Leave:
    user: str = attrs.field(validator=_name)


@attrs.frozen
class Say:
    user: str = attrs.field(validator=_name)
    text: str = attrs.field(validator=[attrs.validators.min_len(1), attrs.validators.max_len(MAX_TEXT)])


@attrs.frozen
class Who:
    room: str = attrs.field(default="lobby", validator=_name)


@attrs.frozen
class Presence:
    room: str
    online: list[str]


@attrs.frozen
class Line:
    """One line of a room: ``user`` is ``"*"`` for the room's own news (joins and leaves)."""

    room: str
    user: str
    text: str


@attrs.frozen
class SessionStats:
    """What a session holds back for its user (``pending``) and what it has done with lines."""

    user: str
    connected: bool
    pending: int
    delivered: int
    dropped: int


def types() -> TypeRegistry:
    """The wire names of the chat's messages (the server's and the clients' nodes use it)."""
    registry = TypeRegistry()
    for cls in (Join, Joined, Leave, Say, Who, Presence, Line, SessionStats):
        registry.register(cls, f"chat.{cls.__name__}")
    return registry
