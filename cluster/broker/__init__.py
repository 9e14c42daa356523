"""Broker: the cluster's publish/subscribe, Go Micro's broker on the cluster's own links.

- :mod:`.topics`: subjects and patterns (``a.b.c``, ``*`` one token, ``>`` the rest) and the
  index that matches a subject against many subscriptions (sans-I/O);
- :mod:`.pubsub`: :class:`PubSub`, the default broker: per-node topic actors, queue groups,
  interest spread to peers, dead letters, and the sender-side auth check of each publish.

The cluster wiring (:func:`trimicro.cluster.start_cluster`) starts one :class:`PubSub` per node
(``cluster.pubsub``).
"""

from .pubsub import DEAD_LETTER_PREFIX, Message, Policy, PubSub, Subscription
from .topics import InvalidSubject, matches, validate_pattern, validate_subject

__all__ = [
    "DEAD_LETTER_PREFIX",
    "InvalidSubject",
    "Message",
    "Policy",
    "PubSub",
    "Subscription",
    "matches",
    "validate_pattern",
    "validate_subject",
]
