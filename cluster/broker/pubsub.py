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

Subscriptions die with their actor (death watch). This module holds the subscribe and publish
paths; the interest kept with peers is in :mod:`.interest`, delivery to local subscribers and
the messages peers send in :mod:`.delivery` (both mixins of :class:`PubSub`), a topic's cached
route in :mod:`.route`. Acknowledged mode is in :mod:`.acked`, the message types in
:mod:`.message`, and what the broker needs of its node in :mod:`.host`.
"""

from __future__ import annotations

import bisect
import itertools
import random
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from trimicro.actors import Actor, ActorRef, Middleware, Terminated
from trimicro.actors.lowlevel import AUTHORIZATION, OUT_HIGH_WATER, Cell, forward_auth
from trimicro.mailbox.codec import MSGPACK
from trimicro.mailbox.errors import BadRequest

from .acked import AckedDelivery, Deliverer
from .backlog import Held, Holds
from .delivery import NO_GROUPS, Delivery
from .forward import forwarded
from .host import Host, TopicGuard
from .interest import Interest
from .message import DEAD_LETTER_PREFIX, Message, Policy, Subscription
from .route import MAX_ROUTE_SENDERS, MAX_ROUTES, Route
from .through import publish_through, runs_chain
from .topics import SubscriptionIndex, matches, validate_pattern

__all__ = ["DEAD_LETTER_PREFIX", "Host", "Message", "Policy", "PubSub", "Subscription", "TopicGuard"]


class _Watcher(Actor):
    """Watches subscriber actors so that their subscriptions die with them."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub

    async def on_terminated(self, msg: Terminated) -> None:
        self.pubsub._actor_gone(msg.ref)


class PubSub(Interest, Delivery):
    """A cluster node's pub/sub: local index, peers' interest (:class:`.interest.Interest`),
    publish, subscribe, and delivery to subscribers (:class:`.delivery.Delivery`)."""

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
        #: Messages handed to this node's subscribers, and acknowledged deliveries this node
        #: made again (a nack or a missed ack deadline).
        self.delivered = 0
        self.redelivered = 0
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
        #: topic -> Route; cleared whenever interest, links or the auth rules change.
        self._routes: dict[str, Route] = {}
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
        middleware: Sequence[Middleware] | None = None,
    ) -> int:
        """Publish ``body`` on ``topic``; returns the number of deliveries made (or acked).

        ``middleware`` (and the node's) runs around the publish, as client middleware of kind
        ``publish`` whose target is the topic (see :mod:`trimicro.actors.middleware`);
        subscribers' server middleware sees each delivery as a ``subscribe`` call.
        """
        if runs_chain(self.node, middleware):
            options = {"ack": ack, "ack_timeout": ack_timeout, "max_deliveries": max_deliveries}
            return await publish_through(self, middleware, topic, body, headers, options)
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
            delivered = await self._deliver_local(message, plain=True, groups=NO_GROUPS)
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

    def _route(self, topic: str) -> Route:
        """Work out (and cache) where ``topic`` goes; see :class:`Route`."""
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
        route = Route(bool(match.plain), tuple(sorted(plain_nodes)), groups, time.monotonic() + 1.0, check)
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        self._routes[topic] = route
        return route

    # ---- handler subscriptions (no actor of one's own) -----------------------------------------

    def messages(
        self, pattern: str, *, queue: str | None = None, buffer: int = 1000
    ) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Message]]:
        """Subscribe for the duration of the block; yields a channel of :class:`Message`."""
        return forwarded(self, pattern, queue=queue, buffer=buffer)
