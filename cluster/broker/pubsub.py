"""Pub/sub on the cluster: publish from anywhere, subscribe actors, queue groups, across nodes.

Each node keeps a :class:`~trimicro.cluster.broker.topics.SubscriptionIndex` of its local
subscriptions (NATS-style patterns: ``orders.*``, ``orders.>``) and tells every member which
patterns it wants (``SYSTEM`` operation ``pubsub.interest``, sent when its interest changes and
to each member that joins). A publish then:

1. delivers to matching local subscribers;
2. sends the message once to each other node whose interest matches (``pubsub.msg``), which
   delivers to its own local subscribers: a node without subscribers gets nothing;
3. for each queue group with matching members anywhere, picks one member node (weighted by its
   member count) and that node delivers to one local member, round robin.

Delivery semantics (stated, and tested in tests/test_pubsub.py):

- **Ordering**: messages from one publisher reach each subscriber in publish order (one link per
  pair of nodes, FIFO mailboxes).
- **At most once** by default: a message is never delivered twice, and may be lost if a node or
  link fails in flight.
- **Acknowledged** (``ack=True`` on publish): at least once, in memory. The publisher waits for
  each delivery's ack (the subscriber's handler returned) with an ack deadline; a nack (the
  handler raised) or a missed deadline redelivers, to another queue-group member when there is
  one, up to ``max_deliveries``; then the message goes to the dead-letter topic
  ``$dead.<topic>``.
- **Refused publishes**: with auth on, the right to publish is checked by the publishing node
  before a message leaves it (against the rules every node holds, for the forwarded token's
  account or the node's own), so ``publish`` raises the 401/403 and nothing is delivered,
  here or anywhere. The receiving node checks again and drops, logged, what its rules refuse
  (its rules may be newer by up to one refresh period). In acknowledged mode a 401/403 from a
  delivery is raised at once: a refused message is never redelivered, nor dead-lettered.
- **Slow subscribers**: the subscriber's bounded mailbox is the buffer; when it is full the
  subscription's policy applies: ``"block"`` (the publisher waits), ``"drop_oldest"`` (the oldest
  queued message of that subscription is dropped), or ``"drop_subscriber"`` (the subscription is
  removed). Drops are counted in :attr:`PubSub.dropped` and published as dead letters.

Subscriptions die with their actor (death watch). Acknowledged mode is in :mod:`.acked`, the
message types in :mod:`.message`, and what the broker needs of its node in :mod:`.host`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from typing import Any

import trio

from trimicro.actors import Actor, ActorRef, Terminated
from trimicro.actors.lowlevel import (
    AUTHORIZATION,
    DEAD,
    OK,
    OUT_HIGH_WATER,
    Cell,
    Link,
    Mail,
    Peer,
    forward_auth,
)
from trimicro.mailbox.codec import MSGPACK
from trimicro.mailbox.envelope import Envelope
from trimicro.mailbox.errors import BadRequest, MicroError

from .acked import AckedDelivery, Deliverer
from .backlog import OVERHEAD, Held, Holds
from .host import Host, MemberEventView, TopicGuard
from .message import DEAD_LETTER_PREFIX, Message, Policy, Subscription
from .topics import SubscriptionIndex, matches, validate_pattern, validate_subject

__all__ = ["DEAD_LETTER_PREFIX", "Host", "Message", "Policy", "PubSub", "Subscription", "TopicGuard"]

log = logging.getLogger("trimicro.pubsub")

#: Interest entries accepted from one peer.
MAX_REMOTE_INTEREST = 10_000
_NO_GROUPS: frozenset[str] = frozenset()

#: Topics whose routes are remembered (all are forgotten when full, or when interest changes).
MAX_ROUTES = 4096
#: Senders (tokens) remembered as allowed to publish on one route.
MAX_ROUTE_SENDERS = 64


class _Watcher(Actor):
    """Watches subscriber actors so that their subscriptions die with them."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub

    async def on_terminated(self, msg: Terminated) -> None:
        self.pubsub._actor_gone(msg.ref)


class _Route:
    """Where messages on one topic go, worked out once and reused until interest, membership
    or the auth rules change: which peers get it for plain subscribers (and may), and for each
    queue group the candidate nodes with their weights (member counts); and who was found
    allowed to publish there, when a message may leave the node."""

    __slots__ = ("allowed", "check", "groups", "local", "plain_nodes", "until")

    def __init__(
        self,
        local: bool,
        plain_nodes: tuple[str, ...],
        groups: dict[str, tuple[list[str], list[int], int]],
        until: float,
        check: bool,
    ) -> None:
        self.local = local
        self.plain_nodes = plain_nodes
        self.groups = groups
        #: A message may leave the node and auth is on: the publisher's right is checked.
        self.check = check
        #: Tokens (None: the node itself) checked and allowed to publish on this route.
        self.allowed: set[str | None] = set()
        #: Trusted until then (``time.monotonic``): decisions about peers (a certificate can expire) are
        #: made again at least once a second, as the guard's grants are.
        self.until = until


class PubSub:
    """A cluster node's pub/sub: local index, peers' interest, publish and subscribe."""

    def __init__(self, cluster: Host) -> None:
        self.cluster = cluster
        self.node = cluster.node
        self.codec = self.node.remote.codec
        self.index: SubscriptionIndex[Subscription] = SubscriptionIndex()
        self._by_actor: dict[ActorRef, list[Subscription]] = {}
        #: node id -> [(pattern, queue or "", count)]
        self.remote_interest: dict[str, list[tuple[str, str, int]]] = {}
        self._rr = itertools.count()
        self._acked = AckedDelivery(self, self._rr)
        self._watcher: ActorRef | None = None
        self._deliverer: ActorRef | None = None
        #: Messages dropped by slow-subscriber policies (and subscriptions dropped).
        self.dropped = 0
        #: Messages from other nodes waiting for a full "block" subscriber (see .backlog).
        self.held = Held(self.node, self.codec, self._subscribed)
        #: Holds other nodes asked of our publishes to them (their slow "block" subscribers).
        self.holds = Holds(self.codec)
        remote = self.node.remote
        remote.system_handlers["pubsub.msg"] = self._on_msg
        remote.system_handlers["pubsub.batch"] = self._on_batch
        remote.system_handlers["pubsub.interest"] = self._on_interest
        remote.system_handlers["pubsub.hold"] = self.holds.on_hold
        remote.system_handlers["pubsub.release"] = self.holds.on_release
        remote.on_peer_up.append(self._peer_up)
        self._interest_version = 0
        self._interest_event = trio.Event()
        self._valid_subjects: set[str] = set()
        #: node id -> (epoch, version) of the last interest list applied; the epoch is random per
        #: run, so a restarted peer's versions starting over are not mistaken for old ones.
        self._peer_versions: dict[str, tuple[int, int]] = {}
        self._epoch = random.SystemRandom().getrandbits(62)
        self._groups = 0  # local queue-group subscriptions
        #: topic -> _Route; cleared whenever interest, links or the auth rules change.
        self._routes: dict[str, _Route] = {}
        if cluster.auth is not None:
            cluster.auth.on_apply.append(self._routes.clear)
        #: Set once a node without rules of its own has fetched the cluster's (see check_publish).
        self._rules_fetched: trio.Event | None = None

    async def start(self) -> None:
        self._watcher = await self.node.spawn(_Watcher, self, name="trimicro-pubsub-watch")
        self._deliverer = await self.node.spawn(Deliverer, self._acked, name="trimicro-pubsub")
        if self.cluster.membership is not None:
            self.cluster.membership.listeners.append(self._member_event)

    async def close(self) -> None:
        """Nothing to release: the topic actors and the links stop with the node."""
        await trio.lowlevel.checkpoint()

    # ---- subscribing -----------------------------------------------------------------------------

    async def subscribe(
        self, pattern: str, ref: ActorRef, *, queue: str | None = None, policy: Policy = "block"
    ) -> Subscription:
        """Deliver messages published on subjects matching ``pattern`` to the actor ``ref``.

        The actor handles :class:`Message` (a handler annotated with it). With ``queue``, each
        message goes to one member of the group across the cluster.
        """
        validate_pattern(pattern)
        if policy not in ("block", "drop_oldest", "drop_subscriber"):
            raise BadRequest(f"unknown slow-subscriber policy {policy!r}")
        cell = ref.binding
        if not isinstance(cell, Cell) or cell.node is not self.node:
            raise BadRequest("subscribe a local actor (subscribe on the node where it runs)")
        sub = Subscription(pattern, ref, queue, policy)
        watched = bool(self._by_actor.get(ref)) or self._watcher is None
        if not watched:  # first: a refusal (429, the actor's watchers full) leaves nothing behind
            cell.add_watcher(self._watcher)  # type: ignore[arg-type]
        try:
            self.index.add(pattern, sub, queue)
        except BaseException:
            if not watched:
                cell.remove_watcher(self._watcher)  # type: ignore[arg-type]
            raise
        if queue:
            self._groups += 1
        self._by_actor.setdefault(ref, []).append(sub)
        self._interest_changed()
        await trio.lowlevel.checkpoint()
        return sub

    @property
    def _has_groups(self) -> bool:
        return self._groups > 0

    def unsubscribe(self, sub: Subscription) -> None:
        if self.index.remove(sub.pattern, sub, sub.queue):
            if sub.queue:
                self._groups -= 1
            subs = self._by_actor.get(sub.ref, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._by_actor.pop(sub.ref, None)
            self._interest_changed()

    def _subscribed(self, sub: Subscription) -> bool:
        return sub in self._by_actor.get(sub.ref, ())

    def _actor_gone(self, ref: ActorRef) -> None:
        for sub in self._by_actor.pop(ref, []):
            if self.index.remove(sub.pattern, sub, sub.queue) and sub.queue:
                self._groups -= 1
        self._interest_changed()

    # ---- interest --------------------------------------------------------------------------------

    def local_interest(self) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        for subs in self._by_actor.values():
            for sub in subs:
                key = (sub.pattern, sub.queue or "")
                counts[key] = counts.get(key, 0) + 1
        return [(p, q, n) for (p, q), n in sorted(counts.items())]

    def _interest_body(self) -> bytes:
        self._interest_version += 1
        subs = [list(e) for e in self.local_interest()]
        return self.codec.encode({"e": self._epoch, "v": self._interest_version, "subs": subs})

    def _interest_changed(self) -> None:
        self._routes.clear()
        membership = self.cluster.membership
        if membership is None:
            return
        for member in membership.swim.alive_members():
            if member.id != self.node.id:
                self._tell_interest(member.id)

    def _tell_interest(self, node_id: str) -> None:
        """Send our interest to ``node_id`` now, or once a link to it is up (on_peer_up)."""
        peer = self.node.remote.peer(node_id)
        if peer.link is not None:
            peer.send_system("pubsub.interest", self._interest_body())
        else:
            peer.connect_soon()  # _peer_up sends it when the link is there

    def _peer_up(self, peer: Peer) -> None:
        self._routes.clear()
        peer.send_system("pubsub.interest", self._interest_body())

    def _member_event(self, event: MemberEventView) -> None:
        if event.kind in ("joined", "alive"):
            self._tell_interest(event.member.id)
        elif event.kind in ("dead", "left") and self.remote_interest.pop(event.member.id, None) is not None:
            self._routes.clear()
            self._peer_versions.pop(event.member.id, None)
            self._interest_event.set()
            self._interest_event = trio.Event()

    def _on_interest(self, link: Link, env: Envelope) -> None:
        try:
            data = self.codec.decode(env.body)
            epoch, version = data["e"], data["v"]
            if type(version) is not int or type(epoch) is not int:
                raise BadRequest("bad interest version")
            known = self._peer_versions.get(link.peer.node_id)
            if known is not None and known[0] == epoch and version <= known[1]:
                return  # an older list that overtook a newer one (two links for a moment)
            subs = data["subs"]
            if not isinstance(subs, list) or len(subs) > MAX_REMOTE_INTEREST:
                raise BadRequest("bad interest list")
            entries: list[tuple[str, str, int]] = []
            for entry in subs:
                pattern, queue, count = entry
                validate_pattern(pattern)
                if not isinstance(queue, str) or not isinstance(count, int) or count < 1:
                    raise BadRequest("bad interest entry")
                entries.append((pattern, queue, count))
        except (MicroError, ValueError, TypeError, KeyError) as exc:
            log.debug("bad pubsub interest from %s: %s", link.peer.node_id, exc)
            return
        self.remote_interest[link.peer.node_id] = entries
        self._routes.clear()
        self._peer_versions[link.peer.node_id] = (epoch, version)
        self._interest_event.set()
        self._interest_event = trio.Event()

    def may_receive(self, node_id: str, topic: str) -> bool:
        """Whether node ``node_id`` may subscribe to ``topic`` (checked per message, so a
        wildcard subscription gets only what the rules allow, and rule changes apply at once)."""
        guard = self.cluster.auth
        if guard is None:
            return True
        link = self.node.remote.peer(node_id).link
        if link is None:
            return True  # nothing is sent without a link anyway
        try:
            guard.admit_topic(link, None, topic, "subscribe")
        except MicroError:
            return False
        return True

    async def wait_interest(self) -> None:
        """Return at the next change of a peer's interest (for tools and tests)."""
        await self._interest_event.wait()

    # ---- publishing ------------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        body: Any,
        *,
        headers: dict[str, str] | None = None,
        ack: bool = False,
        ack_timeout: float = 5.0,
        max_deliveries: int = 5,
    ) -> int:
        """Publish ``body`` on ``topic``; returns the number of deliveries made (or acked)."""
        if topic not in self._valid_subjects:
            self._validate(topic)
        headers = forward_auth(headers)
        token = None
        if headers:
            headers = dict(headers)
            token = headers.pop(AUTHORIZATION, None)  # proves who publishes; never shown to subscribers
        if ack:
            acked = Message(topic, body, headers or {}, self.node.id)
            return await self._acked.publish(acked, ack_timeout, max_deliveries, token)
        route = self._routes.get(topic)
        if route is None or route.until < time.monotonic():
            route = self._route(topic)
        if route.check and token not in route.allowed:
            await self.check_publish(topic, token)  # 401/403 before anything is delivered
            if len(route.allowed) < MAX_ROUTE_SENDERS:
                route.allowed.add(token)
        delivered = 0
        message: Message | None = None
        if route.local:
            message = Message(topic, body, headers or {}, self.node.id)
            delivered = await self._deliver_local(message, plain=True, groups=_NO_GROUPS)
        elif self.node.spend():  # the same yield budget as local deliveries and tells
            await trio.lowlevel.cancel_shielded_checkpoint()
        if not route.plain_nodes and not route.groups:
            return delivered
        groups_here: set[str] = set()
        targets: dict[str, list[str]] = {}  # node id -> queue groups to serve there
        rng = self.cluster.rng
        for group, (nodes, cumulative, total) in route.groups.items():
            node_id = nodes[bisect.bisect_right(cumulative, rng.random() * total)]
            if node_id == self.node.id:
                groups_here.add(group)
            else:
                targets.setdefault(node_id, []).append(group)
        if groups_here:
            if message is None:
                message = Message(topic, body, headers or {}, self.node.id)
            delivered += await self._deliver_local(message, plain=False, groups=groups_here)
        wire_headers = (headers or {}) if token is None else {**(headers or {}), AUTHORIZATION: token}
        for node_id in route.plain_nodes:
            delivered += await self._post(
                node_id, [topic, body, wire_headers, True, targets.pop(node_id, ())]
            )
        for node_id, groups in targets.items():
            delivered += await self._post(node_id, [topic, body, wire_headers, False, groups])
        return delivered

    async def check_publish(self, topic: str, token: str | None) -> None:
        """Raise the 401/403 the receiving nodes would answer, were there an answer: the
        publisher's right to publish ``topic``, by the rules this node holds.

        A node that follows no auth service (``auth_refresh=None``, as the CLI's one-shot
        nodes) and was given no rules fetches the cluster's once, first: it would otherwise
        judge by the defaults, and receivers would drop what it was told it may send.
        """
        guard = self.cluster.auth
        if guard is None:  # no auth on this node: nothing to check (routes do not ask then)
            return
        fetched = self._rules_fetched
        if fetched is None and self.cluster.auth_sync is None and not guard.version:
            fetched = self._rules_fetched = trio.Event()
            try:
                await self.cluster.fetch_auth_state(timeout=self.node.ask_timeout)
            finally:
                fetched.set()
        elif fetched is not None and not fetched.is_set():
            await fetched.wait()  # another publish is fetching them: judge by the same rules
        guard.admit_sent_topic(token, topic, "publish")

    async def _post(self, node_id: str, entry: list[Any]) -> int:
        """Send one message to ``node_id``: appended to the link's open ``pubsub.batch`` frame,
        so a burst of publishes leaves as a few envelopes, in order with everything else sent
        on the link. 0 (not sent) without a link; waits while the link's queue is full."""
        remote = self.node.remote
        peer = remote.peers.get(node_id) or remote.peer(node_id)
        link = peer.link
        if link is None:
            peer.connect_soon()
            return 0
        if link.out_bytes >= OUT_HIGH_WATER:
            await link.wait_room()  # backpressure: the peer is slower than this publisher
        held = self.holds.by_link
        if held and link in held:  # a "block" subscriber there is slow (see .backlog)
            await self.holds.wait(link, entry[0])
        data = self.codec.encode(entry)
        if self.codec.content_type == MSGPACK and link.coalesce("pubsub.batch", data):
            return 1
        payload = dict(zip("tbhpq", entry, strict=True))  # another codec, or too big to batch
        return 1 if peer.send_system("pubsub.msg", self.codec.encode(payload)) else 0

    def _route(self, topic: str) -> _Route:
        """Work out (and cache) where ``topic`` goes; see :class:`_Route`."""
        match = self.index.match_view(topic)
        plain_nodes: list[str] = []
        weights: dict[str, dict[str, int]] = {}
        for group, members in match.groups.items():
            if members:
                weights.setdefault(group, {})[self.node.id] = len(members)
        for node_id, entries in self.remote_interest.items():
            if not self.may_receive(node_id, topic):
                continue
            for pattern, queue, count in entries:
                if matches(pattern, topic):
                    if not queue:
                        if node_id not in plain_nodes:
                            plain_nodes.append(node_id)
                    else:
                        slot = weights.setdefault(queue, {})
                        slot[node_id] = slot.get(node_id, 0) + count
        groups: dict[str, tuple[list[str], list[int], int]] = {}
        for group, nodes in weights.items():
            ordered = sorted(nodes)
            cumulative = list(itertools.accumulate(nodes[n] for n in ordered))
            groups[group] = (ordered, cumulative, cumulative[-1])
        leaves = bool(plain_nodes) or any(n != self.node.id for nodes, _, _ in groups.values() for n in nodes)
        check = leaves and self.cluster.auth is not None
        route = _Route(bool(match.plain), tuple(sorted(plain_nodes)), groups, time.monotonic() + 1.0, check)
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        self._routes[topic] = route
        return route

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
        return delivered

    async def _offer(self, sub: Subscription, message: Message, link: Link | None = None) -> int:
        cell = sub.ref.binding
        if not isinstance(cell, Cell):
            return 0
        item: Mail = (message, None, None, None, message.headers or None, None)
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
            if old is not None:
                dropped, _reply, _sender, _endpoint, _headers, _principal = old
            else:
                dropped = message
            self.node.dead_letter(sub.ref, dropped, "dropped-oldest", None)
            return 1 if cell.offer(item) == OK else 0
        self.node.dead_letter(sub.ref, message, "dropped-subscriber", None)
        self.unsubscribe(sub)
        return 0

    async def _hold(self, link: Link, sub: Subscription, cell: Cell, item: Mail) -> int:
        """Queue a message from ``link`` for a full "block" subscriber (see .backlog); waits only
        while the link's backlogs are past their budget."""
        message: Message
        message, _reply, _sender, _endpoint, _headers, _principal = item
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
                    messages.append((Message(topic, row[1], {}, publisher), True, _NO_GROUPS))
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

    # ---- handler subscriptions (no actor of one's own) -----------------------------------------

    @asynccontextmanager
    async def messages(
        self, pattern: str, *, queue: str | None = None, buffer: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Message]]:
        """Subscribe for the duration of the block; yields a channel of :class:`Message`."""
        send, receive = trio.open_memory_channel[Message](buffer)
        ref = await self.node.spawn(_Forwarder, send)
        sub = await self.subscribe(pattern, ref, queue=queue)
        try:
            async with receive:
                yield receive
        finally:
            self.unsubscribe(sub)
            with trio.CancelScope(shield=True):
                await self.node.stop(ref)


class _Forwarder(Actor):
    """Feeds a subscription into a memory channel (for ``PubSub.messages``)."""

    def __init__(self, send: trio.MemorySendChannel[Message]) -> None:
        self.send = send

    async def on_message(self, msg: Message) -> None:
        await self.send.send(msg)


def _is_published(item: Mail) -> bool:
    """Whether a queued item is a published message (what ``drop_oldest`` may drop)."""
    msg, _reply, _sender, _endpoint, _headers, _principal = item
    return isinstance(msg, Message)


def _offer_now(subs: Sequence[Subscription], message: Message) -> tuple[int, list[Subscription] | None]:
    """Queue ``message`` for every subscription whose mailbox takes it now (a deque append);
    the count, and the subscriptions that need :meth:`PubSub._offer` (full, or not local)."""
    item: Mail = (message, None, None, None, message.headers or None, None)
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
