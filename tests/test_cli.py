"""The `trimicro` command: error paths in-process, and the whole tour across real processes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trimicro.cluster.cli import MISS, WAIT, main, services_of, wait_for
from trimicro.cluster.registry import NodeInfo, Service
from trimicro.mailbox.errors import NotFound

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_call_of_an_unknown_service_is_a_clear_404(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "--home", str(tmp_path), "--registry", "memory", "call", "nosuch", "X.y", "{}", "--wait", "0.1"
    )
    assert code == 1
    assert err.startswith("error 404 Not Found: service nosuch not found")
    assert "Traceback" not in err


def test_errors_as_json_for_scripts(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "--home", str(tmp_path), "--registry", "memory", "call", "nosuch", "X.y", "--json", "--wait", "0"
    )
    assert code == 1
    assert json.loads(err)["error"]["code"] == 404


def test_bad_json_and_missing_module_are_usage_errors(tmp_path: Path) -> None:
    code, _, err = run_cli("--home", str(tmp_path), "--registry", "memory", "call", "s", "X.y", "{nope")
    assert (code, err.startswith("trimicro: the request is not valid JSON")) == (2, True)
    code, _, err = run_cli("--home", str(tmp_path), "run", str(tmp_path / "missing.py"))
    assert code == 2 and "no such file" in err


def test_run_finds_the_services_a_module_defines() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import services  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    assert {cls.__name__ for cls in services_of(services)} == {"Greeter", "Counter"}


def test_cli_tour_across_processes() -> None:
    """`trimicro run` in one process; services/describe/call/stream/nodes from others, over mDNS."""
    result = subprocess.run(
        [sys.executable, "examples/cli_demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "node demo-node at 127.0.0.1:" in out
    assert "counter  latest   1" in out and "greeter  latest   1" in out
    assert 'Greeter.hello           {"name": "str"}' in out
    assert '"Hello, Ada! (from node demo-node)"' in out
    assert "error 400 Bad Request: name must not be empty (from Greeter)\n(exit 1)" in out
    assert '"ONE"\n"TWO"\n(exit 0)' in out
    assert "demo-node  127.0.0.1:" in out and "alive" in out
    assert "greeting\thello from the store" in out  # store write then read, through the service
    assert "published on orders.created: 1 deliveries" in out
    assert 'subscriber printed: {"topic": "orders.created", "body": {"id": 7}' in out
    assert "(a JWT, EdDSA)" in out  # auth user add, then auth token
    assert 'Greeter.hello \'{"name": "Eve"}\'\nerror 403 Forbidden: forbidden' in out
    assert '--token $TOKEN\n"Hello, Alice! (from node demo-node)"' in out
    assert "SIGINT: deregistering and stopping" in out


@pytest.mark.parametrize("command", ["services", "nodes"])
def test_help_style_commands_parse(command: str) -> None:
    from trimicro.cluster.cli import build_parser

    args = build_parser().parse_args([command, "--json"])
    assert args.command == command and args.json


def test_publish_waits_less_for_interest_than_lookups_wait_for_discovery() -> None:
    """A publish with no subscriber anywhere waits its whole wait: it has a shorter default."""
    from trimicro.cluster.cli import PUBLISH_WAIT, WAIT, build_parser, wait_seconds

    parser = build_parser()
    call = parser.parse_args(["call", "greeter", "Greeter.hello", "{}"])
    publish = parser.parse_args(["publish", "orders.created", "{}"])
    assert (wait_seconds(call), wait_seconds(publish, PUBLISH_WAIT)) == (WAIT, PUBLISH_WAIT)
    assert PUBLISH_WAIT < WAIT
    given = parser.parse_args(["publish", "orders.created", "{}", "--wait", "7"])
    assert wait_seconds(given, PUBLISH_WAIT) == 7.0


class _Arriving:
    """A registry whose answers grow one service at a time, as mDNS answers arrive."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.calls = 0

    async def services(self) -> list[Service]:
        self.calls += 1
        return [Service(name=n) for n in self.names[: min(self.calls, len(self.names))]]


async def test_listing_every_service_waits_until_the_answers_stop_arriving(autojump_clock: Any) -> None:
    registry = _Arriving(["auth", "counter", "greeter", "store"])
    found = await wait_for(registry, None, wait=5.0)  # type: ignore[arg-type]
    assert sorted(s.name for s in found) == ["auth", "counter", "greeter", "store"]


async def test_listing_gives_what_it_has_when_the_wait_ends(autojump_clock: Any) -> None:
    registry = _Arriving([f"s{i}" for i in range(1000)])  # never settles
    found = await wait_for(registry, None, wait=1.0)  # type: ignore[arg-type]
    assert 5 <= len(found) == registry.calls < 1000  # the latest answer


class _SecondQuery:
    """One service at first; the rest only after a second, as mDNS's second query brings them."""

    def __init__(self) -> None:
        self.start = trio.current_time()

    async def services(self) -> list[Service]:
        names = ["auth"] if trio.current_time() - self.start < 1.1 else ["auth", "counter", "greeter"]
        return [Service(name=n) for n in names]


async def test_listing_waits_for_the_browsers_second_query(autojump_clock: Any) -> None:
    found = await wait_for(_SecondQuery(), None, wait=5.0)  # type: ignore[arg-type]
    assert sorted(s.name for s in found) == ["auth", "counter", "greeter"]


async def test_a_registry_that_answers_in_full_is_not_waited_on(autojump_clock: Any) -> None:
    start = trio.current_time()
    found = await wait_for(_Arriving(["auth"]), None, wait=5.0, listen=0.0)  # type: ignore[arg-type]
    assert [s.name for s in found] == ["auth"]
    assert trio.current_time() - start < 1.0  # (virtual time) settled, not LISTEN


class _Cluster:
    """A client's view of a cluster over virtual time: ``listing`` gives the services known at
    each moment (seconds since the first question) and ``describe`` looks one up in it."""

    def __init__(self, listing: Callable[[float], list[Service]]) -> None:
        self.listing = listing
        self.start = trio.current_time()

    async def services(self) -> list[Service]:
        await trio.lowlevel.checkpoint()
        return self.listing(trio.current_time() - self.start)

    async def describe(self, name: str) -> list[Service]:
        found = [s for s in await self.services() if s.name == name]
        if not found:
            raise NotFound(f"service {name} not found", id="registry")
        return found


def _svc(name: str, *nodes: str) -> Service:
    return Service(name=name, nodes=tuple(NodeInfo(n, f"127.0.0.1:{9000 + i}") for i, n in enumerate(nodes)))


async def test_a_lookup_of_a_service_nobody_serves_ends_once_the_listing_settles(
    autojump_clock: Any,
) -> None:
    """`trimicro call nosuch ...` used to wait out the whole 5 s before its 404."""
    cluster = _Cluster(lambda t: [_svc("auth", "n1"), _svc("greeter", "n1")])
    start = trio.current_time()
    with pytest.raises(NotFound, match="service nosuch not found"):
        await wait_for(cluster, "nosuch", wait=WAIT)  # type: ignore[arg-type]
    assert MISS <= trio.current_time() - start < WAIT  # (virtual time)


async def test_a_lookup_finds_a_service_that_arrives_with_the_second_query(autojump_clock: Any) -> None:
    """Other services answer at once, this one only after mDNS's second query (a responder
    holds back what it multicast in the last second): the lookup must not give up before."""

    def listing(t: float) -> list[Service]:
        return [_svc("auth", "n1")] + ([_svc("greeter", "n2")] if t >= 1.25 else [])

    found = await wait_for(_Cluster(listing), "greeter", wait=WAIT)  # type: ignore[arg-type]
    assert [s.name for s in found] == ["greeter"]


async def test_a_lookup_with_nobody_answering_waits_the_whole_wait(autojump_clock: Any) -> None:
    """No answer at all may be a node still starting: only a settled, non-empty listing
    says that the cluster has no such service."""
    start = trio.current_time()
    with pytest.raises(NotFound):
        await wait_for(_Cluster(lambda t: []), "greeter", wait=WAIT)  # type: ignore[arg-type]
    assert trio.current_time() - start >= WAIT


async def test_describe_waits_for_every_node_of_the_service(autojump_clock: Any) -> None:
    """`describe` showed only the nodes of the first mDNS answer."""

    def listing(t: float) -> list[Service]:
        return [_svc("greeter", *(["n1", "n2"] if t >= 1.1 else ["n1"]))]

    cluster = _Cluster(listing)
    [svc] = await wait_for(cluster, "greeter", wait=WAIT, complete=True)  # type: ignore[arg-type]
    assert sorted(n.id for n in svc.nodes) == ["n1", "n2"]
    [first] = await wait_for(_Cluster(listing), "greeter", wait=WAIT)  # type: ignore[arg-type]
    assert [n.id for n in first.nodes] == ["n1"]  # a call takes the first answer: any node will do
