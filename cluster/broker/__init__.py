"""Broker: the cluster's publish/subscribe, Go Micro's broker on the cluster's own links.

- :class:`Broker`: the interface (a Protocol), Go Micro's ``broker.Broker`` adapted to what the
  cluster's pub/sub offers: ``start`` (Go Micro's ``Connect``), ``publish`` (with acknowledged
  mode: ``ack=True``), ``subscribe`` a local actor (with a queue group: ``queue=``),
  ``unsubscribe``, and ``close`` (``Disconnect``);
- :mod:`.topics`: subjects and patterns (``a.b.c``, ``*`` one token, ``>`` the rest) and the
  index that matches a subject against many subscriptions (sans-I/O);
- :mod:`.pubsub`: :class:`PubSub`, the default broker: per-node topic actors, queue groups,
  interest spread to peers, dead letters, and the sender-side auth check of each publish;
  :mod:`.interest` (what each node subscribes to, told to peers), :mod:`.delivery` (the subscriber
  side: local delivery and messages from peers) and :mod:`.route` (a topic's cached route) are
  its parts; :mod:`.acked` its acknowledged mode, :mod:`.message` what it carries (:class:`Message`,
  :class:`Subscription`), :mod:`.host` what it needs of its node (:class:`Host`, with the
  auth checks on topics as :class:`TopicGuard`), which the cluster wiring satisfies.
- :mod:`.nats` (``nats://``): the broker on a NATS server, core subjects and JetStream for the
  acknowledged mode (:mod:`.nats_acked`); imported only when chosen (it needs nats-py).

The cluster wiring (:func:`trimicro.cluster.start_cluster`) builds one broker per node
(``cluster.pubsub``), once at start: ``broker=`` an instance, a factory taking the
:class:`~trimicro.cluster.Cluster`, or a URL of the ``trimicro.broker`` entry-point group
(``cluster://``, also ``default://``: :class:`PubSub`), else ``$TRIMICRO_BROKER``. It calls
``start`` before the node announces itself and ``close`` when the node stops.

**The interface's contract** (what :class:`~trimicro.testing.conformance.BrokerConformance`
checks): ``publish(topic, body, headers=, ack=, ack_timeout=, max_deliveries=, middleware=)``
delivers to every matching subscriber, on this node and others, exactly once in publish order
per publisher (at most once by default; ``ack=True``: at least once, a nack or a missed
``ack_timeout`` redelivered, to another queue-group member when there is one, after
``max_deliveries`` published on ``$dead.<topic>``); it returns the number of deliveries made,
raises :class:`~trimicro.mailbox.errors.BadRequest` for a bad subject and the 401/403 of the
auth rules before delivering anything. ``subscribe(pattern, ref, queue=, policy=)`` subscribes
a *local* actor (400 otherwise, or for an unknown policy): ``*`` matches one token, ``>`` the
rest; a queue group gets each message once across its members; the slow-subscriber
``policy`` is ``"block"``, ``"drop_oldest"`` or ``"drop_subscriber"``. A subscription ends with
``unsubscribe`` (idempotent), with its policy's drop, and when its actor stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from trimicro.actors import ActorRef, Middleware

from .host import Host, TopicGuard
from .message import DEAD_LETTER_PREFIX, Message, Policy, Subscription
from .pubsub import PubSub
from .topics import InvalidSubject, matches, validate_pattern, validate_subject

__all__ = [
    "DEAD_LETTER_PREFIX",
    "Broker",
    "Host",
    "InvalidSubject",
    "Message",
    "Policy",
    "PubSub",
    "Subscription",
    "TopicGuard",
    "matches",
    "validate_pattern",
    "validate_subject",
]


@runtime_checkable
class Broker(Protocol):
    """Publish and subscribe across the cluster (Go Micro's ``broker.Broker``).

    A subscriber is a local actor that handles :class:`Message`. ``publish`` returns the number
    of deliveries made (acknowledged ones with ``ack=True``: at least once, redelivered up to
    ``max_deliveries`` times, then dead-lettered on ``$dead.<topic>``); a bad subject is a
    400, a publish the auth rules refuse a 401/403 before anything is delivered.
    """

    async def start(self) -> None:
        """Connect: called once by ``start_cluster`` before the node announces itself."""
        ...

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
    ) -> int: ...

    async def subscribe(
        self, pattern: str, ref: ActorRef, *, queue: str | None = None, policy: Policy = "block"
    ) -> Subscription: ...

    def unsubscribe(self, sub: Subscription) -> None: ...

    async def close(self) -> None:
        """Disconnect: called once by ``start_cluster`` when the node stops."""
        ...
