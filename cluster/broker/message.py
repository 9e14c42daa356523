"""What the broker carries: :class:`Message` (what a subscriber receives) and
:class:`Subscription` (one actor on one pattern, with its slow-subscriber :data:`Policy`)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

from trimicro.actors import ActorRef
from trimicro.actors.lowlevel import Kind

__all__ = ["DEAD_LETTER_PREFIX", "Message", "Policy", "Subscription"]

Policy = Literal["block", "drop_oldest", "drop_subscriber"]
#: Where a message goes that no subscriber acknowledged (``$dead.<topic>``).
DEAD_LETTER_PREFIX = "$dead."


@attrs.frozen
class Message:
    """What a subscriber receives: the topic it was published on, the body, headers, publisher."""

    topic: str
    body: Any
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    publisher: str = ""
    delivery: int = 1
    """1 for the first delivery; higher when redelivered in acknowledged mode."""
    #: Subscribers' server middleware sees a delivery as a ``subscribe`` call on ``topic``.
    __trimicro_kind__: ClassVar[Kind] = Kind.SUBSCRIBE


@attrs.frozen(eq=False)
class Subscription:
    """One actor subscribed to one pattern (optionally in a queue group)."""

    pattern: str
    ref: ActorRef
    queue: str | None = None
    policy: Policy = "block"
