"""Log records: the fields every record carries (node, actor, trace), the two formats, the rate
limit of repeated warnings, and the CLI's options."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from trimicro.actors import Actor, ask, start_node
from trimicro.actors.logs import FIELDS, configure, current_node, unconfigure
from trimicro.cluster.cli import main
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import MemoryRegistry
from trimicro.mailbox.logs import RATE_LIMIT, RateLimit, get_logger
from trimicro.testing import wait_member

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Records as JSON lines into a buffer, as ``trimicro run --log-format json`` writes them."""
    buffer = io.StringIO()
    configure("DEBUG", "json", buffer)
    try:
        yield buffer
    finally:
        unconfigure()


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class Talker(Actor):
    async def say(self, msg: str) -> str:
        logging.getLogger("app").info("handling %s", msg)
        return msg


async def test_records_name_the_node_and_the_actor_handling(json_log: io.StringIO) -> None:
    """Inside a handler: the actor's path and its node; in the node's own tasks and the block:
    the node; outside any node: neither. Before: a bare message."""
    logging.getLogger("app").info("before")
    async with start_node("n1") as node:
        ref = await node.spawn(Talker, name="talker")
        assert await ask(ref, "hi", endpoint="Talker.say") == "hi"
        logging.getLogger("app").info("in the block")
    records = {r["message"]: r for r in lines(json_log)}
    assert records["handling hi"]["node"] == "n1" and records["handling hi"]["actor"] == "/user/talker"
    assert (records["in the block"]["node"], records["in the block"]["actor"]) == ("n1", None)
    assert (records["before"]["node"], records["before"]["actor"]) == (None, None)
    assert current_node() is None  # the node's nursery is closed


async def test_two_nodes_in_one_process_keep_their_own_ids(json_log: io.StringIO) -> None:
    """Records of each node's own tasks (a timer's, not an actor's) name that node."""
    async with start_node("a") as a, start_node("b") as b:
        await ask(await a.spawn(Talker, name="t"), "from-a", endpoint="Talker.say")
        await ask(await b.spawn(Talker, name="t"), "from-b", endpoint="Talker.say")
        for node in (a, b):
            node.spawn_system(quiet_task, node.id)
        await trio.testing.wait_all_tasks_blocked()
    records = {r["message"]: r for r in lines(json_log)}
    assert records["handling from-a"]["node"] == "a" and records["handling from-b"]["node"] == "b"
    assert records["task of a"]["node"] == "a" and records["task of b"]["node"] == "b"
    assert records["task of a"]["actor"] is None


async def quiet_task(name: str) -> None:
    logging.getLogger("app").info("task of %s", name)


async def test_info_tells_membership_changes_addresses_and_registrations(
    json_log: io.StringIO, tmp_path: Path
) -> None:
    registry = MemoryRegistry()
    async with start_cluster("a", registry=registry, home=tmp_path) as a:
        await a.serve(Talker, name="talker")
        async with start_cluster("b", registry=registry, home=tmp_path) as b:
            await wait_member(a, "b", "alive")
            address = b.address
    infos = {(r["node"], r["logger"], r["message"]) for r in lines(json_log) if r["level"] == "INFO"}
    assert ("a", "trimicro.cluster.membership", "member b joined") in infos
    assert ("b", "trimicro.actors.remote", f"node b listening on {address}") in infos
    assert ("a", "trimicro.cluster", f"registered service talker version latest at {a.address}") in infos


def test_json_lines_have_the_stable_fields_and_the_trace_ids(json_log: io.StringIO) -> None:
    """Every line is one object with FIELDS in order; inside a span, its ids in hex; an
    exception and a message with newlines stay on one line."""
    log = logging.getLogger("app")
    span = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1)))
    with trace.use_span(span):
        log.warning("traced")
    log.info("untraced\nsecond line")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    text = json_log.getvalue()
    assert len(text.splitlines()) == 3
    traced, untraced, failed = lines(json_log)
    assert list(traced)[: len(FIELDS)] == list(FIELDS)
    assert (traced["trace_id"], traced["span_id"]) == (f"{0xABC:032x}", f"{0xDEF:016x}")
    assert (untraced["trace_id"], untraced["span_id"]) == (None, None)
    assert untraced["message"] == "untraced\nsecond line"
    assert traced["level"] == "WARNING" and traced["logger"] == "app"
    assert str(traced["time"]).endswith("Z") and "T" in str(traced["time"])
    assert "ValueError: boom" in str(failed["exception"])


async def test_text_lines_show_the_context_and_indent_what_follows() -> None:
    buffer = io.StringIO()
    configure("INFO", "text", buffer)
    try:
        async with start_node("n7"):
            logging.getLogger("app").warning("one\n2025-01-01T00:00:00.000Z ERROR forged")
    finally:
        unconfigure()
    first, second = buffer.getvalue().splitlines()
    assert first.endswith("WARNING [n7] app: one")
    assert second.startswith("    2025-01-01")  # a peer's newline cannot start a record of its own


def test_configure_refuses_unknown_levels_and_formats_and_undoes_itself() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with pytest.raises(ValueError, match="unknown log level"):
        configure("LOUD")
    with pytest.raises(ValueError, match="unknown log format"):
        configure("INFO", "xml")
    configure("debug", "json", io.StringIO())
    configure("INFO", "text", io.StringIO())  # replaces, does not add
    assert len(root.handlers) == len(before[1]) + 1 and root.level == logging.INFO
    unconfigure()
    assert (root.level, list(root.handlers)) == before


# ---- rate limit ---------------------------------------------------------------------------------


def test_repeated_warnings_are_bounded_and_the_rest_counted(json_log: io.StringIO) -> None:
    """1000 identical warnings through a library logger: the burst is written, the rest held
    back; once the bucket refills, the next one says how many were held back."""
    now = [0.0]
    limit = RateLimit(burst=3, interval=10.0, clock=lambda: now[0])
    log = logging.getLogger("trimicro.tests.flood")
    log.addFilter(limit)
    try:
        for i in range(1000):
            log.warning("peer %s refused", i)
        log.info("info is not limited")
        log.info("info is not limited")
        now[0] += 10.0
        log.warning("peer %s refused", 1000)
    finally:
        log.removeFilter(limit)
    records = lines(json_log)
    messages = [r["message"] for r in records]
    assert messages[:3] == ["peer 0 refused", "peer 1 refused", "peer 2 refused"]
    assert messages[3:5] == ["info is not limited"] * 2
    assert messages[5] == "peer 1000 refused (suppressed 997 similar)"
    assert records[5]["suppressed"] == 997 and len(records) == 6
    assert limit.suppressed == 997


def test_the_rate_limit_keeps_templates_apart_and_its_memory_bounded() -> None:
    limit = RateLimit(burst=1, interval=60.0, max_keys=100, clock=lambda: 0.0)

    def passes(msg: str, name: str = "trimicro.x") -> bool:
        return limit.filter(logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None))

    assert passes("a %s") and not passes("a %s")
    assert passes("b %s") and passes("a %s", name="trimicro.y")  # another template, another logger
    for i in range(10_000):  # templates from a peer's doing: memory stays bounded
        passes(f"t{i}")
    assert len(limit) == 100
    low = logging.LogRecord("trimicro.x", logging.INFO, __file__, 1, "a %s", None, None)
    assert all(limit.filter(low) for _ in range(10))


def test_library_loggers_follow_the_packages_and_carry_the_limit() -> None:
    from trimicro.actors.remote import remoting
    from trimicro.cluster.membership import seeds
    from trimicro.cluster.registry import mdns

    assert remoting.log.name == "trimicro.actors.remote"
    assert seeds.log.name == "trimicro.cluster.membership"
    assert mdns.log.name == "trimicro.cluster.registry"
    assert RATE_LIMIT in get_logger("trimicro.cluster.registry").filters
    with pytest.raises(ValueError):
        get_logger(None)


def test_no_print_in_the_library() -> None:
    """Diagnostics go through logging; only the CLI writes (its output) to a stream."""
    offenders = []
    for layer in ("mailbox", "actors", "cluster", "testing"):
        for path in (ROOT / layer).rglob("*.py"):
            if "cli" in path.relative_to(ROOT).parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.lstrip().startswith("print(") or " print(" in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert offenders == []


# ---- the CLI --------------------------------------------------------------------------------------


def test_cli_log_options_are_checked(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--home", str(tmp_path), "run", "x.py", "--log-level", "LOUD"], out, err)
    assert code == 2 and "unknown log level 'LOUD'" in err.getvalue()
    with pytest.raises(SystemExit):
        main(["--home", str(tmp_path), "run", "x.py", "--log-format", "xml"], out, io.StringIO())


def test_cli_logs_through_the_environment_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-shot command logs from WARNING up, as text by default, here as JSON by the
    environment; its error output is unchanged."""
    monkeypatch.setenv("TRIMICRO_LOG_FORMAT", "json")
    monkeypatch.setenv("TRIMICRO_LOG_LEVEL", "DEBUG")
    out, err = io.StringIO(), io.StringIO()
    level = logging.getLogger().level
    argv = ["--home", str(tmp_path), "--registry", "memory", "call", "nosuch", "X.y", "--wait", "0"]
    code = main(argv, out, err)
    assert code == 1
    logged = [json.loads(line) for line in err.getvalue().splitlines() if line.startswith("{")]
    assert any(r["logger"] == "trimicro.cluster.cli" and r["level"] == "DEBUG" for r in logged)
    assert err.getvalue().splitlines()[-1].startswith("error 404 Not Found")
    assert logging.getLogger().level == level  # restored on return


def test_printable_escapes_controls_and_backslashes_alike() -> None:
    """A peer's text is shown with its control characters escaped, and a backslash escaped too,
    so the six characters ``\\x1b[2J`` cannot pass for an escaped real ESC."""
    from trimicro.actors.logs import printable

    assert printable("node-1") == "node-1"
    assert printable("\x1b[2J") == "\\x1b[2J"
    assert printable("\\x1b[2J") == "\\\\x1b[2J"
    assert printable("\\x1b[2J") != printable("\x1b[2J")
