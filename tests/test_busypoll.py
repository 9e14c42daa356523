"""The poll gate (sans I/O, with given times) and the CPU-quota check (with a fake /proc and
cgroup tree): when busy polling is allowed and when it pauses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trimicro.actors.busypoll import (
    FREE_CORES,
    PAUSE_MAX,
    PAUSE_MIN,
    POLL_WINDOW,
    BusyPoller,
    PollGate,
    load_sample,
    others_cores,
    spin_allowed,
)


def test_polls_that_find_their_message_keep_the_gate_open() -> None:
    gate = PollGate()
    for i in range(10 * POLL_WINDOW):
        gate.record(i % 2 == 0, now=float(i))  # half of them hit: still worth it
        assert gate.open(float(i))


def test_polls_that_miss_pause_polling_longer_each_time_up_to_a_limit() -> None:
    gate = PollGate()
    now = 0.0
    pauses = []
    for _ in range(12):
        for _ in range(POLL_WINDOW):
            assert gate.open(now)
            gate.record(False, now)
        assert not gate.open(now)  # paused
        pauses.append(gate.paused_until - now)
        now = gate.paused_until  # the pause is over: the next polls are probes
    assert pauses[:2] == pytest.approx([PAUSE_MIN, 2 * PAUSE_MIN])
    assert max(pauses) == pytest.approx(PAUSE_MAX) and pauses[-1] == pytest.approx(PAUSE_MAX)
    # Probes that hit again: the next pause, if any, starts from the minimum.
    for _ in range(POLL_WINDOW):
        gate.record(True, now)
    assert gate.open(now) and gate.pause == PAUSE_MIN


def test_a_gate_that_may_not_spin_never_opens() -> None:
    gate = PollGate(False, "one CPU")
    for i in range(3 * POLL_WINDOW):
        gate.record(True, float(i))
    assert not gate.open(1e9)


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 10)), max_size=200))
def test_pauses_stay_bounded_whatever_the_outcomes(events: list[tuple[bool, float]]) -> None:
    gate = PollGate()
    now = 0.0
    for hit, dt in events:
        now += dt
        if gate.open(now):
            gate.record(hit, now)
        assert PAUSE_MIN <= gate.pause <= PAUSE_MAX
        assert gate.paused_until <= now + PAUSE_MAX
        if all(h for h, _ in events):
            assert gate.open(now)


def _fake_proc(tmp_path: Path, cgroup: str) -> str:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    return str(proc)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the quota rules apply with 2+ CPUs")
def test_no_spinning_under_a_cgroup_cpu_quota(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    # cgroup v2: the process's own group has no limit, its parent has one.
    proc = _fake_proc(tmp_path, "0::/svc/app\n")
    _write(root / "svc" / "app" / "cpu.max", "max 100000\n")
    assert spin_allowed(str(root), proc) == (True, "")
    _write(root / "svc" / "cpu.max", "50000 100000\n")
    allowed, why = spin_allowed(str(root), proc)
    assert not allowed and "cpu.max 50000" in why

    # cgroup v1, the cpu controller mounted with cpuacct.
    root1 = tmp_path / "cg1"
    proc1 = str(tmp_path / "p1")
    os.makedirs(proc1)
    Path(proc1, "cgroup").write_text("4:memory:/x\n2:cpu,cpuacct:/job\n")
    _write(root1 / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "-1\n")
    assert spin_allowed(str(root1), proc1)[0]
    _write(root1 / "cpu,cpuacct" / "job" / "cpu.cfs_quota_us", "150000\n")
    assert spin_allowed(str(root1), proc1) == (False, "CPU quota (cpu.cfs_quota_us 150000)")

    # No cgroup file to read: allowed.
    assert spin_allowed(str(tmp_path / "none"), str(tmp_path / "nothing")) == (True, "")


def test_no_spinning_with_one_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert spin_allowed() == (False, "one CPU")


async def test_a_poller_whose_polls_miss_stops_polling_and_serving_polls_too() -> None:
    async with trio.open_nursery() as nursery:
        poller = BusyPoller(nursery, 60.0)
        poller.gate = PollGate()
        assert poller.open()
        for _ in range(POLL_WINDOW):
            poller.record(False)
        assert poller.misses == POLL_WINDOW and not poller.open()
        assert not poller.poll_briefly()  # the serving side does not poll either
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        assert poller.polls == 0
        nursery.cancel_scope.cancel()


def test_other_processes_cores_leave_this_process_out() -> None:
    # 2 CPUs, 1 s: 200 ticks in all, 150 busy; this process used 0.5 s of CPU.
    before, after = (1000, 4000, 10.0, 100.0), (1150, 4200, 10.5, 101.0)
    assert others_cores(before, after, 2) == pytest.approx(1.0)
    # Its own spinning never counts as load (no feedback from its own polling).
    assert others_cores(before, (1200, 4200, 11.0, 101.0), 2) == pytest.approx(1.0)
    assert others_cores(before, before, 2) == 0.0  # no time passed: nothing known


def test_a_machine_without_a_free_core_closes_the_gate() -> None:
    gate = PollGate()
    gate.note_load(0.9, 2)  # the peer's work, say: a core stays free
    assert gate.open(0.0)
    gate.note_load(1.5, 2)  # a busy process besides: less than FREE_CORES left
    assert not gate.open(0.0)
    gate.note_load(2.0 - FREE_CORES, 2)
    assert gate.open(0.0)


def test_load_samples_come_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    sample = load_sample(str(stat))
    assert sample is not None and sample[:2] == (150, 1000)  # busy = all but idle and iowait
    assert load_sample(str(tmp_path / "missing")) is None


async def test_a_poller_on_a_crowded_machine_does_not_poll(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        poller = BusyPoller(nursery, 60.0)
        poller.gate = PollGate()
        assert poller.load_check
        poller.gate.note_load(2.0, 2)  # (as a sample on a machine with both cores busy would)
        poller._next_sample = float("inf")  # no new sample in this test
        assert not poller.open() and not poller.poll_briefly()
        nursery.cancel_scope.cancel()


def test_unreadable_or_odd_proc_files_never_stop_a_node(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "garbage\n1:cpu\n")
    assert spin_allowed(str(tmp_path / "cg"), proc) == (True, "")
    stat = tmp_path / "stat"
    stat.write_text("cpu 1 2\n")
    assert load_sample(str(stat)) is None
