"""``trimicro run --workers N``: one node process per core, supervised by the parent.

A node is one process, and its trio loop runs on one core. ``--workers N`` (``auto``: the cores
this process may use, see :func:`usable_cores`) makes ``run`` a supervisor instead: it starts N
ordinary ``trimicro run`` processes of the same module, each a member of the cluster with a node
id of its own (``NAME-1`` ... ``NAME-N``), so the selector spreads calls over them like over any
other nodes. The supervisor serves nothing and is no member.

**Worker identity.** Each worker proves its own node id in the handshake, so each needs a
certificate for it. In a home with the authority (the development setup) the supervisor creates
them before it starts any worker (``nodes/NAME-K/``); in a joined home (docs/hosts.md) each must
have been issued and installed (``trimicro cert issue NAME-1 NAME-2`` on the authority's host),
and the supervisor refuses to start, naming the missing ones, rather than start workers that
would fail one by one. Sharing one node id between processes would not do: a peer takes a new
run of a node id for a restart of that node and drops the links of the other one.

**Restarts** (OTP's "transient" children): a worker that crashes (non-zero exit, a signal such as
SIGKILL) is started again under the same node id after a backoff (0.5 s, doubling to 10 s; a
worker that ran 10 s starts over at 0.5 s), and each restart is logged. More than 5 restarts in
60 s across the workers means something is wrong that restarting does not cure: the supervisor
stops every worker and exits 1, so whatever supervises *it* (systemd, a container runtime) sees
the failure. A worker that exits 0 stopped on purpose (someone signalled it) and stays stopped.
A worker that fails with the usage status (2) before it is up (a bad module) stops all at once.

**Stopping.** SIGINT or SIGTERM to the supervisor closes each worker's *lifeline*, the pipe on
its stdin, and each worker then deregisters and stops as after its own SIGINT. The lifeline also
stops the workers if the supervisor dies without a word (SIGKILL): the kernel closes the pipe.
Workers run in sessions of their own, so a terminal's Ctrl-C reaches only the supervisor, which
is then the only one deciding. A worker still running 30 s after its lifeline closed is killed.
A worker is the leader of its own process group: once it has exited, whatever it started and
left behind in that group (a subprocess of the application) is killed with it, so neither a
stop nor a restart leaks processes. A worker is seen to exit when its process does, even if a
process it started still holds its stdout: what is left to read is forwarded for at most
:data:`DRAIN` seconds more.

**Options per worker.** ``--listen HOST:PORT`` with a fixed port gives worker K port
``PORT + K - 1`` (a port is one process's); port 0 stays 0. ``--store`` is served by worker 1
only, with the auth service: the store keeps a per-process cache, so one process serves it.
Every other option reaches every worker unchanged: a worker is started with the supervisor's
own command line plus ``--name NAME --worker K``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import uuid
from collections import deque
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs
import trio

from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.secure.identity import default_home, dev_identity, joined

from .common import UsageError, home_dir

__all__ = [
    "MAX_WORKERS",
    "RestartPolicy",
    "add_worker_options",
    "say",
    "supervise",
    "until_stopped",
    "usable_cores",
    "worker_count",
    "worker_listen",
]

log = logging.getLogger("trimicro.workers")

#: More processes than this on one host is a typo, not a plan.
MAX_WORKERS = 256
#: How long a worker may take to deregister and stop after its lifeline closed.
STOP_GRACE = 30.0
#: The exit status of a usage error (``trimicro.cluster.cli.EXIT_USAGE``).
EXIT_USAGE = 2
#: A worker's stdout line longer than this is forwarded in pieces (memory stays bounded).
MAX_LINE = 65536
#: Seconds a worker's output is still forwarded after its process exited (a process it left
#: behind may hold the pipe open; it is killed with the worker's process group).
DRAIN = 1.0


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """``--workers N|auto``, and the hidden ``--worker K`` a supervisor gives each worker."""
    p.add_argument(
        "--workers",
        type=worker_count,
        default=1,
        metavar="N",
        help="serve with N node processes, supervised by this one (auto: one per usable core)",
    )
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)


def worker_count(text: str) -> int | str:
    """``--workers``: ``auto`` (kept as is: resolved where the node runs) or 1..MAX_WORKERS."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number from 1 to {MAX_WORKERS}")
    return n


# ---- how many cores ------------------------------------------------------------------------------


def usable_cores(
    *,
    affinity: Collection[int] | None = None,
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    self_cgroup: Path = Path("/proc/self/cgroup"),
) -> int:
    """The cores this process may use: its CPU affinity (``taskset``, cpusets), capped by a CPU
    quota of its control group (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``; a container's
    ``--cpus``) rounded up, at least 1. ``os.cpu_count()`` counts the machine, which overcommits
    in a container limited to fewer cores: N workers sharing a quota of one core only add
    context switches. The keyword arguments let tests describe a machine."""
    cores = len(os.sched_getaffinity(0) if affinity is None else affinity)
    quota = cgroup_cpu_limit(cgroup_root, self_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_limit(cgroup_root: Path, self_cgroup: Path) -> float | None:
    """The tightest CPU quota (in cores) on this process's control group or its ancestors,
    ``None`` without one. Unreadable or malformed files count as no quota."""
    limits = [
        limit
        for directory in _cgroup_dirs(cgroup_root, self_cgroup)
        for limit in (_v2_limit(directory), _v1_limit(directory))
        if limit is not None
    ]
    return min(limits, default=None)


def _cgroup_dirs(cgroup_root: Path, self_cgroup: Path) -> list[Path]:
    """The folders of our v2 group (unified at the root, or at ``unified/`` on a hybrid
    machine) and v1 cpu group, and of their ancestors: a parent's quota binds its children."""
    try:
        lines = self_cgroup.read_text().splitlines()[:64]
    except OSError:
        return []
    found: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            bases = [cgroup_root, cgroup_root / "unified"]
        elif "cpu" in controllers.split(","):
            bases = [cgroup_root / "cpu", cgroup_root / controllers]
        else:
            continue
        relative = Path(path.lstrip("/"))
        for base in bases:
            chain = [base / relative, *(base / p for p in relative.parents)]
            found.extend(d for d in chain if d.is_dir())
    return found


def _v2_limit(directory: Path) -> float | None:
    """``cpu.max``: ``QUOTA PERIOD`` in microseconds, or ``max PERIOD``."""
    fields = _read_small(directory / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_limit(directory: Path) -> float | None:
    """``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    return _ratio(_read_small(directory / "cpu.cfs_quota_us"), _read_small(directory / "cpu.cfs_period_us"))


def _read_small(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(64).decode("ascii", errors="replace").strip()
    except OSError:
        return ""


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


# ---- a worker's side -----------------------------------------------------------------------------


def worker_listen(address: str, worker: int) -> str:
    """Worker ``worker``'s listen address: a fixed port moves up by ``worker - 1`` (one process
    per port), port 0 stays 0."""
    host, sep, port = address.rpartition(":")
    if not sep and address.isdigit():  # a bare port ("9464", as --metrics takes it)
        return address if int(address) == 0 else str(int(address) + worker - 1)
    if not sep or not port.isdigit() or int(port) == 0:
        return address
    return f"{host}:{int(port) + worker - 1}"


def say(line: str, out: TextIO) -> None:
    """``print`` a status line; if its reader is gone (a supervisor killed), the line is lost and
    stdout points at /dev/null from then on, but the node still stops in order (deregistered)
    instead of on a BrokenPipeError."""
    try:
        print(line, file=out, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())


async def until_stopped(signals: Any, *, lifeline: bool) -> str:
    """Wait for SIGINT/SIGTERM from ``signals`` or, for a worker, the end of its lifeline (the
    supervisor closed the pipe on stdin, or died); say which."""
    reason = ""
    async with trio.open_nursery() as nursery:

        async def first_signal() -> None:
            nonlocal reason
            async for sig in signals:
                reason = signal.Signals(sig).name
                break
            nursery.cancel_scope.cancel()

        async def lifeline_closed() -> None:
            nonlocal reason
            async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
                while await stdin.receive_some(4096):
                    pass  # nothing is ever written: only the end matters
            reason = "the supervisor"
            nursery.cancel_scope.cancel()

        nursery.start_soon(first_signal)
        if lifeline:
            nursery.start_soon(lifeline_closed)
    return reason


# ---- the supervisor ------------------------------------------------------------------------------


@attrs.define
class RestartPolicy:
    """When to restart a crashed worker, and when to give up; no I/O, the caller gives the times.

    Backoff per worker: ``first_delay`` doubling per crash in a row up to ``max_delay``; a run
    of ``steady`` seconds or more starts the doubling over. Intensity for the supervisor (OTP's
    MaxR/MaxT): at most ``limit`` restarts in any ``window`` seconds, across workers.
    """

    limit: int = 5
    window: float = 60.0
    first_delay: float = 0.5
    max_delay: float = 10.0
    steady: float = 10.0
    _restarts: deque[float] = attrs.field(factory=deque, init=False)
    _streaks: dict[int, int] = attrs.field(factory=dict, init=False)

    def crashed(self, worker: int, now: float, uptime: float) -> float | None:
        """Worker ``worker`` crashed at ``now`` after ``uptime`` seconds: the delay before it
        starts again, or ``None``: too many restarts, give up."""
        while self._restarts and now - self._restarts[0] >= self.window:
            self._restarts.popleft()
        if len(self._restarts) >= self.limit:
            return None
        self._restarts.append(now)
        streak = 1 if uptime >= self.steady else self._streaks.get(worker, 0) + 1
        self._streaks[worker] = streak
        return float(min(self.first_delay * 2.0 ** min(streak - 1, 32), self.max_delay))

    def recent(self) -> int:
        """Restarts in the current window (as of the last :meth:`crashed`)."""
        return len(self._restarts)


@attrs.define(eq=False)
class _Worker:
    index: int
    node_id: str
    ready: bool = False


class Supervisor:
    """Keeps ``len(node_ids)`` worker processes running until told to stop (see the module
    docstring); ``command(index)`` is a worker's command line."""

    def __init__(
        self, node_ids: Sequence[str], command: Any, out: TextIO, policy: RestartPolicy | None = None
    ) -> None:
        self.workers = [_Worker(k, node_id) for k, node_id in enumerate(node_ids, start=1)]
        self.command = command
        self.out = out
        self.policy = policy or RestartPolicy()
        self.stopping = trio.Event()
        self.status = 0

    async def run(self, signals: Any) -> int:
        """Run every worker; return the exit status once they have all ended."""
        async with trio.open_nursery() as outer:
            outer.start_soon(self._stop_on_signal, signals)
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(self._keep, worker)
            outer.cancel_scope.cancel()
        return self.status

    def stop(self, status: int = 0) -> None:
        self.status = max(self.status, status)
        self.stopping.set()

    async def _stop_on_signal(self, signals: Any) -> None:
        async for sig in signals:
            self._say(f"{signal.Signals(sig).name}: stopping {len(self.workers)} workers")
            self.stop()
            # A second Ctrl-C while the workers stop is no traceback: it is read and dropped.

    async def _keep(self, worker: _Worker) -> None:
        """Start ``worker``, forward its output, restart it after a crash; until stopping."""
        while not self.stopping.is_set():
            started = trio.current_time()
            code = await self._run_once(worker)
            if self.stopping.is_set():
                if code != 0:  # a worker that failed to stop in order (or had to be killed)
                    log.error("worker %s %s while stopping", worker.node_id, _exit_text(code))
                    self.status = max(self.status, 1)
                return
            uptime = trio.current_time() - started
            if code == 0:
                log.warning("worker %s exited 0 (stopped on purpose): not restarted", worker.node_id)
                return
            if code == EXIT_USAGE and not worker.ready:
                log.error("worker %s failed to start (usage error): stopping", worker.node_id)
                self.stop(EXIT_USAGE)
                return
            delay = self.policy.crashed(worker.index, trio.current_time(), uptime)
            if delay is None:
                log.error(
                    "worker %s %s: more than %d restarts in %gs, stopping every worker",
                    worker.node_id,
                    _exit_text(code),
                    self.policy.limit,
                    self.policy.window,
                )
                self.stop(1)
                return
            log.warning(
                "worker %s %s after %.1fs: restarting in %gs (%d of %d restarts allowed in %gs)",
                worker.node_id,
                _exit_text(code),
                uptime,
                delay,
                self.policy.recent(),
                self.policy.limit,
                self.policy.window,
            )
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _run_once(self, worker: _Worker) -> int:
        """One run of ``worker``'s process, from start to exit; its exit status."""
        worker.ready = False
        process = await trio.lowlevel.open_process(
            self.command(worker.index),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor only
        )
        reaped = False
        try:
            async with trio.open_nursery() as nursery:
                forwarding = trio.CancelScope()
                nursery.start_soon(self._forward, worker, process, forwarding)
                watch: trio.CancelScope = await nursery.start(self._stop_when_asked, worker, process)
                await _exited(process)
                watch.cancel()
                # What the worker left behind in its group, killed before the worker is reaped:
                # until then its pid, the group's id, cannot name another process group.
                _kill_group(process)
                await process.wait()
                reaped = True
                forwarding.deadline = trio.current_time() + DRAIN
        finally:
            with trio.CancelScope(shield=True):
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await pipe.aclose()
                if not reaped:  # cancelled from outside: no orphan is left
                    _kill_group(process)
                    await process.wait()
        code = process.returncode
        assert code is not None
        return code

    async def _forward(self, worker: _Worker, process: trio.Process, scope: trio.CancelScope) -> None:
        """Copy the worker's stdout lines to ours (its ready line says it is up), until the
        end of the pipe or ``scope`` ends it."""
        with scope:
            await self._copy(worker, process)

    async def _copy(self, worker: _Worker, process: trio.Process) -> None:
        stdout = process.stdout
        assert stdout is not None
        buffer = b""
        while chunk := await stdout.receive_some(MAX_LINE):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) >= MAX_LINE:
                lines.append(buffer)
                buffer = b""
            for line in lines:
                text = line.decode(errors="replace")
                worker.ready = worker.ready or text.startswith("node ")
                self._say(text)
        if buffer:
            self._say(buffer.decode(errors="replace"))

    async def _stop_when_asked(
        self, worker: _Worker, process: trio.Process, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Once stopping: close the lifeline, and kill the worker if it has not exited in time."""
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await self.stopping.wait()
            assert process.stdin is not None
            await process.stdin.aclose()
            await trio.sleep(STOP_GRACE)
            if scope.cancel_called:  # the worker exited as the grace ended: it may be reaped now
                return
            log.error("worker %s still ran %gs after it was told to stop: killed", worker.node_id, STOP_GRACE)
            _kill_group(process)

    def _say(self, line: str) -> None:
        say(line, self.out)


def _kill_group(process: trio.Process) -> None:
    """SIGKILL the worker's process group (it leads one: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _exited(process: trio.Process) -> None:
    """Until ``process`` has exited, without reaping it: a zombie keeps its pid, so
    ``killpg(pid)`` still reaches its own group (``process.wait()`` would free the pid for
    reuse, by another group's leader too). Where pidfds are missing, it waits and reaps."""
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux 5.3+: the pid may be reused after all
        await process.wait()
        return
    try:
        await trio.lowlevel.wait_readable(fd)  # readable once the process has exited
    finally:
        os.close(fd)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited {code}"


async def supervise(args: argparse.Namespace, out: TextIO, count: int, argv: Sequence[str]) -> int:
    """``run`` with ``count`` workers: this process supervises, the workers serve."""
    base = args.name or uuid.uuid4().hex[:8]
    node_ids = [f"{base}-{k}" for k in range(1, count + 1)]
    _prepare_identities(home_dir(args), node_ids)
    # Each worker runs this very command, as the worker it is (after the user's own options,
    # and before a "--" that would make them positional).
    cut = argv.index("--") if "--" in argv else len(argv)

    def command(k: int) -> list[str]:
        extra = ["--name", base, "--worker", str(k)]
        return [sys.executable, "-m", "trimicro.cluster.cli", *argv[:cut], *extra, *argv[cut:]]

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        why = f" (auto: {count} usable cores)" if args.workers == "auto" else ""
        say(f"supervising {count} workers{why}: {', '.join(node_ids)} (pid {os.getpid()})", out)
        return await Supervisor(node_ids, command, out).run(signals)


def _prepare_identities(home: Path | None, node_ids: Sequence[str]) -> None:
    """Every worker's identity, made now (a home with the authority) or checked (a joined home):
    a missing certificate is one clear error before anything starts."""
    missing = []
    for node_id in node_ids:
        try:
            dev_identity(node_id, home)
        except ValueError as exc:
            raise UsageError(f"--name: {exc}") from None
        except MicroError:
            if not joined(default_home(home)):
                raise
            missing.append(node_id)
    if missing:
        names = " ".join(missing)
        raise UsageError(
            f"{default_home(home)} joined a cluster and has no certificate for {names}: each worker "
            f"is a node of its own; on the authority's host run `trimicro cert issue {names}` and "
            "install the bundles here (`trimicro cert install FILE...`)"
        )
