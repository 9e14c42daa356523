"""Acknowledged mode (``publish(..., ack=True)``): at least once, in memory.

The publisher asks each delivery and waits for its ack (the subscriber's handler returned) with
an ack deadline; a nack (the handler raised) or a missed deadline redelivers, to another
queue-group member when there is one, up to ``max_deliveries``; then the message goes to the
dead-letter topic ``$dead.<topic>``. A 401/403 from the receiving node's guard is a refusal,
raised at once and never redelivered nor dead-lettered. :class:`Deliverer` answers such
deliveries from other nodes (``PubSub.deliver``, at ``/user/trimicro-pubsub``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import attrs

from trimicro.actors import Actor, Node, ask
from trimicro.actors.lowlevel import AUTHORIZATION
from trimicro.mailbox.errors import (
    GUARD_ID,
    BadRequest,
    Forbidden,
    MicroError,
    ServiceUnavailable,
    Unauthorized,
)
from trimicro.mailbox.logs import get_logger

from .host import Host
from .message import DEAD_LETTER_PREFIX, Message, Subscription
from .topics import SubscriptionIndex, matches, validate_subject

__all__ = ["AckedDelivery", "Deliverer"]

log = get_logger(__package__)

#: A 401/403 from a delivery (the receiving node's rules, or a subscriber that raises one) is a
#: refusal, not a failure to deliver: it would be the same on every attempt, so never redelivered.
_REFUSED = (Unauthorized, Forbidden)

#: Where an acknowledged delivery may go: (node id, queue group, the local subscription or None).
Candidate = tuple[str, str | None, Subscription | None]


class Broker(Protocol):
    """What acknowledged mode needs of the broker it belongs to (:class:`~.pubsub.PubSub`)."""

    @property
    def node(self) -> Node: ...

    @property
    def cluster(self) -> Host: ...

    @property
    def index(self) -> SubscriptionIndex[Subscription]: ...

    @property
    def remote_interest(self) -> dict[str, list[tuple[str, str, int]]]:
        """node id -> [(pattern, queue or "", count)]: the peers' interest."""
        ...

    #: Deliveries to this node's subscribers, and deliveries made again (see ``PubSub``).
    delivered: int
    redelivered: int

    def may_receive(self, node_id: str, topic: str) -> bool: ...

    async def check_publish(self, topic: str, token: str | None) -> None: ...

    async def publish(self, topic: str, body: Any, *, headers: dict[str, str] | None = None) -> int: ...


async def _ask_subscriber(sub: Subscription, message: Message) -> None:
    """An acknowledged delivery to a subscriber of this node. Its handler's 401/403 (refused by
    some service it called) is its own failure, not this node's guard refusing the delivery:
    answered with the subscriber's id, so the publisher redelivers it (see :func:`_refusal`)."""
    try:
        await ask(sub.ref, message)
    except _REFUSED as exc:
        if exc.id != GUARD_ID:
            raise
        raise type(exc)(exc.detail, id=sub.ref.path) from None


def _refusal(exc: MicroError) -> bool:
    """Whether a delivery's error is the receiving node's guard refusing it (401/403 with the
    guard's id), not a subscriber's handler failing with the same code for its own reasons."""
    return isinstance(exc, _REFUSED) and exc.id == GUARD_ID


class Deliverer(Actor):
    """Answers acknowledged deliveries from other nodes (``PubSub.deliver``)."""

    service_name = "PubSub"

    def __init__(self, acked: AckedDelivery) -> None:
        self.acked = acked

    async def deliver(self, body: Any) -> bool:
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("t"), str)
            or not isinstance(body.get("h"), dict)
            or not isinstance(body.get("g"), str)
            or type(body.get("n")) is not int
        ):
            raise BadRequest("malformed delivery")  # a 400 answer, not a failed actor
        try:
            validate_subject(body["t"]) if not body["t"].startswith(DEAD_LETTER_PREFIX) else None
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        guard, account = self.acked.broker.cluster.auth, self.context.account
        if guard is not None and account is not None:  # the same topic rules as a plain publish
            guard.check_topic(account, body["t"], "publish")
        return await self.acked.deliver_locally(body)


class AckedDelivery:
    """The acknowledged mode of one broker; ``rr`` is the broker's round-robin counter over
    queue-group members (shared, so both modes rotate as one)."""

    def __init__(self, broker: Broker, rr: Iterator[int]) -> None:
        self.broker = broker
        self._rr = rr

    async def publish(
        self, message: Message, ack_timeout: float, max_deliveries: int, token: str | None
    ) -> int:
        """At least once: every matching subscriber (and one member per queue group) acks."""
        topic = message.topic
        match = self.broker.index.match(topic)
        # Plain subscribers: local ones directly, remote nodes once each (they fan out locally).
        remote_plain = {
            node_id
            for node_id, entries in self.broker.remote_interest.items()
            for pattern, queue, _ in entries
            if not queue and matches(pattern, topic) and self.broker.may_receive(node_id, topic)
        }
        plans: list[list[Candidate]] = [[(self.broker.node.id, None, sub)] for sub in match.plain]
        plans += [[(node_id, None, None)] for node_id in sorted(remote_plain)]
        groups = set(match.groups) | {
            q
            for entries in self.broker.remote_interest.values()
            for p, q, _ in entries
            if q and matches(p, topic)
        }
        plans += [self._group_candidates(topic, group) for group in sorted(groups)]
        if self.broker.cluster.auth is not None and any(
            n != self.broker.node.id for plan in plans for n, _, _ in plan
        ):
            await self.broker.check_publish(topic, token)  # 401/403 before anything is delivered
        acked = 0
        refused: list[tuple[str, MicroError]] = []
        for candidates in plans:  # every plan, whatever an earlier one's receivers refused
            n, refusal = await self._ack_loop(message, ack_timeout, max_deliveries, candidates, token)
            acked += n
            if refusal is not None:
                refused.append(refusal)
        if refused:  # after the rest was delivered: a retry of the publish duplicates those
            first = refused[0][1]
            nodes = ", ".join(sorted({node_id for node_id, _ in refused}))
            raise type(first)(
                f"{first.detail}: refused by node {nodes} ({len(refused)} of {len(plans)} deliveries; "
                f"{acked} acked)",
                id=GUARD_ID,
            )
        return acked

    def _group_candidates(self, topic: str, group: str) -> list[Candidate]:
        out: list[Candidate] = []
        for sub in self.broker.index.match(topic).groups.get(group, []):
            out.append((self.broker.node.id, group, sub))
        for node_id, entries in sorted(self.broker.remote_interest.items()):
            if any(q == group and matches(p, topic) for p, q, _ in entries) and self.broker.may_receive(
                node_id, topic
            ):
                out.append((node_id, group, None))
        self.broker.cluster.rng.shuffle(out)
        return out

    async def _ack_loop(
        self,
        message: Message,
        ack_timeout: float,
        max_deliveries: int,
        candidates: list[Candidate],
        token: str | None = None,
    ) -> tuple[int, tuple[str, MicroError] | None]:
        """Deliver until acked, rotating over ``candidates``; dead-letter after max_deliveries.

        ``(1, None)`` once acked; ``(0, (node, refusal))`` if the receiving nodes' guards
        refused it (:func:`_refusal`): a refusing node is not tried again, the others of a
        queue group are, and a message every candidate refused is neither redelivered nor
        dead-lettered; ``(0, None)`` once dead-lettered.
        """
        candidates = list(candidates)
        refusal: tuple[str, MicroError] | None = None
        last: BaseException | None = None
        for attempt in range(max_deliveries):
            if not candidates:
                return 0, refusal
            node_id, group, sub = candidates[attempt % len(candidates)]
            delivery = attrs.evolve(message, delivery=attempt + 1)
            if attempt:
                self.broker.redelivered += 1
            try:
                if sub is not None:
                    await ask(sub.ref, delivery, timeout=ack_timeout)
                    self.broker.delivered += 1
                    return 1, None
                ref = self.broker.node.remote_ref(node_id, "trimicro-pubsub")
                body = {
                    "t": message.topic,
                    "b": message.body,
                    "h": message.headers,
                    "g": group or "",
                    "n": attempt + 1,
                }
                auth = {AUTHORIZATION: token} if token else None  # the publisher is the caller
                if await ask(ref, body, endpoint="PubSub.deliver", timeout=ack_timeout, headers=auth):
                    return 1, None
            except MicroError as exc:
                if sub is None and _refusal(exc):  # stays one on every delivery to that node
                    refusal = (node_id, exc)
                    candidates.remove((node_id, group, sub))
                else:
                    last = exc
        if not candidates:  # refused wherever it went: no dead letter
            return 0, refusal
        log.warning("message on %s not acked after %d deliveries: %s", message.topic, max_deliveries, last)
        try:
            await self.broker.publish(
                DEAD_LETTER_PREFIX + message.topic, message.body, headers=message.headers
            )
        except _REFUSED:  # the dead letter is this node's, and its refusal not the publisher's to see
            log.warning("dead letter of a message on %s refused by the rules", message.topic)
        return 0, refusal

    async def deliver_locally(self, body: Any) -> bool:
        topic, payload, headers, group, n = body["t"], body["b"], body["h"], body["g"], body["n"]
        match = self.broker.index.match(topic)
        message = Message(topic, payload, dict(headers), "", int(n))
        if group:
            members = match.groups.get(group, [])
            if not members:
                raise ServiceUnavailable(f"no member of {group} here")
            sub = members[next(self._rr) % len(members)]
            await _ask_subscriber(sub, message)
            self.broker.delivered += 1
            return True
        for sub in match.plain:
            await _ask_subscriber(sub, message)
            self.broker.delivered += 1
        return True
