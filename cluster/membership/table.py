"""The member table of a SWIM node: the records it holds and the rules by which they change.

:class:`MemberTable` is the state of :class:`~.swim.Swim` that the protocol around it reads and
changes: every member's record (incarnation, address, metadata, state), the members added by
discovery whose own record has not arrived yet, the running suspicion timers, the events not yet
drained and the updates to spread. It applies what a member says about itself and what others
say about us (the rules are in :mod:`.swim`'s docstring, "Who may say what"), and records a
suspicion's end (dead or left). Probing, checks and messages stay in :class:`~.swim.Swim`, which
is a :class:`MemberTable`. Sans-I/O, like the rest of SWIM here.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from .gossip import Gossip
from .messages import GONE, EventKind, Member, MemberEvent, MemberState, SwimConfig, next_incarnation
from .probes import ProbeOrder

__all__ = ["MemberTable"]


class MemberTable:
    """One node's member table (see the module docstring); :class:`~.swim.Swim` extends it."""

    def __init__(
        self,
        self_id: str,
        self_address: str,
        config: SwimConfig,
        rng: random.Random,
        metadata: dict[str, str] | None,
    ) -> None:
        self.config = config
        self._self_id = self_id
        me = Member(self_id, self_address, 0, MemberState.ALIVE, dict(metadata or {}), 0.0)
        self._members: dict[str, Member] = {self_id: me}
        self._unconfirmed: set[str] = set()  # added by join(), incarnation not heard yet
        self._gossip = Gossip(config)
        self._events: list[MemberEvent] = []
        self._suspect_until: dict[str, float] = {}
        self._probe_order = ProbeOrder(rng)
        #: Claims that no member could have made honestly as far as this node can tell: about a
        #: member above the incarnation it announced to us (or before it announced one), a node
        #: saying that it is itself suspect or dead, an update about the sender that is not the
        #: first of its message. Honest gossip that outran the member's own announcement is
        #: counted too; a steady rise means a member is lying.
        self.ignored_claims = 0

    # --- queries ----------------------------------------------------------------------------------

    @property
    def self_id(self) -> str:
        return self._self_id

    @property
    def me(self) -> Member:
        """This node's own record (its incarnation, metadata, ALIVE or LEFT)."""
        return self._members[self._self_id]

    def members(self) -> list[Member]:
        """Every member not yet forgotten, this node included, sorted by id."""
        return [self._members[k] for k in sorted(self._members)]

    def alive_members(self) -> list[Member]:
        """Members in state ALIVE (this node included while it has not left), sorted by id."""
        return [m for m in self.members() if m.state is MemberState.ALIVE]

    def get(self, member_id: str) -> Member | None:
        return self._members.get(member_id)

    def events(self) -> list[MemberEvent]:
        """Drain the membership events produced since the last call."""
        events, self._events = self._events, []
        return events

    # --- changes ----------------------------------------------------------------------------------

    def _own_record(self, now: float, update: dict[str, Any], state: MemberState) -> None:
        """A member speaking for itself: the one source of its incarnation, address, metadata."""
        member_id: str = update["id"]
        inc: int = update["inc"]
        current = self._members.get(member_id)
        if state is MemberState.SUSPECT or state is MemberState.DEAD:
            self.ignored_claims += 1  # nobody suspects itself; a peer that says so is broken
            return
        if state is MemberState.LEFT:
            if current is not None and current.state is not MemberState.LEFT:
                self._declare(now, current, MemberState.LEFT, inc)
            return
        if current is None:
            if len(self._members) >= self.config.max_members:
                return
            member = Member(member_id, update["addr"], inc, MemberState.ALIVE, update["md"], now)
            self._members[member_id] = member
            self._probe_order.add(member_id)
            self._emit("joined", member)
            self._enqueue(member)
            return
        confirming = member_id in self._unconfirmed and current.state is MemberState.ALIVE
        if inc == current.incarnation and not confirming:
            return  # the same record, or a suspicion/death at it that it has not refuted yet
        # A lower incarnation than ours is a new run of the node (counting from 0 again): only
        # the node raises its incarnation, so what it says now is the truth.
        self._unconfirmed.discard(member_id)
        was = current.state
        member = Member(
            member_id,
            update["addr"],
            inc,
            MemberState.ALIVE,
            update["md"],
            current.state_since if was is MemberState.ALIVE else now,
        )
        self._members[member_id] = member
        self._suspect_until.pop(member_id, None)
        self._enqueue(member)
        if was in GONE:
            self._probe_order.add(member_id)
            self._emit("joined", member)
            return
        if was is MemberState.SUSPECT:
            self._emit("alive", member)
        if member.metadata != current.metadata or member.address != current.address:
            self._emit("updated", member)

    def _about_self(self, inc: int, state: MemberState) -> None:
        me = self.me
        if me.state is MemberState.LEFT:
            return
        if inc > me.incarnation:  # we never announced it: made up, or from a previous run of ours
            self.ignored_claims += 1
            return
        if state is not MemberState.ALIVE and inc == me.incarnation:
            self._set_self(attrs.evolve(me, incarnation=next_incarnation(me.incarnation)))
        # Otherwise stale or our own record: our current one leads every message we send anyway.

    def _declare(self, now: float, member: Member, state: MemberState, inc: int) -> None:
        gone = attrs.evolve(member, incarnation=inc, state=state, state_since=now)
        self._members[member.id] = gone
        self._suspect_until.pop(member.id, None)
        self._unconfirmed.discard(member.id)
        self._emit("dead" if state is MemberState.DEAD else "left", gone)
        self._enqueue(gone)

    def _set_self(self, me: Member) -> None:
        self._members[self._self_id] = me

    def _emit(self, kind: EventKind, member: Member) -> None:
        self._events.append(MemberEvent(kind, member))

    def _enqueue(self, member: Member) -> None:
        # One pending update per member (the newest), so the queue is bounded by the table. Our
        # own record is not queued: it leads every message we send.
        if member.id == self._self_id:
            return
        self._gossip.enqueue(member)
