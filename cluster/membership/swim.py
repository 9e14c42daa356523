"""SWIM membership and failure detection as a sans-I/O state machine.

:class:`Swim` never touches a socket, a clock or trio. The runtime around it feeds it inputs --
:meth:`~Swim.tick` with the current time, :meth:`~Swim.receive` with a message from a peer,
:meth:`~Swim.join` with a peer found by discovery, :meth:`~Swim.link_lost` when a connection drops --
and every input returns the :class:`Outgoing` messages to send. Membership changes come out of
:meth:`~Swim.events`. Tests drive it with a virtual clock and an in-memory "network".

Why SWIM (Das, Gupta, Motivala 2002) rather than a phi-accrual detector (Hayashibara 2004, as in
Akka and Cassandra): phi-accrual judges each peer from the arrival history of that peer's
heartbeats, so every node must hear from every other node (O(n^2) traffic), and one slow
observer -- a paused or overloaded process -- decides alone that others are dead. SWIM gives each
node constant work per period (one probe, ``k`` indirect probes only on failure), asks other
members to confirm before suspecting (indirect ``ping_req`` tolerates a lossy path), lets a
suspected member refute with a higher incarnation before it is declared dead, and spreads
membership updates by piggybacking them on the probes themselves (infection-style, about
``retransmit_mult * ceil(log2(n + 1))`` sends per update) -- no extra messages and no tuning of a
threshold against an inter-arrival distribution.

Kept from Lifeguard (Dadgar et al. 2018), simplified:

* buddy system -- a ping to a member we suspect always carries that suspicion, and a member we
  suspect is pinged at once and then once per probe period until it refutes or is declared dead,
  so a live member learns it is suspected and its refutation comes straight back in the ack
  (without this, 10% message loss gave occasional false deaths with a 1.5 s suspicion timeout);
* local health -- a node that was itself stalled (``tick`` came much later than due, e.g. after
  SIGSTOP or a long GC pause) does not blame its peers for the probe it could not finish: it drops
  that probe, extends its running suspicion timers by the stall, and pre-emptively re-announces
  itself with a higher incarnation (others probably suspected it meanwhile).

Not kept: the dynamic suspicion timeout (confirmations shortening it), nack messages, and the TCP
push-pull state sync. Instead, an ack to a member we have as dead carries that record (so it
refutes), and every message carries its sender's own record (below), so a sender we do not know
joins us by sending anything.

Who may say what (the sender of a message is the node id its authenticated link proves, never a
field of the message). SWIM trusts every member with everything; here a member is trusted only
to speak for itself, and what it says about others is at most a reason to look for ourselves:

* **Direct speech.** The sender's own record (``alive``, or ``left`` when it leaves) is the first
  update of its message; an update about the sender anywhere else in the message is ignored and
  counted (:attr:`Swim.ignored_claims`). A message need not carry it (it is then handled as
  usual: acked, relayed). That record is the only way a member's incarnation, address or
  metadata enter our table: only a node raises its own incarnation, so only the node can tell us
  which one it has. It is taken as it is, lower or higher than what we hold (lower: the node
  restarted and counts from 0 again), except that an ``alive`` at the incarnation we hold does
  not clear our suspicion or death at it (the node must refute with a higher one, as in SWIM).
  A node that says it is itself suspect or dead is ignored and counted. ``left`` is accepted
  only here: from the member itself.
* **Gossip about a third member** (``id`` neither the sender nor us) never changes our table.
  About a member we do not know (it never spoke to us and discovery did not show it) it is
  dropped: no entry, no ping, so its address -- the claimant's choice -- is never dialed. About
  a member we know, a ``suspect``, ``dead`` or ``left`` claim at the incarnation we hold or
  above makes us *check* the member: we probe it as our round-robin probe does, at the address
  it announced (a ping; ``ping_req`` through others after ``probe_timeout``), and only if
  nothing answers by ``probe_interval`` do we suspect it ourselves -- then dead after
  ``suspicion_timeout`` unless it refutes, as for any suspicion of ours. Any message from the
  member during the check answers it. An ``alive`` claim at a higher incarnation (or about a
  member discovery showed us that has not spoken yet) makes us check it too, without suspecting
  on silence: its answer brings its own record. Claims at an incarnation above the one the
  member announced to us are impossible as far as we can tell, and counted; older ones are
  stale and dropped. A claim about a member we already suspect (our own timer runs) or hold
  dead or left does nothing.
* **Gossip about ourselves.** A suspicion or death (or ``left``) at our own incarnation is refuted
  with the next one, in our own record, which leads every message we send; an older one is
  stale and ignored; one above our own incarnation is impossible: ignored and counted (our
  record, unchanged, still leads every message we send).

So a liar can make us ask a member more often, never make us drop it: we suspect only members
that do not answer us, the same evidence as our own probe (and under message loss a check is no
likelier to fail than that probe). The incarnation we hold for a member is always one it
announced itself, and a node's own incarnation only grows by one per refutation, metadata
change or stall: it cannot come near the top of the range (2**63-1), and every raise is computed
so that it never leaves it. Checks cost at most one ping (plus ``indirect_probes`` ping_reqs
on silence) per member per ``probe_timeout``, for at most ``max_verifications`` members at once.

Incarnation rules (``i`` = incarnation in the update, ``j`` = the one we hold):

==================  ===================================  =========================================
update              applies to                           effect
==================  ===================================  =========================================
own alive (first)   unknown (table not full)             new ALIVE member, ``joined``
own alive (first)   any, ``i != j`` (or first answer)    ALIVE at ``i``: ``joined`` (from DEAD/LEFT),
                                                         ``alive`` (from SUSPECT), ``updated``
own left (first)    not LEFT                             LEFT, ``left``
own, not first      any                                  ignored, counted
own suspect/dead    any                                  ignored, counted
rumour, any state   unknown member                       dropped (no ping, no dial)
rumour alive        known, ``i > j`` or unconfirmed      check (no suspicion on silence)
suspect/dead/left   ALIVE with ``i >= j``                check; silence: SUSPECT (ours), then DEAD;
                                                         ``i > j`` or unconfirmed is also counted
==================  ===================================  =========================================

Anything else is ignored. DEAD and LEFT members are remembered for ``dead_retention`` so that stale
rumours cannot bring them back, then forgotten.

The wire format and its validation are in :mod:`.messages`, the spreading of updates in
:mod:`.gossip`, the probe records and the probe order in :mod:`.probes`, the member table and
the rules for what a member says about itself (or others about us) in :mod:`.table`.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs

from .gossip import as_update
from .messages import (
    GONE,
    LIVE,
    MAX_ID_LENGTH,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_LENGTH,
    EventKind,
    Member,
    MemberEvent,
    MemberState,
    Outgoing,
    SwimConfig,
    SwimProtocolError,
    check_local,
    decode_message,
    next_incarnation,
)
from .probes import Probe, Relay
from .table import MemberTable

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_LENGTH",
    "EventKind",
    "Member",
    "MemberEvent",
    "MemberState",
    "Outgoing",
    "Swim",
    "SwimConfig",
    "SwimProtocolError",
    "decode_message",
]

#: The configuration a :class:`Swim` gets when given none (frozen: one shared instance).
_DEFAULT_CONFIG = SwimConfig()


# --- the state machine ------------------------------------------------------------------------------


class Swim(MemberTable):
    """One node's view of the cluster; feed it inputs, send what they return.

    Not thread-safe and never blocking: the runtime calls it from one task. ``now`` must not go
    backwards between calls.
    """

    def __init__(
        self,
        self_id: str,
        self_address: str,
        *,
        config: SwimConfig = _DEFAULT_CONFIG,
        rng: random.Random,
        metadata: dict[str, str] | None = None,
    ) -> None:
        check_local(self_id, self_address, metadata)
        super().__init__(self_id, self_address, config, rng, metadata)
        self._rng = rng
        self._relays: dict[int, Relay] = {}
        self._probe: Probe | None = None
        self._next_probe_at: float | None = None
        self._last_tick: float | None = None
        self._seq = 0
        self._checks: dict[str, Probe] = {}  # members asked because of a claim about them

    def next_deadline(self) -> float:
        """The latest time by which :meth:`tick` must be called again (``-inf``: call it now)."""
        if self._next_probe_at is None:
            return -math.inf
        deadlines = [self._next_probe_at, *self._suspect_until.values()]
        probe = self._probe
        if probe is not None and not probe.acked and not probe.helpers:
            deadlines.append(probe.started + self.config.probe_timeout)
        for check in self._checks.values():
            late = check.acked or not check.helpers
            deadlines.append(
                check.started + (self.config.probe_timeout if late else self.config.probe_interval)
            )
        deadlines.extend(
            m.state_since + self.config.dead_retention for m in self._members.values() if m.state in GONE
        )
        return min(deadlines)

    # --- inputs -----------------------------------------------------------------------------------

    def join(self, now: float, member_id: str, address: str) -> list[Outgoing]:
        """A peer found by discovery (a seed): remember it and ping it with our alive record."""
        check_local(member_id, address)
        if member_id == self._self_id or self.me.state is MemberState.LEFT:
            return []
        if member_id not in self._members:
            if len(self._members) >= self.config.max_members:
                return []
            member = Member(member_id, address, 0, MemberState.ALIVE, {}, now)
            self._members[member_id] = member
            self._unconfirmed.add(member_id)
            self._probe_order.add(member_id)
            self._emit("joined", member)
        message = {"t": "ping", "seq": self._next_seq(), "u": self._piggyback(member_id)}
        return [Outgoing(member_id, address, message)]

    def tick(self, now: float) -> list[Outgoing]:
        """Drive time: probe rounds, indirect probes, suspicion and retention timers.

        Call it by :meth:`next_deadline` at the latest (at most ``probe_interval`` apart). A gap of
        more than ``2 * probe_interval`` since the previous tick is taken as a stall of this node
        (see the module docstring) rather than as silence of its peers.
        """
        cfg = self.config
        out: list[Outgoing] = []
        if self._last_tick is not None and now - self._last_tick > 2 * cfg.probe_interval:
            self._stalled(now - self._last_tick)
        self._last_tick = now
        if self.me.state is MemberState.LEFT:
            return out

        probe = self._probe
        if probe is not None and not probe.acked and self._advance(now, probe, out):
            self._probe = None
        for member_id, check in list(self._checks.items()):
            # Kept a probe timeout even when answered: one check per member per probe timeout,
            # however many claims arrive.
            done = now >= check.started + cfg.probe_timeout if check.acked else self._advance(now, check, out)
            if done:
                del self._checks[member_id]

        if self._next_probe_at is None or now >= self._next_probe_at:
            self._next_probe_at = now + cfg.probe_interval
            self._probe = None
            target_id = self._next_probe_target()
            if target_id is not None:
                seq = self._next_seq()
                self._probe = Probe(target_id, seq, now)
                out.append(self._message(target_id, {"t": "ping", "seq": seq}))
            out.extend(self._remind_suspects(exclude=target_id))

        for member_id, until in list(self._suspect_until.items()):
            member = self._members[member_id]
            if now >= until:
                self._declare(now, member, MemberState.DEAD, member.incarnation)

        for member in list(self._members.values()):
            if member.state in GONE and now >= member.state_since + cfg.dead_retention:
                del self._members[member.id]
                self._gossip.forget(member.id)
                self._unconfirmed.discard(member.id)

        for seq, relay in list(self._relays.items()):
            if now >= relay.expires:
                del self._relays[seq]
        return out

    def receive(self, now: float, from_id: str, message: object) -> list[Outgoing]:
        """Handle a message from ``from_id`` (as authenticated by the link).

        Raises :class:`SwimProtocolError` for malformed input and nothing else; messages that
        claim to come from this node itself are ignored.
        """
        if type(from_id) is not str or not 0 < len(from_id) <= MAX_ID_LENGTH:
            raise SwimProtocolError("from_id: expected a non-empty string of at most 256 characters")
        if from_id == self._self_id:
            return []
        msg = decode_message(message, max_updates=2 * self.config.max_piggyback)
        check = self._checks.get(from_id)
        if check is not None:
            check.acked = True  # it speaks to us: alive, whatever anyone said
        out: list[Outgoing] = []
        for index, update in enumerate(msg["u"]):
            out.extend(self._apply(now, from_id, update, first=index == 0))
        kind = msg["t"]
        if kind == "ping":
            out.append(self._ack(from_id, msg["seq"]))
        elif kind == "ack":
            out.extend(self._on_ack(from_id, msg))
        else:
            out.extend(self._on_ping_req(now, from_id, msg))
        return out

    def link_lost(self, now: float, member_id: str) -> list[Outgoing]:
        """The connection to ``member_id`` dropped: suspect it now instead of waiting for a probe."""
        member = self._members.get(member_id)
        if member is None or member.state is not MemberState.ALIVE or member_id == self._self_id:
            return []
        return self._suspect(now, member, member.incarnation, tell=True)

    def set_metadata(self, now: float, metadata: dict[str, str]) -> list[Outgoing]:
        """Our metadata changed: raise our incarnation and gossip the new alive record."""
        check_local(self._self_id, self.me.address, metadata)
        me = self.me
        if me.state is MemberState.LEFT:
            return []
        self._set_self(
            attrs.evolve(me, incarnation=next_incarnation(me.incarnation), metadata=dict(metadata))
        )
        return []

    def leave(self, now: float) -> list[Outgoing]:
        """Graceful leave: tell every live member, then stop probing (further calls do nothing)."""
        me = self.me
        if me.state is MemberState.LEFT:
            return []
        left = attrs.evolve(me, state=MemberState.LEFT, state_since=now)
        self._set_self(left)
        self._probe = None
        self._checks.clear()
        update = as_update(left)
        return [
            Outgoing(m.id, m.address, {"t": "ping", "seq": self._next_seq(), "u": [update]})
            for m in self.members()
            if m.id != self._self_id and m.state in LIVE
        ]

    # --- message handlers -------------------------------------------------------------------------

    def _ack(self, to_id: str, seq: int) -> Outgoing:
        return self._message(to_id, {"t": "ack", "seq": seq})

    def _on_ack(self, from_id: str, msg: dict[str, Any]) -> list[Outgoing]:
        seq = msg["seq"]
        for probe in (self._probe, *self._checks.values()):  # at most 1 + max_verifications
            if (
                probe is not None
                and probe.seq == seq
                and (from_id == probe.target or from_id in probe.helpers)
            ):
                probe.acked = True
        relay = self._relays.get(seq)
        if relay is not None and relay.target == from_id:
            del self._relays[seq]
            return [self._message(relay.requester, {"t": "ack", "seq": relay.requester_seq})]
        return []

    def _on_ping_req(self, now: float, from_id: str, msg: dict[str, Any]) -> list[Outgoing]:
        target_id = msg["target"]
        if target_id == self._self_id:
            return [self._ack(from_id, msg["seq"])]
        target = self._members.get(target_id)
        if target is None or target.state not in LIVE or len(self._relays) >= self.config.max_relays:
            return []
        seq = self._next_seq()
        self._relays[seq] = Relay(from_id, msg["seq"], target_id, now + self.config.probe_interval)
        return [self._message(target_id, {"t": "ping", "seq": seq})]

    def _advance(self, now: float, probe: Probe, out: list[Outgoing]) -> bool:
        """Move an unanswered probe on: indirect probes after ``probe_timeout``; after
        ``probe_interval``, suspect the target (if the probe says silence is suspicious) and
        return True (the probe is over)."""
        cfg = self.config
        if now >= probe.started + cfg.probe_interval:
            target = self._members.get(probe.target)
            if probe.suspicious and target is not None and target.state is MemberState.ALIVE:
                out.extend(self._suspect(now, target, target.incarnation, tell=True))
            return True
        if not probe.helpers and now >= probe.started + cfg.probe_timeout:
            out.extend(self._indirect_probe(probe))
        return False

    def _indirect_probe(self, probe: Probe) -> list[Outgoing]:
        helpers = [
            m.id
            for m in self.members()
            if m.state is MemberState.ALIVE and m.id not in (self._self_id, probe.target)
        ]
        chosen = self._rng.sample(helpers, min(self.config.indirect_probes, len(helpers)))
        probe.helpers.update(chosen)
        if not chosen:
            probe.helpers.add(self._self_id)  # marks "ping_req phase done"; we never ack ourselves
        return [self._message(h, {"t": "ping_req", "seq": probe.seq, "target": probe.target}) for h in chosen]

    # --- applying updates -------------------------------------------------------------------------

    def _apply(self, now: float, from_id: str, update: dict[str, Any], *, first: bool) -> list[Outgoing]:
        """Apply one update of a message from ``from_id``: what it says about its sender, about
        us, or about a third member are three different things (see the module docstring)."""
        member_id: str = update["id"]
        state = MemberState(update["s"])
        if member_id == self._self_id:
            self._about_self(update["inc"], state)
            return []
        if member_id == from_id:
            if first:
                self._own_record(now, update, state)
            else:
                self.ignored_claims += 1  # a sender's own record leads its message, or is not one
            return []
        return self._rumour(now, update, state)

    def _rumour(self, now: float, update: dict[str, Any], state: MemberState) -> list[Outgoing]:
        """A claim about a third member: never applied, at most a reason to check the member."""
        member_id: str = update["id"]
        inc: int = update["inc"]
        current = self._members.get(member_id)
        if current is None:
            # A member we do not know: only it (or discovery) introduces it. Its rumoured
            # address is never dialed, so a made-up member costs us nothing.
            return []
        unheard = member_id in self._unconfirmed or inc > current.incarnation
        if state is MemberState.ALIVE:
            return self._check(now, current, suspicious=False) if unheard else []
        if unheard:
            self.ignored_claims += 1  # an incarnation it did not announce (to us): see module doc
        elif inc < current.incarnation:
            return []  # stale: it refuted that already
        if current.state is not MemberState.ALIVE:
            return []  # suspected by us (our own timer runs), or gone already
        return self._check(now, current, suspicious=True)

    def _check(self, now: float, member: Member, *, suspicious: bool) -> list[Outgoing]:
        """Probe a member we know because of a claim about it, at the address it announced: a
        ping (its ack starts with its own record), ``ping_req`` through others after
        ``probe_timeout``, and if ``suspicious`` (a suspect, dead or left claim) and nothing
        answers by ``probe_interval``, we suspect it ourselves -- our own evidence, held to the
        same standard as our round-robin probe. One check per member at a time (kept at least a
        probe timeout), ``max_verifications`` at once, so claims cost a bounded number of pings."""
        check = self._checks.get(member.id)
        if check is not None:
            check.suspicious = check.suspicious or suspicious
            return []
        if self.me.state is MemberState.LEFT or len(self._checks) >= self.config.max_verifications:
            return []
        seq = self._next_seq()
        self._checks[member.id] = Probe(member.id, seq, now, suspicious=suspicious)
        return [self._message(member.id, {"t": "ping", "seq": seq})]

    def _suspect(self, now: float, member: Member, inc: int, *, tell: bool) -> list[Outgoing]:
        suspect = attrs.evolve(member, incarnation=inc, state=MemberState.SUSPECT, state_since=now)
        self._members[member.id] = suspect
        self._suspect_until[member.id] = now + self.config.suspicion_timeout
        self._emit("suspect", suspect)
        self._enqueue(suspect)
        if not tell:
            return []
        # Buddy system: the suspect hears about it now and can refute in its ack.
        return [self._message(member.id, {"t": "ping", "seq": self._next_seq()})]

    def _remind_suspects(self, exclude: str | None) -> list[Outgoing]:
        """Buddy system, repeated: ping each member we suspect once per probe period, carrying the
        suspicion, so that a live one refutes straight back to us in its ack."""
        suspects = [m for m in self._suspect_until if m != exclude][: self.config.max_piggyback]
        return [self._message(m, {"t": "ping", "seq": self._next_seq()}) for m in suspects]

    def _stalled(self, gap: float) -> None:
        """We did not run for ``gap`` seconds: judge nobody by what we could not observe."""
        self._probe = None
        self._checks.clear()
        self._next_probe_at = None
        for member_id in self._suspect_until:
            self._suspect_until[member_id] += gap
        me = self.me
        if me.state is MemberState.ALIVE:
            self._set_self(attrs.evolve(me, incarnation=next_incarnation(me.incarnation)))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _message(self, to_id: str, message: dict[str, Any]) -> Outgoing:
        member = self._members.get(to_id)
        message["u"] = self._piggyback(to_id)
        return Outgoing(to_id, member.address if member is not None else "", message)

    def _piggyback(self, to_id: str) -> list[dict[str, Any]]:
        """Up to ``max_piggyback`` updates: our own record; the recipient's, if we hold it as
        suspect, dead or left (so that it refutes, or learns it left); the queue, least-sent first."""
        updates = [as_update(self.me)]
        target = self._members.get(to_id)
        if target is not None and target.state is not MemberState.ALIVE and to_id != self._self_id:
            updates.append(as_update(target))
        live = sum(1 for m in self._members.values() if m.state in LIVE)
        return self._gossip.fill(updates, live)

    def _next_probe_target(self) -> str | None:
        return self._probe_order.next(
            lambda: [m.id for m in self.members() if m.id != self._self_id and m.state in LIVE],
            self._probe_eligible,
        )

    def _probe_eligible(self, member_id: str) -> bool:
        member = self._members.get(member_id)
        return member is not None and member.state in LIVE and member_id != self._self_id
