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

Polling only pays while a core would otherwise be idle: on a shared machine the spinning process
holds a core the peer (or anything else) needs to produce the awaited message, which then comes
after the spin, not during it. So a :class:`PollGate` watches what the polls achieve: each one
either found its message within the budget (a hit) or not (a miss, whatever the cause: no free
core, a slow handler). When fewer than half of the last POLL_WINDOW polls hit, polling pauses,
for PAUSE_MIN seconds at first, doubling up to PAUSE_MAX while the probes after each pause keep
missing. Hits alone miss one case: a spin whose message does come in time, but on a machine with
no idle core, where the spin's CPU is taken from another process (the peer, if it runs there, or
another tenant). So the gate also samples the machine (``/proc/stat``, at most every LOAD_EVERY
seconds, read when a poll is about to start) and polls only while the other processes leave at
least FREE_CORES of a core idle (this process's own CPU, spin included, is not counted as load).
These two were chosen over the process's run-queue delay (``/proc/self/schedstat``) and its
involuntary context switches (``getrusage``) by measurement (docs/performance.md, "Remote calls
on a shared machine"): those did not tell an idle machine from a busy one, nor polling from not
polling, while a poll's outcome is the quantity that matters and costs nothing to observe. Under
a CPU quota (cgroup ``cpu.max``, or ``cpu.cfs_quota_us``) or with one CPU, the node never spins:
a spin there is always paid for by the process itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio
from trio.lowlevel import ParkingLot

__all__ = [
    "DEFAULT_BUSY_POLL",
    "PROBE_EVERY",
    "BusyPoller",
    "PollGate",
    "load_sample",
    "others_cores",
    "spin_allowed",
]

#: Seconds a node polls for the reply of a lone request before it sleeps until the reply comes.
DEFAULT_BUSY_POLL = 200e-6

#: Poll only for peers whose recent polled-for replies (moving average) came within this many
#: budgets: replies that come later (a slow service, or a machine so busy that the peer waits
#: for a CPU) would be slept for anyway, and the polling would burn CPU the peer may need.
POLL_WITHIN = 3.0

#: Every this many lone requests to a peer polled for anyway, to notice it got fast again.
PROBE_EVERY = 16

#: Polls judged together: when fewer than half of them found their message within the budget,
#: polling pauses.
POLL_WINDOW = 8

#: Poll only while the machine's other processes leave at least this much of a core idle, and
#: sample the machine at most this often (seconds).
FREE_CORES = 0.75
LOAD_EVERY = 0.1

#: A reply handled this long after the budget ran out still came while polling (its caller's
#: task runs a scheduler pass after the reader's).
HIT_SLACK = 50e-6

#: The first pause (seconds), doubled after each pause whose probes still missed, up to PAUSE_MAX.
PAUSE_MIN = 0.05
PAUSE_MAX = 2.0

_clock = time.perf_counter


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def spin_allowed(cgroup_root: str = "/sys/fs/cgroup", proc_self: str = "/proc/self") -> tuple[bool, str]:
    """Whether this process may busy-poll at all, and why not: never with one CPU, nor under a
    CPU quota (every spin is charged to the quota, so the time is taken from the process's own
    work). cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us``), the process's group and its
    ancestors."""
    if _cpus() < 2:
        return False, "one CPU"
    try:
        lines = Path(proc_self, "cgroup").read_text().splitlines()
    except OSError:
        return True, ""
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        names = controllers.split(",")
        if controllers == "":  # v2: "0::/path"
            mounts, file = [Path(cgroup_root), Path(cgroup_root, "unified")], "cpu.max"
        elif "cpu" in names:  # v1, mounted as "cpu" or together with cpuacct
            mounts = [Path(cgroup_root, m) for m in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
            file = "cpu.cfs_quota_us"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for mount in mounts:
            for depth in range(len(parts), -1, -1):  # the group, then each ancestor
                try:
                    quota = Path(mount, *parts[:depth], file).read_text().split()
                except OSError:
                    continue
                if quota and quota[0] not in ("max", "-1"):
                    return False, f"CPU quota ({file} {quota[0]})"
    return True, ""


#: One sample of the machine for the load check: (busy and total clock ticks of all CPUs from
#: ``/proc/stat``, this process's CPU seconds, the wall clock).
LoadSample = tuple[int, int, float, float]


def others_cores(before: LoadSample, after: LoadSample, cpus: int) -> float:
    """Cores the machine's other processes kept busy between two samples (this process's own
    CPU time taken out)."""
    busy = after[0] - before[0]
    total = after[1] - before[1]
    wall = after[3] - before[3]
    if total <= 0 or wall <= 0:
        return 0.0
    return max(0.0, busy / total * cpus - (after[2] - before[2]) / wall)


def load_sample(proc_stat: str = "/proc/stat") -> LoadSample | None:
    """A :data:`LoadSample` now; None where ``/proc/stat`` cannot be read (then load is not
    checked)."""
    try:
        with open(proc_stat, "rb") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(ticks) < 4:
        return None
    total = sum(ticks)
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return total - idle, total, time.process_time(), _clock()


class PollGate:
    """Whether polling pays, judged from what recent polls achieved (sans I/O: the caller gives
    the time). See the module doc."""

    __slots__ = ("_hits", "_polls", "can_spin", "crowded", "pause", "paused_until", "why")

    def __init__(self, can_spin: bool = True, why: str = "") -> None:
        #: False: never spin (one CPU, a CPU quota: ``why``).
        self.can_spin = can_spin
        self.why = why
        #: Until when polling is paused, and the next pause's length.
        self.paused_until = 0.0
        self.pause = PAUSE_MIN
        #: The machine's other processes leave less than FREE_CORES of a core idle.
        self.crowded = False
        self._polls = 0
        self._hits = 0

    def open(self, now: float) -> bool:
        """Whether to poll now."""
        return self.can_spin and not self.crowded and now >= self.paused_until

    def note_load(self, others: float, cpus: int) -> None:
        """The machine's other processes kept ``others`` of its ``cpus`` cores busy lately."""
        self.crowded = cpus - others < FREE_CORES

    def record(self, hit: bool, now: float) -> None:
        """A poll ended: its message came within the budget (``hit``) or not."""
        self._polls += 1
        self._hits += hit
        if self._polls < POLL_WINDOW:
            return
        if self._hits * 2 < self._polls:  # polling does not pay: pause, longer each time
            self.paused_until = now + self.pause
            self.pause = min(self.pause * 2, PAUSE_MAX)
        else:
            self.pause = PAUSE_MIN
        self._polls = self._hits = 0


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
        #: Checkpoints taken while polling, and polls that found their message within the budget
        #: or not (for tests and benchmarks).
        self.polls = 0
        self.hits = 0
        self.misses = 0
        #: Whether polling pays now (see :class:`PollGate`), and the machine's load: cores its
        #: other processes kept busy at the last sample (read by benchmarks), and that sample.
        self.gate = PollGate(*spin_allowed())
        self.others = 0.0
        self._cpus = _cpus()
        self._load: LoadSample | None = None
        self._next_sample = 0.0
        #: Sample the machine's load (tests that need polling whatever the machine runs turn
        #: it off).
        self.load_check = True

    def worth(self, poll_time: float) -> bool:
        """Whether to poll for a peer whose polled-for replies take ``poll_time`` seconds on
        average."""
        return poll_time < self.worth_below

    def open(self) -> bool:
        """Whether polling pays now (:class:`PollGate`): ask before :meth:`begin`."""
        now = _clock()
        if now >= self._next_sample:
            self._sample(now)
        return self.gate.open(now)

    def _sample(self, now: float) -> None:
        """Check the machine's load (once per LOAD_EVERY at most, and only when about to poll)."""
        self._next_sample = now + LOAD_EVERY
        if not (self.gate.can_spin and self.load_check):
            return
        sample = load_sample()
        if sample is None:
            return
        if self._load is not None:
            self.others = others_cores(self._load, sample, self._cpus)
            self.gate.note_load(self.others, self._cpus)
        self._load = sample

    def begin(self) -> None:
        """A lone request just left: poll for up to ``budget`` seconds, or until :meth:`end`."""
        self._until = _clock() + self.budget
        self._waiting += 1
        self._wake()

    def poll_briefly(self) -> bool:
        """Poll for up to ``budget`` seconds from now, then stop by itself (the serving side:
        a caller's next request is due); False (no polling) while the gate is closed. The
        caller reports with :meth:`record` whether the request came within the budget."""
        now = _clock()
        if now >= self._next_sample:
            self._sample(now)
        if not self.gate.open(now):
            return False
        self._briefly_until = now + self.budget
        self._wake()
        return True

    def record(self, hit: bool) -> None:
        """A poll ended: what it waited for came within the budget (``hit``) or not."""
        if hit:
            self.hits += 1
        else:
            self.misses += 1
        self.gate.record(hit, _clock())

    def _wake(self) -> None:
        if self._lot:
            self._lot.unpark()
        elif not self._started:
            try:
                self._nursery.start_soon(self.run, name="trimicro-busy-poll")
            except RuntimeError:  # the node is stopping: its nursery takes no new task
                return
            self._started = True

    def end(self, sent_at: float) -> float:
        """The wait of the request sent at ``sent_at`` (a :func:`time.perf_counter` reading) is
        over (answered, failed or cancelled): how long it took, recorded as a hit or a miss."""
        self._waiting -= 1
        took = _clock() - sent_at
        self.record(took < self.budget + HIT_SLACK)
        return took

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
