"""Busy polling while a lone request awaits its reply (and, on the serving side, after answering
the only request in flight, while the caller's next request is due): the node keeps checking for
I/O instead of sleeping in the kernel, for a short, bounded time.

Why: a round trip between two processes is mostly waiting, and on virtual machines (and on
idle cores) a process that sleeps in ``epoll_wait`` takes a long time to wake when the reply
lands: measured here, half of a loopback round trip. While one request is in flight, a task
of this module keeps the trio run busy with checkpoints (each one polls for I/O without
blocking), so the reply is picked up as soon as it arrives.

The same trade is made by Akka's Artery remoting (``idle-cpu-level``), by Go's scheduler
(spinning threads poll the network before parking) and by Linux's ``busy_poll``: CPU time for
latency. It is bounded three ways: only while a request is the only one in flight on its link
(with more in flight, replies keep the run busy anyway); for at most ``budget`` seconds per
request; and only toward peers whose polled-for replies usually come back within a few budgets
(a slow service is not polled for, except one request in PROBE_EVERY, to notice a change).
The serving side (``Link.answered``) polls with :meth:`BusyPoller.poll_briefly`, which ends by
itself after one budget (nothing to pair with it, so nothing to leak when a link closes), and
only for peers whose next request came within one budget of the answer to their previous lone
request on average (measured at each such answer, polled or not, so it needs no probe).
``start_node(busy_poll=0)`` turns it off.
"""

from __future__ import annotations

import time

import trio
from trio.lowlevel import ParkingLot

__all__ = ["DEFAULT_BUSY_POLL", "PROBE_EVERY", "BusyPoller"]

#: Seconds a node polls for the reply of a lone request before it sleeps until the reply comes.
DEFAULT_BUSY_POLL = 200e-6

#: Poll only for peers whose recent polled-for replies (moving average) came within this many
#: budgets: replies that come later (a slow service, or a machine so busy that the peer waits
#: for a CPU) would be slept for anyway, and the polling would burn CPU the peer may need.
POLL_WITHIN = 3.0

#: Every this many lone requests to a peer polled for anyway, to notice it got fast again.
PROBE_EVERY = 16

_clock = time.perf_counter


class BusyPoller:
    """One per node. Callers use :meth:`begin` and :meth:`end` around a wait; :meth:`run` is the
    polling task (started by the first :meth:`begin`, parked while nobody waits)."""

    def __init__(self, nursery: trio.Nursery, budget: float) -> None:
        if budget < 0:
            raise ValueError(f"busy_poll must be >= 0 seconds, not {budget}")
        self.budget = budget
        #: Polling pays off for replies that come back within this (see POLL_WITHIN).
        self.worth_below = budget * POLL_WITHIN
        self._nursery = nursery
        self._lot = ParkingLot()
        self._until = 0.0
        self._briefly_until = 0.0
        self._waiting = 0
        self._started = False
        #: Checkpoints taken while polling (for tests and benchmarks).
        self.polls = 0

    def worth(self, poll_time: float) -> bool:
        """Whether to poll for a peer whose polled-for replies take ``poll_time`` seconds on
        average."""
        return poll_time < self.worth_below

    def begin(self) -> None:
        """A lone request just left: poll for up to ``budget`` seconds, or until :meth:`end`."""
        self._until = _clock() + self.budget
        self._waiting += 1
        self._wake()

    def poll_briefly(self) -> None:
        """Poll for up to ``budget`` seconds from now, then stop by itself (the serving side:
        a caller's next request is due)."""
        self._briefly_until = _clock() + self.budget
        self._wake()

    def _wake(self) -> None:
        if self._lot:
            self._lot.unpark()
        elif not self._started:
            try:
                self._nursery.start_soon(self.run, name="trimicro-busy-poll")
            except RuntimeError:  # the node is stopping: its nursery takes no new task
                return
            self._started = True

    def end(self) -> None:
        """The request's wait is over (answered, failed or cancelled)."""
        self._waiting -= 1

    async def run(self) -> None:
        checkpoint = trio.lowlevel.checkpoint
        while True:
            while True:
                now = _clock()
                if not ((self._waiting and now < self._until) or now < self._briefly_until):
                    break
                self.polls += 1
                await checkpoint()  # a scheduler pass: polls for I/O without blocking
            await self._lot.park()
