"""SWIM's vocabulary: member states and records, the events and messages the state machine
(:mod:`.swim`) produces, its configuration, and the validation of what peers send (sans-I/O).

Wire format (plain msgpack-friendly dicts; ids come from the authenticated link, not the message)::

    {"t": "ping",     "seq": int, "u": [update, ...]}
    {"t": "ack",      "seq": int, "u": [update, ...], "who": bool (optional, ignored)}
    {"t": "ping_req", "seq": int, "target": str, "u": [update, ...]}
    update = {"id": str, "addr": str, "inc": int, "s": MemberState (int), "md": {str: str}}

Every message this implementation sends starts with its own record.

:func:`decode_message` validates untrusted input and raises only :class:`SwimProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal

import attrs

__all__ = [
    "GONE",
    "LIVE",
    "MAX_ID_LENGTH",
    "MAX_METADATA_ENTRIES",
    "MAX_METADATA_LENGTH",
    "EventKind",
    "Member",
    "MemberEvent",
    "MemberState",
    "Outgoing",
    "SwimConfig",
    "SwimProtocolError",
    "check_local",
    "decode_message",
    "next_incarnation",
]

MAX_ID_LENGTH = 256
"""Longest member id or address accepted, in characters."""
MAX_METADATA_ENTRIES = 16
MAX_METADATA_LENGTH = 256
"""Longest metadata key or value accepted, in characters."""

_MAX_INT = 2**63 - 1  # msgpack's signed 64-bit range
_MAX_MESSAGE_KEYS = 8
_MESSAGE_TYPES = frozenset({"ping", "ack", "ping_req"})


class SwimProtocolError(ValueError):
    """A message from a peer is malformed; the runtime should drop it (and may count it)."""


class MemberState(IntEnum):
    """A member's state as this node believes it; the value is the ``"s"`` field on the wire."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
GONE = (MemberState.DEAD, MemberState.LEFT)

EventKind = Literal["joined", "updated", "suspect", "alive", "dead", "left"]


@attrs.frozen
class SwimConfig:
    """Timing and size knobs; the defaults suit a LAN cluster of a few to a few hundred nodes."""

    probe_interval: float = 0.5
    """A probe round starts this often; it is also the whole probe period."""
    probe_timeout: float = 0.25
    """How long to wait for a direct ack before asking ``indirect_probes`` others (ping_req)."""
    indirect_probes: int = 2
    suspicion_timeout: float = 1.5
    """SUSPECT becomes DEAD if not refuted within this time (counted from when we suspected)."""
    dead_retention: float = 30.0
    """DEAD/LEFT members are remembered this long, to reject stale alive rumours, then forgotten."""
    max_piggyback: int = 8
    """Updates piggybacked per message (a peer accepts up to twice this)."""
    retransmit_mult: int = 3
    """Each update is sent about ``retransmit_mult * ceil(log2(n + 1))`` times."""
    max_members: int = 1024
    """Updates about unknown members beyond this many known members are ignored."""
    max_relays: int = 64
    """ping_req requests served at once; further requests are ignored."""
    max_verifications: int = 64
    """Members asked at once for their own record (after a rumour we could not check)."""


@attrs.frozen
class Member:
    """What this node believes about one member (itself included)."""

    id: str
    address: str
    incarnation: int
    state: MemberState
    metadata: dict[str, str] = attrs.field(factory=dict, hash=False)
    state_since: float = 0.0
    """When this node last saw the state change (its own clock)."""


@attrs.frozen
class MemberEvent:
    """A membership change: ``joined`` (first seen alive, or again after dead/left), ``updated``
    (metadata or address changed), ``suspect``, ``alive`` (recovered from suspect), ``dead``,
    ``left``. Changes to this node itself produce no events."""

    kind: EventKind
    member: Member


@attrs.frozen
class Outgoing:
    """Send ``message`` to ``to_id``. ``to_address`` is the dial hint; it is ``""`` only when
    replying to a peer we know nothing about (reply over the link the request came in on)."""

    to_id: str
    to_address: str
    message: dict[str, Any]


# --- validation -------------------------------------------------------------------------------------


def _str(value: object, what: str, *, min_len: int = 0, max_len: int = MAX_ID_LENGTH) -> str:
    if type(value) is not str or not min_len <= len(value) <= max_len:
        raise SwimProtocolError(f"{what}: expected a string of {min_len}..{max_len} characters")
    return value


def _int(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= _MAX_INT:
        raise SwimProtocolError(f"{what}: expected an integer in 0..2**63-1")
    return value


def _metadata(value: object, what: str = "md") -> dict[str, str]:
    if type(value) is not dict or len(value) > MAX_METADATA_ENTRIES:
        raise SwimProtocolError(f"{what}: expected a map of at most {MAX_METADATA_ENTRIES} entries")
    return {
        _str(k, f"{what} key", max_len=MAX_METADATA_LENGTH): _str(
            v, f"{what} value", max_len=MAX_METADATA_LENGTH
        )
        for k, v in value.items()
    }


def _update(value: object) -> dict[str, Any]:
    if type(value) is not dict or len(value) > _MAX_MESSAGE_KEYS:
        raise SwimProtocolError("update: expected a map")
    state = _int(value.get("s"), "update state")
    if state > max(MemberState):
        raise SwimProtocolError("update state: unknown")
    return {
        "id": _str(value.get("id"), "update id", min_len=1),
        "addr": _str(value.get("addr"), "update addr"),
        "inc": _int(value.get("inc"), "update inc"),
        "s": state,
        "md": _metadata(value.get("md")),
    }


def decode_message(obj: object, *, max_updates: int = 16) -> dict[str, Any]:
    """Validate an untrusted, already-deserialized message and return a clean copy of it.

    Unknown keys are dropped (room for protocol extensions), everything else must have the exact
    type and size the wire format says. Raises :class:`SwimProtocolError` and nothing else.
    """
    if type(obj) is not dict or len(obj) > _MAX_MESSAGE_KEYS:
        raise SwimProtocolError("message: expected a small map")
    kind = obj.get("t")
    if type(kind) is not str or kind not in _MESSAGE_TYPES:
        raise SwimProtocolError("message: unknown type")
    raw_updates = obj.get("u", [])
    if type(raw_updates) not in (list, tuple) or len(raw_updates) > max_updates:
        raise SwimProtocolError(f"u: expected a list of at most {max_updates} updates")
    out: dict[str, Any] = {
        "t": kind,
        "seq": _int(obj.get("seq"), "seq"),
        "u": [_update(u) for u in raw_updates],
    }
    if kind == "ping_req":
        out["target"] = _str(obj.get("target"), "target", min_len=1)
    elif kind == "ack" and "who" in obj:
        if type(obj["who"]) is not bool:
            raise SwimProtocolError("who: expected a bool")
        out["who"] = obj["who"]
    return out


def next_incarnation(incarnation: int) -> int:
    """The incarnation after ``incarnation``, never past the wire's range. Only a node's own
    refutations, metadata changes and stalls raise it, one at a time, so the cap (2**63-1) is not
    reached in practice; were it reached, the node would keep it and could no longer refute."""
    return min(incarnation + 1, _MAX_INT)


def check_local(member_id: str, address: str, metadata: Mapping[str, str] | None = None) -> None:
    """Validate our own inputs so that nothing we send would be refused by a peer."""
    try:
        _str(member_id, "id", min_len=1)
        _str(address, "address")
        if metadata is not None:
            _metadata(dict(metadata), "metadata")
    except SwimProtocolError as exc:
        raise ValueError(str(exc)) from None
