"""`trimicro top`: its numbers (rates and latency between two snapshots, percentiles from
buckets), a malformed snapshot, and the live screen in a pseudo-terminal against a real node
(the endpoint's name, count and rate appear after calls; `q` and Ctrl-C end it cleanly)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pexpect
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from trimicro.actors import BadRequest, ask, start_node
from trimicro.cluster.metrics.top import TopModel, quantile, render

BOUNDS = [0.001, 0.01, 0.1, 1.0]


def snapshot(t: float, requests: int, buckets: list[int], total: float, **extra: Any) -> dict[str, Any]:
    """A node's snapshot, as a node sends it, with one endpoint."""
    return {
        "node": "n1",
        "time": t,
        "uptime": t,
        "endpoints_enabled": True,
        "bounds": BOUNDS,
        "endpoints": [
            {
                "service": "Shop",
                "endpoint": "Shop.buy",
                "requests": requests,
                "errors": {"400": 1},
                "buckets": buckets,
                "sum": total,
                "backlog_max": 3,
            }
        ],
        "actors": 2,
        "mailboxes": {
            "queued": 4,
            "services": [{"service": "Shop", "queued": 4, "deepest": 4, "max": 9}],
            "deepest": [{"actor": "/user/shop", "depth": 4, "service": "Shop"}],
            "max": {"Shop": 9},
        },
        "dead_letters": {"total": 0, "reasons": {}},
        "failures": 0,
        "restarts": 0,
        "links": [],
        "link_totals": {"opened": 0, "closed": 0, "sent_bytes": 100 * requests, "received_bytes": 0},
        "members": {"states": {"alive": 2}, "transitions": {}},
        **extra,
    }


def test_quantiles_interpolate_within_the_bucket() -> None:
    assert quantile(0.5, BOUNDS, [0, 10, 0, 0, 0]) == pytest.approx(0.0055)
    assert quantile(0.99, BOUNDS, [100, 0, 0, 0, 0]) == pytest.approx(0.00099)
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0, 5]) == 1.0  # past the last bound: at least it
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0, 0]) is None


@given(st.lists(st.integers(0, 1000), min_size=5, max_size=5), st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_quantiles_are_ordered_and_within_the_bounds(counts: list[int], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    a, b = quantile(low, BOUNDS, counts), quantile(high, BOUNDS, counts)
    if sum(counts) == 0:
        assert a is None and b is None
        return
    assert a is not None and b is not None
    assert 0.0 <= a <= b <= BOUNDS[-1]


def test_rates_and_latency_are_those_of_the_last_round() -> None:
    model = TopModel()
    model.update({"n1": snapshot(100.0, 10, [10, 0, 0, 0, 0], 0.005)})
    first = model.endpoints()[0]
    assert (first.rate, first.requests, first.errors) == (None, 10, 1)  # one snapshot: no rate yet
    model.update({"n1": snapshot(102.0, 30, [10, 0, 20, 0, 0], 1.005)})
    row = model.endpoints()[0]
    assert row.rate == pytest.approx(10.0)  # 20 requests in 2 s
    assert row.mean == pytest.approx(0.05)  # 1 s over the round's 20
    assert row.p50 is not None and 0.01 < row.p50 <= 0.1  # the round's calls, not the first 10
    assert model.byte_rates(model.nodes["n1"]) == (pytest.approx(1000.0), pytest.approx(0.0))
    out = io.StringIO()
    Console(file=out, width=160).print(render(model, 2.0))
    screen = out.getvalue()
    assert "Shop.buy" in screen and "10.0" in screen and "/user/shop (4)" in screen and "2 alive" in screen


def test_endpoints_never_called_and_tops_own_requests_are_left_out() -> None:
    idle = snapshot(1.0, 0, [0, 0, 0, 0, 0], 0.0)
    idle["endpoints"].append({**idle["endpoints"][0], "service": "Metrics", "endpoint": "Metrics.snapshot"})
    idle["endpoints"][1]["requests"] = 7
    model = TopModel()
    model.update({"n1": idle})
    assert model.endpoints() == []


def test_a_node_that_fails_or_sends_garbage_is_an_error_row_not_a_crash() -> None:
    model = TopModel()
    bad = snapshot(1.0, 1, [1, 0, 0, 0, 0], 0.1)
    bad["endpoints"][0]["buckets"] = "nope"
    model.update({"n1": bad, "n2": "error 503: node n2 unreachable", "n3": {"endpoints": []}})
    assert {n: s.error for n, s in model.nodes.items()} == {
        "n1": "a malformed snapshot",
        "n2": "error 503: node n2 unreachable",
        "n3": "a malformed snapshot",
    }
    out = io.StringIO()
    Console(file=out, width=160).print(render(model, 1.0))
    assert "node n2 unreachable" in out.getvalue()
    model.update({"n1": snapshot(1.0, 1, [1, 0, 0, 0, 0], 0.1)})  # nodes not in a round go
    assert list(model.nodes) == ["n1"] and model.nodes["n1"].error == ""


#: What a hostile node could put in the strings of its snapshot: a screen clear, a window title,
#: a fake line, a bidirectional override, and rich markup and emoji codes.
EVIL = "\x1b[2J\x1b]0;pwned\x07x\nFAKE LINE\u202e[red]red[/red]:smile:"


async def test_a_peers_strings_are_escaped_not_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node ids, endpoints, paths, peers and errors reach the screen with control characters
    escaped and markup shown as text."""
    from trimicro.cluster.metrics import top

    evil = snapshot(1.0, 1, [1, 0, 0, 0, 0], 0.1)
    evil["endpoints"][0]["endpoint"] = EVIL
    evil["mailboxes"]["deepest"][0]["actor"] = EVIL
    evil["links"] = [
        {"peer": EVIL, "direction": "in", "sent_bytes": 1, "received_bytes": 1,
         "sent_frames": 1, "received_frames": 1, "pending": 0}
    ]  # fmt: skip

    async def poll(*args: Any) -> dict[str, Any]:
        return {"n1" + EVIL: evil, "n2": "error 503: " + EVIL}

    async def find() -> list[Any]:
        return []

    monkeypatch.setattr(top, "poll", poll)
    out = io.StringIO()
    assert await top.run_top(None, find, interval=0.01, once=True, out=out) == 0  # type: ignore[arg-type]
    text = out.getvalue()
    assert not any(c in text for c in "\x1b\x07\u202e")
    assert "\\x1b[2J" in text and "[red]red[/red]" in text  # shown, escaped, not obeyed
    assert not any(line.lstrip("│ ").startswith("FAKE") for line in text.splitlines())


class _Terminal(io.StringIO):
    """A screen that says it is a terminal: rich draws top's live view on it."""

    def isatty(self) -> bool:
        return True


async def test_the_live_view_signs_a_new_admin_token_before_the_first_one_expires(
    autojump_clock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Top runs for hours and each round's snapshots are admin-only: the headers of every round,
    well past the first token's lifetime, carry a token valid when it is sent."""
    from trimicro.cluster.auth import verify_token
    from trimicro.cluster.cli.common import ADMIN_TTL, admin_header_source
    from trimicro.cluster.metrics import top
    from trimicro.mailbox.secure.identity import dev_authority

    for name in ("TRIMICRO_TOKEN", "TRIMICRO_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    start = time.time()

    def clock() -> float:  # wall-clock time that runs with the test's virtual time
        return start + trio.current_time()

    trusted = [dev_authority(tmp_path).public_key]
    args = argparse.Namespace(home=str(tmp_path), token=None, audience=None)
    sent: list[tuple[float, str]] = []

    async def poll(
        node: Any, infos: Any, timeout: float, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        assert headers is not None
        sent.append((clock(), headers["authorization"].removeprefix("Bearer ")))
        return {}

    async def find() -> list[Any]:
        return []

    monkeypatch.setattr(top, "poll", poll)
    source = admin_header_source(args, clock=clock)
    with trio.move_on_after(2.2 * ADMIN_TTL):
        await top.run_top(None, find, interval=10.0, once=False, out=_Terminal(), headers=source)  # type: ignore[arg-type]
    assert sent[-1][0] - start > 2 * ADMIN_TTL  # the rounds went on past two lifetimes
    for at, token in sent:
        account = verify_token(token, trusted, now=at, leeway=0)  # raises if expired at `at`
        assert account.scopes == ("admin",)
    assert len({token for _, token in sent}) >= 4  # signed again every half lifetime


def test_a_given_token_is_used_as_given_however_long_top_runs() -> None:
    from trimicro.cluster.cli.common import admin_header_source

    args = argparse.Namespace(home=None, token="mine", audience=None)
    source = admin_header_source(args, clock=iter(range(0, 10**6, 1000)).__next__)
    assert [source() for _ in range(3)] == [{"authorization": "Bearer mine"}] * 3


# ---- the live screen, in a pseudo-terminal, against a real node --------------------------------

MODULE = """
from trimicro.actors import Actor, BadRequest


class Shop(Actor):
    service_name = {name!r}

    async def buy(self, body: dict) -> dict:
        if not body.get("item"):
            raise BadRequest("item is required")
        return {{"ok": body["item"]}}
"""

#: Bounds for a loaded 2-core machine; a clean run takes a fraction of each.
START = 60.0
SCREEN = 60.0
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def spawn(argv: list[str]) -> pexpect.spawn:
    """``argv`` in a 160x60 pseudo-terminal (rich reads the size from COLUMNS and LINES first)."""
    env = {**os.environ, "COLUMNS": "160", "LINES": "60", "TERM": "xterm-256color"}
    return pexpect.spawn(argv[0], argv[1:], dimensions=(60, 160), timeout=SCREEN, env=env)


def cli(home: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(home), *argv]


async def _calls(home: Path, address: str, node: str, service: str, good: int, bad: int) -> None:
    async with start_node(f"caller-{uuid.uuid4().hex[:6]}", home=home) as caller:
        await caller.connect(address)
        ref = caller.remote_ref(node, service.lower())  # run serves it under its name in lower case
        for i in range(good):
            await ask(ref, {"item": str(i)}, endpoint=f"{service}.buy")
        for _ in range(bad):
            with pytest.raises(BadRequest):
                await ask(ref, {}, endpoint=f"{service}.buy")


class Screen:
    """What a child in a pseudo-terminal has drawn, without the escape sequences."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.text = ""

    def wait_for(self, found: Any, what: str, deadline: float = SCREEN) -> Any:
        """Read until ``found(text)`` returns something true; return it."""
        raw = b""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            with contextlib.suppress(pexpect.TIMEOUT):
                raw += self.child.read_nonblocking(65536, timeout=0.5)
            self.text = ANSI.sub(b"", raw).decode("utf-8", "replace")
            result = found(self.text)
            if result:
                return result
        raise AssertionError(f"{what} never appeared on the screen:\n{self.text[-3000:]}")


def _rows(text: str, endpoint: str) -> list[list[str]]:
    """The table rows of ``endpoint``: their cells, in the order drawn."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if endpoint in cells:
            rows.append(cells[cells.index(endpoint) :])
    return rows


@pytest.fixture
def node(tmp_path: Path) -> Any:
    """A `trimicro run --metrics` process serving a uniquely named service: (home, node, service,
    address)."""
    service = f"Shop{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"svc_{service.lower()}.py"
    module.write_text(MODULE.format(name=service))
    name = f"top-{uuid.uuid4().hex[:8]}"
    argv = cli(tmp_path, "run", str(module), "--name", name, "--metrics", "127.0.0.1:0")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines[1].startswith(f"node {name} at "), lines
        address = lines[1].split(" at ", 1)[1].split(" ", 1)[0]
        yield tmp_path, name, service, address
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_top_shows_endpoints_and_rates_and_quits_on_q(node: Any) -> None:
    home, name, service, address = node
    endpoint = f"{service}.buy"
    trio.run(_calls, home, address, name, service, 5, 0)
    argv = cli(home, "top", name, "--interval", "0.5", "--wait", str(START))
    child = spawn(argv)
    try:
        screen = Screen(child)
        first = screen.wait_for(lambda t: _rows(t, endpoint), f"{endpoint}'s row")[-1]
        assert first[2] == "5"  # requests: the calls made before top started
        trio.run(_calls, home, address, name, service, 20, 2)

        def busy(text: str) -> list[str] | None:
            # The first frame that counts all 27 calls: some came in its round, so its rate is > 0.
            done = [r for r in _rows(text, endpoint) if r[2] == "27"]
            return done[0] if done else None

        row = busy(screen.text) or screen.wait_for(busy, "the calls made while top ran")
        assert float(row[1]) > 0  # req/s
        assert row[3] == "2"  # errors
        assert name in screen.text and "req/s" in screen.text
        child.send("q")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, screen.text[-2000:]


def test_top_ends_cleanly_on_ctrl_c_and_prints_json_for_scripts(node: Any) -> None:
    home, name, service, address = node
    trio.run(_calls, home, address, name, service, 3, 1)
    snapshots = json.loads(
        subprocess.run(
            cli(home, "top", name, "--json", "--wait", str(START)),
            capture_output=True,
            text=True,
            timeout=START,
            check=True,
        ).stdout
    )
    buy = next(e for e in snapshots[name]["endpoints"] if e["endpoint"] == f"{service}.buy")
    assert (buy["requests"], buy["errors"]) == (4, {"400": 1})
    argv = cli(home, "top", "--interval", "0.5", "--wait", str(START))
    child = spawn(argv)
    try:
        Screen(child).wait_for(lambda t: f"{service}.buy" in t, "the endpoint")
        child.sendintr()
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_top_in_a_joined_home_asks_for_an_admins_token(tmp_path: Path) -> None:
    """A snapshot is admin data: without the authority key to sign an admin token, top says
    to give one instead of failing on every node."""
    (tmp_path / "authorities.pub").write_text("00" * 32 + "\n")  # joined: no authority key here
    done = subprocess.run(
        cli(tmp_path, "top", "--once", "--wait", "0"), capture_output=True, text=True, timeout=START
    )
    assert done.returncode == 2 and "--token" in done.stderr, done.stderr
