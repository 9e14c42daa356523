"""Probing in SWIM: the record of a probe in flight, of a ``ping_req`` relayed for another member,
and the randomized round-robin order in which a node probes the others (sans-I/O, for
:class:`~.swim.Swim`)."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

__all__ = ["Probe", "ProbeOrder", "Relay"]


@attrs.define
class Probe:
    """A probe of ``target``: a ping, ``ping_req`` through helpers after ``probe_timeout``, and
    no answer by ``probe_interval`` means ``target`` is suspect. Our round-robin probe is one;
    a *check* (a member asked because of a claim about it) is another, with ``suspicious``
    saying whether silence makes us suspect it (a death claim) or not (an alive rumour)."""

    target: str
    seq: int
    started: float
    helpers: set[str] = attrs.field(factory=set)
    acked: bool = False
    suspicious: bool = True


@attrs.define
class Relay:
    requester: str
    requester_seq: int
    target: str
    expires: float


class ProbeOrder:
    """Each live member once per round, in an order shuffled anew every round (SWIM's bound on
    the time to detect a failure, where picking at random would leave some unprobed for long)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._index = 0

    def add(self, member_id: str) -> None:
        # SWIM inserts newcomers at a random place of the current round, so they get probed soon.
        remaining = self._order[self._index :]
        if member_id not in remaining:
            position = self._rng.randint(self._index, len(self._order))
            self._order.insert(position, member_id)

    def next(self, candidates: Callable[[], list[str]], eligible: Callable[[str], bool]) -> str | None:
        """The next member to probe: from this round, skipping those no longer ``eligible``; a
        new round of ``candidates()`` when this one is done (None: nobody to probe)."""
        while True:
            if self._index >= len(self._order):
                fresh = candidates()
                if not fresh:
                    return None
                self._rng.shuffle(fresh)
                self._order = fresh
                self._index = 0
            member_id = self._order[self._index]
            self._index += 1
            if eligible(member_id):
                return member_id
