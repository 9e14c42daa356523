"""Supervision policy as values: strategies, restart types, intensity, backoff, child specs.

Semantics (see docs/architecture.md):

* A child that raises anything but a :class:`~trimicro.mailbox.errors.MicroError` *fails*. Its
  supervisor applies its :class:`Strategy`: ``ONE_FOR_ONE`` restarts just that child,
  ``ONE_FOR_ALL`` stops every child (reverse start order) and restarts them all (start order),
  ``REST_FOR_ONE`` does the same for the failed child and those started after it.
* ``Restart`` says whether a child is restarted: ``TRANSIENT`` (the default) after a failure,
  ``PERMANENT`` after a failure *and* after it stops itself (``context.stop()``), ``TEMPORARY``
  never. A stop ordered from outside (its parent, ``node.stop``, shutdown) never restarts.
* Restart intensity: more than ``max_restarts`` restarts within ``within`` seconds and the
  supervisor gives up: it stops all its children and fails itself, escalating to its own
  supervisor. Our default is 10 restarts in 30 s: Erlang's 1 in 5 s turns one flapping
  dependency into a cascade, while 10 in 30 s still stops a tight crash loop within seconds.
* A restart keeps the actor's ref and mailbox (like Akka): callers never see a new address.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from trimicro.mailbox.mailboxes import MailboxSpec

__all__ = [
    "Backoff",
    "ChildSpec",
    "Restart",
    "RestartIntensity",
    "Strategy",
    "SupervisorStrategy",
]


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@attrs.frozen
class Backoff:
    """Exponential backoff with jitter between consecutive restarts of one supervisor's children.

    The n-th restart in a row waits ``min(max, min_delay * factor**(n-1))``, spread by
    ``±jitter`` (a fraction) so that many supervisors do not restart in lockstep.
    """

    min_delay: float = 0.1
    max_delay: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_delay, self.min_delay * self.factor ** max(0, attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + rng.uniform(-spread, spread))


@attrs.frozen
class SupervisorStrategy:
    """How a supervisor treats its children's failures."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 10
    within: float = 30.0
    backoff: Backoff | None = None


class RestartIntensity:
    """Sliding-window restart counter: ``record`` says whether one more restart is allowed."""

    def __init__(self, max_restarts: int, within: float) -> None:
        self.max_restarts = max_restarts
        self.within = within
        self._times: deque[float] = deque()
        self.consecutive = 0

    def record(self, now: float) -> bool:
        times = self._times
        while times and now - times[0] > self.within:
            times.popleft()
        if not times:
            self.consecutive = 0
        times.append(now)
        self.consecutive += 1
        return len(times) <= self.max_restarts


@attrs.frozen
class ChildSpec:
    """How a supervisor starts (and restarts) one child.

    ``factory`` builds the actor instance (an :class:`~trimicro.actors.Actor` subclass, or any
    callable returning one) from ``args``/``kwargs``; ``shutdown`` is the deadline, in seconds,
    for the child's in-flight work and ``stopping`` hook when it is stopped.
    """

    factory: Callable[..., Any]
    name: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    restart: Restart = Restart.TRANSIENT
    shutdown: float = 5.0
    mailbox: MailboxSpec | None = None
