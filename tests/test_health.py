"""Health: a node's readiness checks, the ``SYSTEM health`` request between nodes, the cluster's
checks (membership, registry, store) and the gateway's ``/livez`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from openapi_spec_validator import validate

from trimicro.actors import (
    BadRequest,
    InternalServerError,
    Node,
    ServiceUnavailable,
    TooManyRequests,
    start_node,
)
from trimicro.actors.health import MAX_CHECKS, MAX_DETAIL, Health, NotReady, Report
from trimicro.actors.remote.health import HEALTH_OP, MAX_WAITING, HealthAnswers, ask_health
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.registry import MemoryRegistry, Service
from trimicro.cluster.store import MemoryStore


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_a_report_runs_every_check_at_once_each_within_its_deadline(autojump_clock: Any) -> None:
    """A check that passes, one that says why not, one with a bug, one that hangs: the report
    names each, takes the deadline once (not per check), and is not ready."""
    health = Health("n1", timeout=2.0)
    health.state = "running"

    async def fine() -> str:
        return "fine"

    async def full() -> str:
        raise NotReady("disk full")

    async def buggy() -> str:
        raise RuntimeError("oops")

    async def hangs() -> str:
        await trio.sleep_forever()
        return ""

    for name, probe in (("fine", fine), ("full", full), ("buggy", buggy), ("hangs", hangs)):
        health.add(name, probe)
    started = trio.current_time()
    report = await health.report()
    assert trio.current_time() - started == pytest.approx(2.0)
    assert (report.live, report.ready) == (True, False)
    assert [(c.name, c.ok, c.detail) for c in report.checks] == [
        ("node", True, "running"),
        ("fine", True, "fine"),
        ("full", False, "disk full"),
        ("buggy", False, "RuntimeError: oops"),
        ("hangs", False, "no answer within 2s"),
    ]
    assert [c.name for c in report.failing()] == ["full", "buggy", "hangs"]
    for name in ("full", "buggy", "hangs"):
        health.remove(name)
    assert (await health.report()).ready is True
    health.state = "stopping"
    assert [c.name for c in (await health.report()).failing()] == ["node"]


def test_checks_are_named_and_bounded() -> None:
    health = Health("n1")

    async def probe() -> str:
        return ""

    for bad in ("", "node", "x" * 65):
        with pytest.raises(ValueError):
            health.add(bad, probe)
    for i in range(MAX_CHECKS - 1):
        health.add(f"c{i}", probe)
    with pytest.raises(ValueError, match="at most"):
        health.add("one-more", probe)
    health.add("c0", probe)  # replacing one is fine


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"node": "n", "live": True},
        {"node": 1, "live": True, "ready": True, "checks": []},
        {"node": "n", "live": "yes", "ready": True, "checks": []},
        {"node": "n", "live": True, "ready": True, "checks": {}},
        {"node": "n", "live": True, "ready": True, "checks": [{"name": "x"}]},
        {"node": "n", "live": True, "ready": True, "checks": [[1]]},
        {"node": "n", "live": True, "ready": True, "checks": [{"name": "x", "ok": True}] * (MAX_CHECKS + 1)},
    ],
)
def test_a_report_from_another_node_is_checked(data: Any) -> None:
    with pytest.raises(BadRequest):
        Report.from_dict(data)


def test_a_report_from_another_node_is_bounded() -> None:
    doc = {
        "node": "n",
        "live": True,
        "ready": False,
        "checks": [{"name": "x", "ok": False, "detail": "d" * 10**6}],
    }
    report = Report.from_dict(doc)
    assert len(report.checks[0].detail) == MAX_DETAIL
    assert Report.from_dict(report.to_dict()) == report


# ---- on the wire ---------------------------------------------------------------------------------


@asynccontextmanager
async def two_nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, str]]:
    """Node ``a`` and node ``b`` (listening); yields them and ``b``'s id as ``a`` dialed it."""
    async with (
        start_node("a", home=tmp_path, busy_poll=0) as a,
        start_node("b", home=tmp_path, listen="127.0.0.1:0", busy_poll=0) as b,
    ):
        assert b.address is not None
        yield a, b, await a.remote.connect(b.address)


async def test_health_is_asked_of_another_node_over_its_link(tmp_path: Path) -> None:
    """Ready, then not ready naming the failing check, then live only (no check runs)."""
    async with two_nodes(tmp_path) as (a, b, b_id):
        report = await ask_health(a.remote.peer(b_id), 5.0)
        assert (report.node, report.live, report.ready) == ("b", True, True)
        assert [c.name for c in report.checks] == ["node"]
        runs = []

        async def disk() -> str:
            runs.append(1)
            raise ServiceUnavailable("disk gone")

        b.health.add("disk", disk)
        report = await ask_health(a.remote.peer(b_id), 5.0)
        assert report.ready is False
        assert [(c.name, c.detail) for c in report.failing()] == [("disk", "disk gone")]
        live = await ask_health(a.remote.peer(b_id), 5.0, checks=False)
        assert (live.live, live.ready, live.checks, len(runs)) == (True, None, (), 1)


async def test_concurrent_health_asks_share_one_probe_run_and_the_waiting_list_is_bounded(
    tmp_path: Path,
) -> None:
    """Every report runs every probe: asks that come while one runs wait for it (one run for
    all of them), past MAX_WAITING waiting a 429 at once; liveness is still answered."""
    async with two_nodes(tmp_path) as (a, b, b_id):
        release = trio.Event()
        started = trio.Event()
        runs = [0]

        async def slow() -> str:
            runs[0] += 1
            started.set()
            await release.wait()
            return "done"

        b.health.timeout = 60.0
        b.health.add("slow", slow)
        answers = b.remote.system_handlers[HEALTH_OP]
        assert isinstance(answers, HealthAnswers)
        peer = a.remote.peer(b_id)
        reports: list[Report] = []
        async with trio.open_nursery() as nursery:

            async def one() -> None:
                reports.append(await ask_health(peer, 30.0))

            nursery.start_soon(one)
            with trio.fail_after(10):
                await started.wait()
            for _ in range(MAX_WAITING - 1):
                nursery.start_soon(one)
            with trio.fail_after(10):
                while len(answers._waiting or ()) < MAX_WAITING:
                    await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(TooManyRequests):
                await ask_health(peer, 5.0)
            assert (await ask_health(peer, 5.0, checks=False)).live
            release.set()
        assert len(reports) == MAX_WAITING and all(r.ready for r in reports)
        assert runs == [1]


async def test_a_health_report_answers_asks_for_max_age(tmp_path: Path) -> None:
    """A report made less than ``max_age`` ago answers later asks without running the probes;
    an older one is made again."""
    async with two_nodes(tmp_path) as (a, b, b_id):
        runs = [0]

        async def counted() -> str:
            runs[0] += 1
            return f"run {runs[0]}"

        b.health.add("counted", counted)
        answers = b.remote.system_handlers[HEALTH_OP]
        assert isinstance(answers, HealthAnswers)
        answers.max_age = 3600.0
        peer = a.remote.peer(b_id)
        first = await ask_health(peer, 5.0)
        second = await ask_health(peer, 5.0)
        assert first == second and runs == [1]
        answers.max_age = 0.0
        third = await ask_health(peer, 5.0)
        assert runs == [2] and third.checks[-1].detail == "run 2"


async def test_a_report_that_fails_answers_its_waiters_with_an_error(tmp_path: Path) -> None:
    """Every ask waiting for a report that fails gets a 500 at once, not its deadline."""
    async with two_nodes(tmp_path) as (a, b, b_id):

        async def broken() -> Report:
            raise RuntimeError("report failed")

        b.health.report = broken  # type: ignore[method-assign]
        with trio.fail_after(10), pytest.raises(InternalServerError):
            await ask_health(a.remote.peer(b_id), 30.0)


async def test_a_node_that_does_not_answer_times_out(tmp_path: Path) -> None:
    """An unreachable node is an error the CLI reports as not live (never a hang)."""
    async with start_node("a", home=tmp_path) as a:
        peer = a.remote.peer("ghost")
        peer.address = "127.0.0.1:9"  # discard: nothing listens
        with pytest.raises((ServiceUnavailable, trio.TooSlowError)):
            with trio.fail_after(10):
                await ask_health(peer, 2.0)


# ---- the cluster's checks ----------------------------------------------------------------------


class FlakyRegistry(MemoryRegistry):
    """A registry that stops answering when told to (as a NATS server that went away)."""

    down = False

    async def get_service(self, name: str) -> list[Service]:
        if self.down:
            raise ServiceUnavailable("registry connection lost", id="registry")
        return await super().get_service(name)


async def test_a_cluster_node_checks_membership_registry_and_store(tmp_path: Path) -> None:
    registry = FlakyRegistry()
    store = MemoryStore()
    async with start_cluster("c1", registry=registry, store=store, home=tmp_path) as cluster:
        report = await cluster.node.health.report()
        details = {c.name: c.detail for c in report.checks}
        assert report.ready, report
        assert set(details) == {"node", "registry", "store", "membership"}
        assert details["membership"] == "1 member alive"
        assert details["registry"].endswith("(1 node announced)")
        registry.down = True
        report = await cluster.node.health.report()
        assert [(c.name, c.detail) for c in report.failing()] == [("registry", "registry connection lost")]
        registry.down = False
        await store.aclose()
        report = await cluster.node.health.report()
        assert [(c.name, c.detail) for c in report.failing()] == [("store", "store is closed")]


async def test_a_client_node_checks_what_it_has(tmp_path: Path) -> None:
    """No membership, no store, not announced: those checks do not apply."""
    async with start_cluster(
        "cli", registry=MemoryRegistry(), store="", home=tmp_path, membership=False, announce=False
    ) as cluster:
        report = await cluster.node.health.report()
        assert report.ready and [c.name for c in report.checks] == ["node", "registry"]


# ---- the gateway ---------------------------------------------------------------------------------


@asynccontextmanager
async def gateway(tmp_path: Path, store: MemoryStore) -> AsyncIterator[httpx.AsyncClient]:
    async with start_cluster(
        "gw", registry=MemoryRegistry(), store=store, auth=False, home=tmp_path
    ) as cluster:
        opts = GatewayOptions(address="127.0.0.1:0", refresh=0.2)
        async with open_gateway(cluster, opts) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
            await gw.state.refresh()  # the first registry answer
            yield http


async def test_gateway_readiness_lists_the_node_checks(tmp_path: Path) -> None:
    async with gateway(tmp_path, MemoryStore()) as http:
        for path in ("/health/live", "/livez"):
            r = await http.get(path)
            assert (r.status_code, r.json()) == (200, {"status": "live", "node": "gw"})
        for path in ("/health/ready", "/readyz"):
            r = await http.get(path)
            body = r.json()
            assert (r.status_code, body["status"], body["ready"]) == (200, "ready", True)
            assert [c["name"] for c in body["checks"]] == [
                "node",
                "registry",
                "store",
                "membership",
                "gateway",
            ]
        doc = (await http.get("/openapi.json")).json()
        validate(doc)
        assert {"/health/live", "/health/ready", "/livez", "/readyz"} <= set(doc["paths"])


async def test_gateway_readiness_fails_with_the_failing_check(tmp_path: Path) -> None:
    store = MemoryStore()
    await store.aclose()
    async with gateway(tmp_path, store) as http:
        r = await http.get("/readyz")
        body = r.json()
        assert (r.status_code, body["status"], body["ready"]) == (503, "not ready", False)
        assert [(c["name"], c["detail"]) for c in body["checks"] if not c["ok"]] == [
            ("store", "store is closed")
        ]
        assert (await http.get("/livez")).status_code == 200
