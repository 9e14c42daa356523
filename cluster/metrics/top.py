"""``trimicro top``: a live view of one node or the whole cluster, refreshed in place.

Each round asks every node shown for its snapshot (``Metrics.snapshot``, :mod:`.service`)
over the cluster's links, all at once and each within the round's deadline, and shows what
changed since the previous round: endpoints by request rate with their latency in the round
(mean and percentiles from the histogram's buckets), the deepest mailboxes, the links and the
bytes they carry per second, and per node its actors, dead letters, restarts and membership.
A node that does not answer is shown with its error, and asked again next round.

Rendering is rich's (the ``metrics`` extra): a ``Live`` display on the terminal's alternate
screen, as top's, redrawn once per round; ``q`` or Ctrl-C ends it and gives the terminal back as
it was. :class:`TopModel` (numbers to rows) and :func:`render` (rows to tables) do no I/O, so
they are tested without a terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

import attrs
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from trimicro.actors import Node, ask
from trimicro.actors.lowlevel import printable
from trimicro.cluster.registry import NodeInfo
from trimicro.mailbox.errors import MicroError

from .catalog import Snapshot
from .service import METRICS_PATH

__all__ = ["TopModel", "poll", "quantile", "render", "run_top"]

#: Rows shown at most per table (the busiest first).
ENDPOINT_ROWS = 20
MAILBOX_ROWS = 10
LINK_ROWS = 12
#: Nodes asked at most per round.
MAX_NODES = 64
#: The service of the metrics actor: its requests are top's own, and left out of the view.
OWN_SERVICE = "Metrics"
#: Columns of the screen printed when the output is not a terminal (``--once`` into a file).
PRINT_WIDTH = 140
#: Rounds between two lookups of the cluster's nodes (new ones appear, gone ones go).
REDISCOVER = 5


def quantile(q: float, bounds: list[float], counts: list[int]) -> float | None:
    """The ``q`` quantile of a histogram (non-cumulative ``counts``, the last one past every
    bound), interpolated within its bucket as Prometheus' ``histogram_quantile`` does; the
    last bound when it falls past it; ``None`` without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1] if bounds else None
            low = bounds[i - 1] if i else 0.0
            # min(): low + (high - low) * 1.0 can round to just past ``high``.
            return min(bounds[i], low + (bounds[i] - low) * (rank - seen) / n)
        seen += n
    return bounds[-1] if bounds else None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.1f}ms"
    return f"{value:.2f}s"


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GB"  # pragma: no cover


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@attrs.define
class _NodeState:
    snap: Snapshot | None = None
    prev: Snapshot | None = None
    error: str = ""


@attrs.frozen
class EndpointRow:
    node: str
    endpoint: str
    rate: float | None
    requests: int
    errors: int
    mean: float | None
    p50: float | None
    p99: float | None
    backlog_max: int


class TopModel:
    """Snapshots in, rows out: what changed between each node's last two snapshots."""

    def __init__(self) -> None:
        self.nodes: dict[str, _NodeState] = {}

    def update(self, results: dict[str, Snapshot | str]) -> None:
        """Take one round's answers: a snapshot, or an error's text, per node id."""
        for node_id in list(self.nodes):
            if node_id not in results:
                del self.nodes[node_id]
        for node_id, result in _shown(results).items():
            state = self.nodes.setdefault(node_id, _NodeState())
            if isinstance(result, str):
                state.error = result
            elif _readable(result):
                state.prev, state.snap, state.error = state.snap, result, ""
            else:
                state.error = "a malformed snapshot"

    @staticmethod
    def _elapsed(state: _NodeState) -> float | None:
        if state.snap is None or state.prev is None:
            return None
        elapsed = float(state.snap["time"]) - float(state.prev["time"])
        return elapsed if elapsed > 0 else None

    def endpoints(self) -> list[EndpointRow]:
        rows = []
        for node_id, state in sorted(self.nodes.items()):
            if state.snap is None:
                continue
            bounds = [float(b) for b in state.snap.get("bounds", [])]
            elapsed = self._elapsed(state)
            before = {e["endpoint"]: e for e in (state.prev or {}).get("endpoints", [])}
            for e in state.snap["endpoints"]:
                if e["service"] == OWN_SERVICE or not int(e["requests"]):  # top's own; never called
                    continue
                buckets = [int(n) for n in e["buckets"]]
                old = before.get(e["endpoint"])
                rate = None
                window, spent = buckets, float(e["sum"])
                if elapsed is not None:
                    old_buckets = [int(n) for n in old["buckets"]] if old else [0] * len(buckets)
                    rate = (int(e["requests"]) - (int(old["requests"]) if old else 0)) / elapsed
                    delta = [a - b for a, b in zip(buckets, old_buckets, strict=False)]
                    if sum(delta) > 0:  # latency of this round; of all time when it was idle
                        window, spent = delta, float(e["sum"]) - (float(old["sum"]) if old else 0.0)
                count = sum(window)
                rows.append(
                    EndpointRow(
                        node_id,
                        str(e["endpoint"]),
                        rate,
                        int(e["requests"]),
                        sum(int(n) for n in e["errors"].values()),
                        spent / count if count else None,
                        quantile(0.5, bounds, window),
                        quantile(0.99, bounds, window),
                        int(e.get("backlog_max", 0)),
                    )
                )
        rows.sort(key=lambda r: (-(r.rate or 0.0), -r.requests, r.node, r.endpoint))
        return rows

    def byte_rates(self, state: _NodeState) -> tuple[float | None, float | None]:
        elapsed = self._elapsed(state)
        if elapsed is None or state.snap is None or state.prev is None:
            return None, None
        now, before = state.snap["link_totals"], state.prev["link_totals"]
        return (
            (now["sent_bytes"] - before["sent_bytes"]) / elapsed,
            (now["received_bytes"] - before["received_bytes"]) / elapsed,
        )


#: Nesting a snapshot may have (it has 4): deeper is malformed, and is not walked.
MAX_DEPTH = 8


def _shown(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it (keys too) escaped for the terminal
    (:func:`~trimicro.actors.lowlevel.printable`): node ids, paths, peers and errors come from
    other nodes, and a control sequence in one must not drive the screen."""
    if isinstance(value, str):
        return printable(value)
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, dict):
        return {_shown(k, depth + 1): _shown(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v, depth + 1) for v in value]
    return value


def _readable(snap: Any) -> bool:
    """Whether every table can be drawn from ``snap`` (it comes from another node: a malformed
    one is shown as an error, never a crash)."""
    if not isinstance(snap, dict):
        return False
    alone = TopModel()
    alone.nodes["-"] = _NodeState(snap)
    try:
        float(snap["time"])
        for table in (_nodes_table, _endpoints_table, _mailboxes_table, _links_table):
            table(alone)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return False
    return True


def _members(snap: Snapshot) -> str:
    members = snap.get("members")
    if not members:
        return "-"
    return " ".join(f"{n} {state}" for state, n in sorted(members["states"].items()))


def _nodes_table(model: TopModel) -> Table:
    table = Table(title="nodes", title_justify="left", expand=True)
    for name in ("node", "uptime", "actors", "queued", "links", "sent/s", "recv/s", "dead letters",
                 "restarts", "members"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("node", "members") else "right")
    for node_id, state in sorted(model.nodes.items()):
        snap = state.snap
        if snap is None:
            table.add_row(node_id, Text(state.error, style="red"))
            continue
        sent, received = model.byte_rates(state)
        table.add_row(
            node_id + (f" ({state.error})" if state.error else ""),
            f"{float(snap['uptime']):.0f}s",
            str(snap["actors"]),
            str(snap["mailboxes"]["queued"]),
            str(len(snap["links"])),
            "-" if sent is None else _bytes(sent),
            "-" if received is None else _bytes(received),
            str(snap["dead_letters"]["total"]),
            str(snap["restarts"]),
            _members(snap),
        )
    return table


def _endpoints_table(model: TopModel) -> Table:
    table = Table(title="endpoints (busiest first)", title_justify="left", expand=True)
    for name in ("node", "endpoint", "req/s", "requests", "errors", "mean", "p50", "p99", "backlog max"):
        table.add_column(name, justify="left" if name in ("node", "endpoint") else "right")
    for row in model.endpoints()[:ENDPOINT_ROWS]:
        table.add_row(
            row.node,
            row.endpoint,
            _rate(row.rate),
            str(row.requests),
            Text(str(row.errors), style="red" if row.errors else ""),
            _seconds(row.mean),
            _seconds(row.p50),
            _seconds(row.p99),
            str(row.backlog_max),
        )
    for node_id, state in sorted(model.nodes.items()):
        if state.snap is not None and not state.snap.get("endpoints_enabled"):
            off = Text("endpoint metrics are off (run the node with --metrics)", style="dim")
            table.add_row(node_id, off)
    return table


def _mailboxes_table(model: TopModel) -> Table:
    """Services whose mailboxes hold messages now or did (high-water mark), fullest first."""
    table = Table(title="mailboxes (by service)", title_justify="left", expand=True)
    for name in ("node", "service", "queued", "deepest now", "high-water"):
        table.add_column(name, justify="left" if name in ("node", "service", "deepest now") else "right")
    rows = []
    for node_id, state in model.nodes.items():
        if state.snap is None:
            continue
        boxes = state.snap["mailboxes"]
        deepest = {str(b["service"]): f"{b['actor']} ({int(b['depth'])})" for b in reversed(boxes["deepest"])}
        for svc in boxes["services"]:
            queued, high = int(svc["queued"]), int(svc["max"])
            if queued or high:
                name = str(svc["service"])
                rows.append((queued, high, node_id, name, deepest.get(name, "")))
    rows.sort(key=lambda r: (-r[0], -r[1], r[2], r[3]))
    for queued, high, node_id, name, deepest_now in rows[:MAILBOX_ROWS]:
        table.add_row(node_id, name, str(queued), deepest_now, str(high))
    if not rows:
        table.add_row("", Text("no message has waited in a mailbox", style="dim"))
    return table


def _links_table(model: TopModel) -> Table:
    table = Table(title="links", title_justify="left", expand=True)
    for name in ("node", "peer", "dir", "sent", "received", "frames out", "frames in", "asks out"):
        table.add_column(name, justify="left" if name in ("node", "peer", "dir") else "right")
    rows = []
    for node_id, state in sorted(model.nodes.items()):
        for link in (state.snap or {}).get("links", []):
            rows.append((node_id, link))
    rows.sort(key=lambda r: -(int(r[1]["sent_bytes"]) + int(r[1]["received_bytes"])))
    for node_id, link in rows[:LINK_ROWS]:
        table.add_row(
            node_id,
            str(link["peer"]),
            str(link["direction"]),
            _bytes(int(link["sent_bytes"])),
            _bytes(int(link["received_bytes"])),
            str(link["sent_frames"]),
            str(link["received_frames"]),
            str(link["pending"]),
        )
    return table


def render(model: TopModel, interval: float) -> RenderableType:
    """The screen: a header, then nodes, endpoints, mailboxes and links."""
    header = Text(
        f"trimicro top  {len(model.nodes)} node(s)  {time.strftime('%H:%M:%S')}  "
        f"every {interval:g}s  (q quits)",
        style="bold",
    )
    return Group(
        header,
        _nodes_table(model),
        _endpoints_table(model),
        _mailboxes_table(model),
        _links_table(model),
    )


async def poll(
    node: Node, infos: list[NodeInfo], timeout: float, headers: dict[str, str] | None = None
) -> dict[str, Snapshot | str]:
    """Every node's snapshot (or its error's text), asked all at once within ``timeout``, with
    ``headers`` (an admin's ``authorization``: a snapshot is admin data)."""
    results: dict[str, Snapshot | str] = {}

    async def one(info: NodeInfo) -> None:
        peer = node.remote.peer(info.id)
        if peer.address is None and info.address:
            peer.address = info.address  # a hint: the handshake checks the node id
        try:
            ref = node.remote_ref(info.id, METRICS_PATH)
            results[info.id] = await ask(
                ref, None, endpoint="Metrics.snapshot", timeout=timeout, headers=headers
            )
        except MicroError as exc:
            results[info.id] = f"error {exc.code}: {exc.detail}"

    async with trio.open_nursery() as nursery:
        for info in infos[:MAX_NODES]:
            nursery.start_soon(one, info)
    return results


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys arrive one by one, unechoed; Ctrl-C still signals), restored
    after; ``None`` when stdin is not a terminal."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        fd = -1
    if fd < 0 or not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _until_quit(
    fd: int | None, done: trio.CancelScope, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``done`` at ``q`` on the terminal or at SIGINT/SIGTERM (Ctrl-C); started once
    the signals are taken over, so that a Ctrl-C from then on ends top cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    done.cancel()
                    return

            nursery.start_soon(on_signal)
            while fd is not None:
                await trio.lowlevel.wait_readable(fd)
                data = os.read(fd, 64)  # readable: returns at once
                if not data or b"q" in data.lower():
                    done.cancel()
                    return
            await trio.sleep_forever()


async def run_top(
    node: Node,
    find: Callable[[], Awaitable[list[NodeInfo]]],
    *,
    interval: float,
    once: bool,
    out: TextIO,
    headers: Callable[[], dict[str, str] | None] | None = None,
) -> int:
    """Show the nodes ``find`` returns (asked again every few rounds) until ``q`` or Ctrl-C;
    with ``once`` (or when ``out`` is not a terminal), print one screen after two rounds and
    return.

    ``headers`` is asked for each round's headers: top runs for hours, and a token signed at
    the start would expire under it (see ``trimicro.cluster.cli.common.admin_header_source``).
    """
    round_headers = headers or (lambda: None)
    model = TopModel()
    # No markup or emoji codes: "[...]" and ":...:" in a peer's strings are shown as they are.
    console = Console(file=out, markup=False, emoji=False)
    live_view = console.is_terminal and not once
    if not console.is_terminal:
        console = Console(file=out, width=PRINT_WIDTH, markup=False, emoji=False)
    keys = _keys() if live_view else contextlib.nullcontext(None)
    with keys as fd, trio.CancelScope() as done:
        async with trio.open_nursery() as nursery:
            await nursery.start(_until_quit, fd, done)
            infos = await find()
            model.update(await poll(node, infos, max(1.0, interval), round_headers()))
            if not live_view:
                await trio.sleep(interval)
                model.update(await poll(node, infos, max(1.0, interval), round_headers()))
                console.print(render(model, interval))
                nursery.cancel_scope.cancel()
                return 0
            with Live(render(model, interval), console=console, screen=True, auto_refresh=False) as live:
                rounds = 0
                while True:
                    await trio.sleep(interval)
                    rounds += 1
                    if rounds % REDISCOVER == 0:
                        with contextlib.suppress(MicroError):
                            infos = await find()
                    model.update(await poll(node, infos, max(1.0, interval), round_headers()))
                    live.update(render(model, interval), refresh=True)
    return 0
