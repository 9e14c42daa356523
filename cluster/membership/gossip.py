"""Dissemination: the membership updates a SWIM node piggybacks on the messages it sends.

Infection-style, as in SWIM: each update rides on about ``retransmit_mult * ceil(log2(n + 1))``
messages (``n`` the live members), least-sent first, and then is dropped; there are no messages
of its own. One pending update per member (the newest), so the queue is bounded by the member
table. Sans-I/O, like :class:`~.swim.Swim`, which owns one :class:`Gossip`.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from .messages import Member, SwimConfig

__all__ = ["Gossip", "as_update"]


@attrs.define
class _Broadcast:
    update: dict[str, Any]
    transmits: int = 0


def as_update(member: Member) -> dict[str, Any]:
    """A member's record as an update on the wire."""
    return {
        "id": member.id,
        "addr": member.address,
        "inc": member.incarnation,
        "s": int(member.state),
        "md": dict(member.metadata),
    }


class Gossip:
    """The queue of updates to spread, and the choice of those each message carries."""

    def __init__(self, config: SwimConfig) -> None:
        self.config = config
        self._queue: dict[str, _Broadcast] = {}

    def enqueue(self, member: Member) -> None:
        """Spread ``member``'s record (replacing any older pending update about it)."""
        self._queue.pop(member.id, None)
        self._queue[member.id] = _Broadcast(as_update(member))

    def forget(self, member_id: str) -> None:
        self._queue.pop(member_id, None)

    def fill(self, updates: list[dict[str, Any]], live: int) -> list[dict[str, Any]]:
        """``updates`` (those a message must carry) topped up from the queue, least-sent first,
        to ``max_piggyback``; an update sent its share of times (for ``live`` members) is dropped."""
        cfg = self.config
        included = {u["id"] for u in updates}
        limit = cfg.retransmit_mult * max(1, math.ceil(math.log2(live + 1)))
        for member_id, broadcast in sorted(self._queue.items(), key=lambda kv: kv[1].transmits):
            if len(updates) >= cfg.max_piggyback:
                break
            if member_id in included:
                continue
            updates.append(broadcast.update)
            broadcast.transmits += 1
            if broadcast.transmits >= limit:
                del self._queue[member_id]
        return updates[: cfg.max_piggyback]
