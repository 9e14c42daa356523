"""The parts of ``trimicro run --workers`` that need no process: how many cores ``auto`` means
(affinity and control-group quotas, on machines described by files), the option, a worker's
listen address, and the restart policy (backoff and intensity), with times given."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimicro.cluster.cli import build_parser
from trimicro.cluster.cli.workers import (
    MAX_WORKERS,
    RestartPolicy,
    cgroup_cpu_limit,
    usable_cores,
    worker_listen,
)


def machine(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /sys/fs/cgroup tree and a /proc/self/cgroup file."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    root.mkdir(exist_ok=True)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(proc_cgroup)
    return root, self_cgroup


def cores(tmp_path: Path, proc_cgroup: str, files: dict[str, str], affinity: int = 8) -> int:
    root, self_cgroup = machine(tmp_path, proc_cgroup, files)
    return usable_cores(affinity=range(affinity), cgroup_root=root, self_cgroup=self_cgroup)


def test_without_a_quota_auto_is_the_affinity(tmp_path: Path) -> None:
    assert cores(tmp_path, "0::/\n", {"cgroup.controllers": "cpu\n", "cpu.max": "max 100000\n"}, 3) == 3
    assert cores(tmp_path, "", {}, 5) == 5  # no control groups at all


def test_a_v2_quota_caps_the_affinity_rounded_up(tmp_path: Path) -> None:
    files = {"cgroup.controllers": "cpu\n", "app/svc/cpu.max": "150000 100000\n"}
    assert cores(tmp_path, "0::/app/svc\n", files) == 2


def test_a_parents_quota_binds_its_children(tmp_path: Path) -> None:
    files = {"app/cpu.max": "50000 100000\n", "app/svc/cpu.max": "max 100000\n"}
    assert cores(tmp_path, "0::/app/svc\n", files) == 1  # half a core is still one worker


def test_a_v1_quota_counts_on_hybrid_machines_too(tmp_path: Path) -> None:
    files = {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n",
        "unified/cgroup.controllers": "\n",
    }
    text = "5:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n0::/\n"
    assert cores(tmp_path, text, files) == 3
    unlimited = {**files, "cpu,cpuacct/docker/x/cpu.cfs_quota_us": "-1\n"}
    assert cores(tmp_path / "u", text, unlimited) == 8


def test_a_container_sees_its_own_group_at_the_root(tmp_path: Path) -> None:
    """Inside a container /proc/self/cgroup names the host's path, which is not mounted there:
    the quota is on the container's root, an ancestor of that path, and still counts."""
    files = {"cpu.max": "200000 100000\n", "cgroup.controllers": "cpu\n"}
    assert cores(tmp_path, "0::/system.slice/docker-abc.scope\n", files) == 2


@pytest.mark.parametrize(
    "text", ["", "max\n", "x 100000\n", "100000 0\n", "100000 x\n", "\x00\x01", "1 2 3 4 5 6\n" * 1000]
)
def test_malformed_quota_files_count_as_none(tmp_path: Path, text: str) -> None:
    root, self_cgroup = machine(tmp_path, "0::/\n", {"cpu.max": text})
    assert cgroup_cpu_limit(root, self_cgroup) is None


def test_this_machine() -> None:
    n = usable_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("1", 1), ("2", 2), (str(MAX_WORKERS), 256)])
def test_the_workers_option(text: str, value: object) -> None:
    args = build_parser().parse_args(["run", "m.py", "--workers", text])
    assert args.workers == value
    assert build_parser().parse_args(["run", "m.py"]).workers == 1


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5", str(MAX_WORKERS + 1), ""])
def test_a_bad_workers_option_is_a_usage_error(text: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["run", "m.py", "--workers", text])
    assert exit_.value.code == 2
    assert "must be 'auto' or a whole number from 1 to 256" in err.getvalue()


def test_a_fixed_listen_port_moves_up_per_worker() -> None:
    assert worker_listen("10.0.0.1:7000", 1) == "10.0.0.1:7000"
    assert worker_listen("10.0.0.1:7000", 3) == "10.0.0.1:7002"
    assert worker_listen("[::1]:7000", 2) == "[::1]:7001"
    assert worker_listen("127.0.0.1:0", 4) == "127.0.0.1:0"  # the system's choice, each its own


# ---- the restart policy ------------------------------------------------------------------------


def test_backoff_doubles_per_crash_in_a_row_and_starts_over_after_a_steady_run() -> None:
    policy = RestartPolicy(limit=100, window=60.0, first_delay=0.5, max_delay=10.0, steady=10.0)
    now = 0.0
    delays = []
    for _ in range(7):
        now += 1.0
        delays.append(policy.crashed(1, now, uptime=1.0))
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.crashed(2, now, uptime=1.0) == 0.5  # another worker has its own streak
    assert policy.crashed(1, now + 30, uptime=12.0) == 0.5  # it had run steadily


def test_more_than_the_limit_in_the_window_gives_up() -> None:
    policy = RestartPolicy(limit=5, window=60.0)
    assert all(policy.crashed(k % 2, float(k), uptime=20.0) is not None for k in range(5))
    assert policy.crashed(0, 5.0, uptime=20.0) is None
    assert policy.crashed(1, 60.5, uptime=20.0) is not None  # the first restart left the window


crashes = st.lists(
    st.tuples(st.integers(0, 3), st.floats(0.0, 30.0), st.floats(0.0, 30.0)), min_size=1, max_size=60
)


@given(crashes, st.integers(1, 8), st.floats(1.0, 120.0))
def test_never_more_restarts_in_a_window_than_the_limit(
    events: list[tuple[int, float, float]], limit: int, window: float
) -> None:
    policy = RestartPolicy(limit=limit, window=window)
    now = 0.0
    granted: list[float] = []
    for worker, gap, uptime in events:
        now += gap
        recent = [t for t in granted if now - t < window]
        delay = policy.crashed(worker, now, uptime)
        # Refused exactly when the window already holds the limit.
        assert (delay is None) == (len(recent) >= limit)
        if delay is not None:
            granted.append(now)
            assert policy.first_delay <= delay <= policy.max_delay
    for t in granted:
        assert len([u for u in granted if t <= u < t + window]) <= limit


def test_a_bare_metrics_port_moves_up_per_worker_too() -> None:
    """``--metrics 9464`` (a bare port) with several workers: each serves on its own port, not
    all on 9464 (workers 2..N would fail to bind and be restarted until the limit)."""
    from trimicro.cluster.cli.workers import worker_listen

    assert [worker_listen("9464", w) for w in (1, 2, 3)] == ["9464", "9465", "9466"]
    assert worker_listen("0", 2) == "0"
    assert worker_listen("127.0.0.1:9464", 2) == "127.0.0.1:9465"
