"""The testing kit itself: the plugin is off until turned on, probes report what they saw,
fakes refuse what they were not scripted for, the harness needs trio's MockClock to advance."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trimicro.actors import Actor, Call, Next, NotFound, ask, start_node, tell
from trimicro.cluster import call
from trimicro.testing import (
    FakeRef,
    InprocCluster,
    MessageProbe,
    ProbeTimeout,
    Recorder,
    open_cluster,
    unit,
    wait_converged,
    wait_member,
)

USES_FIXTURE = """
import trio

async def test_node(trimicro_node):
    assert trimicro_node.id == "test"

async def test_cluster(trimicro_cluster):
    assert trimicro_cluster.client.id == "client"
"""


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a process of its own, in a project of its own (not this one's ini options)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(folder)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("ini", "args", "on"),
    [
        ("", (), False),
        ("", ("--trimicro",), True),
        ("trimicro = true\n", (), True),
        ("", ("-p", "trimicro.testing.fixtures"), True),
    ],
)
def test_the_plugin_adds_fixtures_only_when_turned_on(
    tmp_path: Path, ini: str, args: tuple[str, ...], on: bool
) -> None:
    (tmp_path / "pytest.ini").write_text(f"[pytest]\ntrio_mode = true\n{ini}")
    (tmp_path / "test_uses_kit.py").write_text(USES_FIXTURE)
    done = run_pytest(tmp_path, *args)
    if on:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 passed" in done.stdout
    else:
        assert done.returncode != 0
        assert "fixture 'trimicro_node' not found" in done.stdout


async def test_a_recorder_keeps_the_latest_events_only() -> None:
    seen: Recorder[int] = Recorder("number", limit=3)
    for i in range(5):
        seen.append(i)
    assert (seen.items, seen.dropped) == ([2, 3, 4], 2)


async def test_after_clear_a_wait_sees_only_what_comes_next(autojump_clock: trio.testing.MockClock) -> None:
    seen: Recorder[int] = Recorder("number", limit=2)
    seen.append(1)
    seen.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(seen.wait_count, 3, None)  # a waiter that keeps up sees past the limit
        for i in (2, 3, 4):
            await trio.testing.wait_all_tasks_blocked()
            seen.append(i)
    with pytest.raises(ProbeTimeout, match=r"no 2 x number within 1 s; seen 1:\n  5$"):
        seen.clear()
        seen.append(5)
        await seen.wait_count(2, timeout=1)


async def test_a_recorder_wakes_a_waiter_with_the_matching_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: Recorder[int] = Recorder("number")
    async with trio.open_nursery() as nursery:

        async def later() -> None:
            for i in range(5):
                await trio.sleep(1)
                seen.append(i)

        nursery.start_soon(later)
        assert await seen.wait_for(lambda i: i >= 3) == 3
        assert trio.current_time() == pytest.approx(4)
        assert await seen.wait_count(2, lambda i: i % 2 == 0) == [0, 2]


async def test_a_probe_timeout_names_what_was_awaited_and_shows_what_was_seen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: Recorder[str] = Recorder("greeting")
    for word in ("hi", "hey"):
        seen.append(word)
    with pytest.raises(ProbeTimeout) as caught:
        await seen.wait_for(lambda w: w == "hello", timeout=3)
    assert caught.value.seen == ["hi", "hey"]
    assert str(caught.value) == "no greeting within 3 s; seen 2:\n  'hi'\n  'hey'"
    assert trio.current_time() == pytest.approx(3)  # the deadline is trio time


@attrs.frozen
class Ping:
    n: int


class Echo(Actor):
    async def ping(self, msg: Ping) -> int:
        return msg.n

    async def crash(self, body: Any) -> None:
        raise RuntimeError("crashed on purpose")


async def test_the_message_probe_sees_handlers_not_callers() -> None:
    probe = MessageProbe()
    client_side: list[Call] = []

    async def spy(call: Call, call_next: Next) -> Any:
        client_side.append(call)
        return await call_next(call)

    async with start_node(middleware=[probe]) as node:
        echo = await node.spawn(Echo, name="echo")
        assert await ask(echo, Ping(1), middleware=[spy]) == 1
        [delivery] = probe.to("echo")
        assert (delivery.kind, delivery.endpoint, delivery.message, delivery.result) == (
            "ask",
            "Echo.ping",  # routed by the message's type, yet named by the handler that ran
            Ping(1),
            1,
        )
        assert delivery.done.is_set() and probe.to(echo) == [delivery] and len(client_side) == 1
        # A tell by type is found by its endpoint as well as a call that names the endpoint.
        await tell(echo, Ping(2))
        assert (await probe.wait_for(echo, endpoint="Echo.ping", match=lambda m: m == Ping(2))).result == 2
        assert await ask(echo, {"n": 3}, endpoint="Echo.ping") == 3
        assert (
            await probe.wait_for("echo", endpoint="Echo.ping", match=lambda m: m == Ping(3))
        ).kind == "ask"


async def test_a_tell_through_the_harness_reports_the_handler_error() -> None:
    async with unit(Echo) as echo:
        delivery = await echo.tell({}, endpoint="Echo.crash")
        assert isinstance(delivery.error, RuntimeError)


async def test_advance_needs_the_mock_clock() -> None:
    async with unit(Echo) as echo:
        with pytest.raises(RuntimeError, match="MockClock"):
            await echo.advance(1)


async def test_a_fake_serves_only_the_endpoints_it_was_scripted_for() -> None:
    fake = FakeRef("stock", replies={"Stock.reserve": 1}, default="anything")
    async with start_node() as node:
        ref = await fake.spawn(node)
        assert await ask(ref, {}, endpoint="Stock.reserve") == 1
        with pytest.raises(NotFound):
            await ask(ref, {}, endpoint="Stock.release")
        assert await ask(ref, Ping(3)) == "anything"  # by type: the default
        await tell(ref, Ping(4))
        assert await fake.wait_tells(1) == [Ping(4)]
        assert [r.kind for r in fake.received] == ["ask", "ask", "tell"]


def test_a_fake_refuses_endpoints_of_two_services_or_bad_names() -> None:
    with pytest.raises(ValueError, match="one service"):
        FakeRef(replies={"A.x": 1, "B.y": 2})._actor_class()
    with pytest.raises(ValueError, match="not an endpoint name"):
        FakeRef(replies={"A.not-a-name": 1})._actor_class()
    with pytest.raises(RuntimeError, match="not spawned"):
        _ = FakeRef("lonely").ref


class Caller(Actor):
    async def go(self, body: Any) -> Any:
        return await call("missing", "Missing.x", {})


async def test_a_call_to_a_service_nobody_scripted_is_not_found() -> None:
    async with unit(Caller) as caller:
        with pytest.raises(NotFound, match="services="):
            await caller.call("Caller.go")
        assert [c.service for c in caller.cluster.calls] == ["missing"]


async def test_nodes_of_the_inproc_cluster_converge_and_see_a_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(client=False) as cluster:
        with pytest.raises(RuntimeError, match="no client"):
            _ = cluster.client
        nodes = [await cluster.add_node() for _ in range(3)]
        assert [n.id for n in nodes] == ["n1", "n2", "n3"]
        await wait_converged(nodes)
        await cluster.stop_node(nodes[2])
        assert [n.id for n in cluster.nodes] == ["n1", "n2"]
        assert await wait_member(nodes[0], "n3", "left") == "left"
        with pytest.raises(ProbeTimeout, match="member n3 in state alive as n1 sees it"):
            await wait_member(nodes[0], "n3", "alive", timeout=2)


async def test_the_cluster_fixture_closes_its_nodes(trimicro_cluster: InprocCluster) -> None:
    node = await trimicro_cluster.add_node("a")
    assert trimicro_cluster["a"] is node
    assert {n.id for n in trimicro_cluster.nodes} == {"client", "a"}


GUIDE = Path(__file__).parent.parent / "docs" / "guides" / "testing.md"


def test_every_python_sample_of_the_guide_is_included_from_a_test_that_runs() -> None:
    """The guide's Python blocks hold only snippet includes of sections of test files, which
    this suite collects (tests/kit_samples/test_*.py): a sample that breaks fails a test."""
    root = GUIDE.parent.parent.parent
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 8
    included = 0
    for block in blocks:
        for line in filter(None, block.splitlines()):
            if line == "--8<--":  # the block form (what tests/test_docs.py reads): paths between
                continue
            found = re.fullmatch(r'(?:--8<-- ")?(tests/kit_samples/test_[a-z_]+\.py)(?::([a-z]+))?"?', line)
            assert found, f"not a snippet include of a test file: {line!r}"
            source = (root / found[1]).read_text()
            section = found[2]
            if section is not None:
                assert f"# --8<-- [start:{section}]" in source and f"# --8<-- [end:{section}]" in source
            included += 1
    assert included >= 10


def test_the_public_names_of_the_kit() -> None:
    """What trimicro.testing exports is its API (applications' tests import it): a name that
    disappears breaks them, a name that appears by accident becomes a promise."""
    import trimicro.testing

    by_module = {
        "harness": "ActorHarness FakeCluster FakeRef Published Received ServiceCall unit",
        "cluster": "InprocCluster Serve open_cluster",
        "probes": "Delivery MessageProbe ProbeTimeout Recorder dead_letters terminations "
        "wait_converged wait_member wait_terminated",
    }
    exported = {name: module for module, names in by_module.items() for name in names.split()}
    assert set(trimicro.testing.__all__) == {*exported, "DEFAULT_TIMEOUT"}
    for name, module in exported.items():
        assert getattr(trimicro.testing, name).__module__ == f"trimicro.testing.{module}"


def test_the_runtime_imports_no_pytest() -> None:
    """Only trimicro.testing imports pytest: an application that runs trimicro never needs it."""
    code = "import sys, trimicro.mailbox, trimicro.actors, trimicro.cluster; print('pytest' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


async def test_default_node_names_count_from_n1_and_are_never_reused() -> None:
    async with open_cluster() as cluster:
        first = await cluster.add_node()
        await cluster.add_node("n2")
        assert (first.id, (await cluster.add_node()).id) == ("n1", "n3")
        await cluster.stop_node("n3")
        assert (await cluster.add_node()).id == "n4"


async def test_a_partition_is_seen_dead_and_heals(
    trimicro_cluster: InprocCluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = await trimicro_cluster.add_node("a")
    b = await trimicro_cluster.add_node("b")
    await trimicro_cluster.converged()
    await trimicro_cluster.partition(a, b)
    assert await wait_member(a, "b", "dead") == "dead"
    assert await wait_member(trimicro_cluster.client, "b", "alive") == "alive"  # only a lost b
    trimicro_cluster.heal()
    assert await wait_member(a, "b", "alive", timeout=60) == "alive"
    assert await wait_member(b, "a", "alive", timeout=60) == "alive"


@attrs.frozen
class Beat:
    pass


class Heart(Actor):
    def __init__(self) -> None:
        self.beats: list[float] = []

    async def started(self) -> None:
        self.context.every(10.0, Beat())

    async def beat(self, msg: Beat) -> None:
        self.beats.append(trio.current_time())


async def test_advance_runs_the_timers_in_order_with_a_clock_that_never_jumps_alone(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with unit(Heart) as heart:
        start = trio.current_time()
        await heart.advance(25)
        assert [t - start for t in heart.actor.beats] == [pytest.approx(10), pytest.approx(20)]
        assert mock_clock.autojump_threshold == float("inf")  # left as it was
