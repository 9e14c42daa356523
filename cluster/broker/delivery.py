"""The subscriber side: delivering to this node's subscribers, and the messages other nodes send.

A message reaches local subscribers from a local publish or from a peer (``pubsub.msg``, one
message; ``pubsub.batch``, several, as a busy publisher's link coalesces them). Each is checked
(shape, subject, the publisher's right to publish) and offered to the subscriber's mailbox; a full
mailbox applies the subscription's slow-subscriber policy, and a full "block" subscriber never
stalls the link's reader (its messages wait beside the link, see :mod:`.backlog`).
:class:`Delivery` is that part of :class:`~.pubsub.PubSub`, a mixin whose state the broker's
``__init__`` sets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import trio

from trimicro.actors import Node
from trimicro.actors.lowlevel import AUTHORIZATION, DEAD, OK, Cell, Link, Mail
from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope
from trimicro.mailbox.errors import BadRequest, MicroError
from trimicro.mailbox.logs import get_logger

from .backlog import OVERHEAD, Held
from .host import Host
from .message import DEAD_LETTER_PREFIX, Message, Subscription
from .topics import SubscriptionIndex, validate_subject

__all__ = ["NO_GROUPS", "Delivery"]

log = get_logger(__package__)

NO_GROUPS: frozenset[str] = frozenset()


class Delivery:
    """The broker's subscriber side: local delivery, slow-subscriber policies, inbound messages."""

    # Set by PubSub.__init__.
    cluster: Host
    node: Node
    codec: Codec
    index: SubscriptionIndex[Subscription]
    held: Held
    dropped: int
    delivered: int
    _rr: Iterator[int]
    _valid_subjects: set[str]
    #: Removes a subscription (PubSub.unsubscribe; a "drop_subscriber" policy uses it).
    unsubscribe: Callable[[Subscription], None]

    async def _deliver_local(
        self, message: Message, *, plain: bool, groups: AbstractSet[str], link: Link | None = None
    ) -> int:
        """Deliver to this node's subscribers; ``link`` is the one ``message`` came on (None: a
        local publish, which may wait for a full "block" subscriber itself)."""
        match = self.index.match_view(message.topic)
        delivered = 0
        if plain:
            held = self.held.by_link
            slow: Sequence[Subscription] | None
            if held and link in held:  # messages from this link wait for one: keep their order
                delivered, slow = 0, match.plain
            else:
                delivered, slow = _offer_now(match.plain, message)
            for sub in slow or ():
                delivered += await self._offer(sub, message, link)
            if self.node.spend():  # like tell: deliveries are handed over in batches
                await trio.lowlevel.cancel_shielded_checkpoint()
        # Which queue groups are served here was decided by the publisher (see publish).
        for group in groups:
            members = match.groups.get(group)
            if members:
                sub = members[next(self._rr) % len(members)]
                delivered += await self._offer(sub, message, link)
        self.delivered += delivered
        return delivered

    async def _offer(self, sub: Subscription, message: Message, link: Link | None = None) -> int:
        cell = sub.ref.binding
        if not isinstance(cell, Cell):
            return 0
        item = Mail.of(message, headers=message.headers or None)
        if link is not None:
            queues = self.held.by_link.get(link)
            if queues and sub in queues:  # earlier messages from this link wait for it: go behind
                return await self._hold(link, sub, cell, item)
        result = cell.offer(item)
        if result == OK:
            return 1
        if result == DEAD:
            return 0
        # Full mailbox: the subscription's policy decides.
        if sub.policy == "block":
            if link is not None:  # never stall the link's reader (every other frame waits on it)
                return await self._hold(link, sub, cell, item)
            return 1 if await cell.put(item) == OK else 0
        self.dropped += 1
        if sub.policy == "drop_oldest":
            old = cell.mailbox.discard_first(_is_published)
            dropped = old.msg if old is not None else message
            self.node.dead_letter(sub.ref, dropped, "dropped-oldest", None)
            return 1 if cell.offer(item) == OK else 0
        self.node.dead_letter(sub.ref, message, "dropped-subscriber", None)
        self.unsubscribe(sub)
        return 0

    async def _hold(self, link: Link, sub: Subscription, cell: Cell, item: Mail) -> int:
        """Queue a message from ``link`` for a full "block" subscriber (see .backlog); waits only
        while the link's backlogs are past their budget."""
        message: Message
        message = item.msg
        size = OVERHEAD + len(self.codec.encode(message.body)) + 64 * len(message.headers)
        drains = self.held.queue(link, sub, cell, item, size)
        if drains is not None:
            await drains
        return 1

    def _on_msg(self, link: Link, env: Envelope) -> Awaitable[int] | None:
        """One message (``pubsub.msg``: a map ``{t, b, h, p, q}``)."""
        try:
            data = self.codec.decode(env.body)
            entry = [data["t"], data["b"], data["h"], data["p"], data["q"]]
        except (MicroError, ValueError, TypeError, KeyError) as exc:
            log.debug("bad pubsub message from %s: %s", link.peer.node_id, exc)
            return None
        message = self._inbound(link, entry)
        if message is None:
            return None
        # Awaited by the link's reader, in order; a full "block" subscriber does not hold it (nor
        # anything else on the link) back unless the link's backlogs are past their budget.
        return self._deliver_local(message[0], plain=message[1], groups=message[2], link=link)

    def _on_batch(self, link: Link, env: Envelope) -> Awaitable[int] | None:
        """Several messages in one envelope (``pubsub.batch``: the msgpack array of ``[topic,
        body, headers, plain, groups]`` rows), as a busy publisher sends them (see ``_post``)."""
        try:
            rows = self.codec.decode(env.body)
            if not isinstance(rows, list):
                raise BadRequest("bad pubsub batch")
        except MicroError as exc:
            log.debug("bad pubsub batch from %s: %s", link.peer.node_id, exc)
            return None
        publisher = link.peer.node_id
        allowed: dict[str, bool] = {}  # topic -> checked and allowed, for this batch
        messages: list[tuple[Message, bool, AbstractSet[str]]] = []
        for row in rows:
            # The common shape (no headers, no queue groups, for plain subscribers) is checked
            # once per topic per batch; anything else takes the full check.
            if type(row) is list and len(row) == 5 and row[3] is True and not row[2] and not row[4]:
                topic = row[0]
                ok = allowed.get(topic) if type(topic) is str else False
                if ok is None:
                    ok = allowed[topic] = self._inbound(link, [topic, None, {}, True, []]) is not None
                if ok:
                    messages.append((Message(topic, row[1], {}, publisher), True, NO_GROUPS))
            else:
                message = self._inbound(link, row)
                if message is not None:
                    messages.append(message)
        return self._deliver_all(messages, link) if messages else None

    async def _deliver_all(self, messages: list[tuple[Message, bool, AbstractSet[str]]], link: Link) -> int:
        """Deliver a batch from a peer in order; plain messages without queue groups (the usual
        batch) take a synchronous fast path: one subscription lookup per topic per batch."""
        delivered = 0
        node = self.node
        matches: dict[str, Any] = {}
        held = self.held.by_link
        for message, plain, groups in messages:
            if not plain or groups or (held and link in held):  # (messages wait for a subscriber)
                delivered += await self._deliver_local(message, plain=plain, groups=groups, link=link)
                continue
            match = matches.get(message.topic)
            if match is None:
                match = matches[message.topic] = self.index.match_view(message.topic)
            count, slow = _offer_now(match.plain, message)
            delivered += count
            for sub in slow or ():  # full mailboxes: each subscription's policy, in order
                delivered += await self._offer(sub, message, link)
            if node.spend():
                await trio.lowlevel.cancel_shielded_checkpoint()
        return delivered

    def _validate(self, topic: str) -> None:
        """Check a subject once; remembered (bounded) so a hot topic is not parsed per message."""
        if not topic.startswith(DEAD_LETTER_PREFIX):
            validate_subject(topic)
        if len(self._valid_subjects) >= 4096:
            self._valid_subjects.clear()
        self._valid_subjects.add(topic)

    def _inbound(self, link: Link, entry: Any) -> tuple[Message, bool, set[str]] | None:
        """Check one message from a peer (shape, subject, the publisher's right to publish)."""
        try:
            topic, body, headers, plain, groups = entry
            if not isinstance(topic, str):
                raise BadRequest("bad topic")
            if topic not in self._valid_subjects:
                self._validate(topic)
            if (
                not isinstance(groups, list)
                or not all(isinstance(g, str) for g in groups)
                or not isinstance(headers, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
            ):
                raise BadRequest("bad pubsub message")
        except (MicroError, ValueError, TypeError) as exc:
            log.debug("bad pubsub message from %s: %s", link.peer.node_id, exc)
            return None
        guard = self.cluster.auth
        if guard is not None:
            try:
                guard.admit_topic(link, headers, topic, "publish")
            except MicroError:
                return None  # refused (and logged by the guard); a publish has no answer to carry it
        if AUTHORIZATION in headers:
            headers = {k: v for k, v in headers.items() if k != AUTHORIZATION}
        return Message(topic, body, headers, link.peer.node_id), bool(plain), set(groups)


def _is_published(item: Mail) -> bool:
    """Whether a queued item is a published message (what ``drop_oldest`` may drop)."""
    msg = item.msg
    return isinstance(msg, Message)


def _offer_now(subs: Sequence[Subscription], message: Message) -> tuple[int, list[Subscription] | None]:
    """Queue ``message`` for every subscription whose mailbox takes it now (a deque append);
    the count, and the subscriptions that need :meth:`Delivery._offer` (full, or not local)."""
    item = Mail()  # Mail.of written out, as on every per-message path (see actors/mail.py)
    item.msg, item.reply, item.sender = message, None, None
    item.endpoint, item.headers, item.principal = None, message.headers or None, None
    delivered = 0
    slow: list[Subscription] | None = None
    for sub in subs:
        cell = sub.ref._binding  # the slot, not the property: a third of a delivery's overhead
        if type(cell) is Cell and cell.offer(item) == OK:
            delivered += 1
        elif slow is None:
            slow = [sub]
        else:
            slow.append(sub)
    return delivered, slow
