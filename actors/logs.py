"""Log records that say where they come from: node, actor, trace; as text or as JSON lines.

:class:`ContextFilter`, on a handler, gives every record that reaches it (the library's and the
application's alike) four attributes, read when the record is made, never on the message path:

- ``node``: the id of the node whose task logged it, found when the record is made by walking
  up trio's task tree to the nursery :func:`~trimicro.actors.start_node` registered
  (:func:`register_node`): every task of the node (links, timers, membership, actors) and the
  task running the node's ``async with`` block. Not a context variable: nothing changes on the
  message path, not even the size of the contexts that the runtime's own per-message context
  variables are set in (each set copies the context's mapping);
- ``actor``: the path of the actor whose handler (or hook) is running, from the runtime's own
  :data:`~trimicro.actors.lowlevel.current_cell` (``None`` outside one);
- ``trace_id`` and ``span_id`` (hex) of the current OpenTelemetry span, when opentelemetry is
  installed and a span is recording or was propagated (``None`` otherwise).

:class:`JsonFormatter` writes one JSON object per line with the stable fields of
:data:`FIELDS` (docs/observability.md lists them); :class:`TextFormatter` one line for people.
:func:`configure` installs either on the root logger (what ``trimicro run --log-level
--log-format`` does); an application with its own logging setup adds the filter and a
formatter to its handler instead. Repeated warnings are rate-limited on the library's loggers
(:mod:`trimicro.mailbox.logs`). :func:`printable` makes text another node sent safe to show on
a terminal (the CLI's ``health`` and ``top`` print node names, paths and errors through it).

A public namespace for applications, as :mod:`trimicro.actors.middleware` is.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import logging
import sys
import weakref
from typing import Any, TextIO

import trio

from .lifecycle import get_cell

__all__ = [
    "FIELDS",
    "FORMATS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "current_node",
    "parse_level",
    "printable",
    "register_node",
    "unconfigure",
]


def printable(text: str) -> str:
    """``text`` (from a peer: a node name, an actor path, an error's detail) with every control,
    format or unassigned character escaped (``\\x1b``, ``\\n``, ``\\u202e``), so printing it
    can neither move the cursor, recolour, retitle or clear a terminal, nor fake a line of its
    own, nor reorder what is shown (bidirectional overrides). Other text is kept as it is."""
    if text.isprintable() and "\\" not in text:  # the usual case, checked in C
        return text
    # A backslash is escaped too, so the text "\\x1b" cannot pass for an escaped ESC.
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def _escape(char: str) -> str:
    return repr(char)[1:-1]  # repr escapes exactly what str.isprintable refuses


#: Each running node's nursery -> its id (weak: a stopped node's nursery goes with it).
_nurseries: weakref.WeakKeyDictionary[trio.Nursery, str] = weakref.WeakKeyDictionary()


def register_node(nursery: trio.Nursery, node_id: str) -> None:
    """Records made in ``nursery``'s tasks (and below) name ``node_id``: ``start_node`` registers
    its nursery, and a layer that runs a node's tasks in a nursery of its own (the cluster's)
    registers that one too, so that with several nodes in one task each finds its own."""
    _nurseries[nursery] = node_id


def current_node() -> str | None:
    """The node the running trio task belongs to: the nearest registered nursery above it, or
    one the task itself (or an ancestor) opened; ``None`` outside any node or outside trio."""
    try:
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
    except RuntimeError:
        return None
    nurseries = _nurseries
    if not nurseries:
        return None
    while task is not None:
        for nursery in reversed(task.child_nurseries):  # the task running an ``async with`` block
            found = nurseries.get(nursery)
            if found is not None:
                return found
        parent = task.parent_nursery
        if parent is None:
            return None
        found = nurseries.get(parent)
        if found is not None:
            return found
        task = parent.parent_task
    return None


#: The fields of every JSON line, in this order (``exception``, ``stack`` and ``suppressed``
#: follow when the record has them).
FIELDS = ("time", "level", "logger", "message", "node", "actor", "trace_id", "span_id")
FORMATS = ("text", "json")


@functools.cache
def _opentelemetry_trace() -> Any:
    """``opentelemetry.trace`` if installed (an optional dependency: imported by name, so the
    library neither needs it nor type-checks against it), imported at the first record the
    filter sees: a node that logs nothing never loads it."""
    try:
        return importlib.import_module("opentelemetry.trace")
    except ImportError:
        return None


def _trace_ids() -> tuple[str | None, str | None]:
    otel = _opentelemetry_trace()
    if otel is None:
        return None, None
    context = otel.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class ContextFilter(logging.Filter):
    """Adds ``node``, ``actor``, ``trace_id`` and ``span_id`` to each record; drops none.

    Put it on a handler (a logger's filters see only the records logged on that logger).
    Attributes a record already has (given with ``extra=``) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "node"):
            cell = get_cell()
            if cell is not None:
                record.node = cell.node.id
                record.actor = cell.path
            else:
                record.node = current_node()
                record.actor = None
        elif not hasattr(record, "actor"):
            record.actor = None
        if not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = _trace_ids()
        return True


def _time(record: logging.LogRecord) -> str:
    """RFC 3339 in UTC with milliseconds: ``2025-06-01T10:00:00.123Z``."""
    moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: :data:`FIELDS` always (``null`` when unknown), then
    ``exception`` (the formatted traceback), ``stack`` and ``suppressed`` when present. A
    newline in a message is escaped by JSON, so a line is always one record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": getattr(record, "node", None),
            "actor": getattr(record, "actor", None),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        suppressed = getattr(record, "suppressed", None)
        if suppressed:
            doc["suppressed"] = suppressed
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2025-06-01T10:00:00.123Z INFO    [n1 /user/greeter] trimicro.cluster: message``.

    The bracket holds the node, the actor and ``trace=... span=...`` when known. Lines after the
    first (a traceback, a message with newlines, perhaps from a peer) are indented, so no line
    of a message can pass for a record of its own."""

    def format(self, record: logging.LogRecord) -> str:
        where = [
            str(part)
            for part in (getattr(record, "node", None), getattr(record, "actor", None))
            if part is not None
        ]
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            where.append(f"trace={trace_id} span={getattr(record, 'span_id', None)}")
        context = f" [{' '.join(where)}]" if where else ""
        text = f"{_time(record)} {record.levelname:<7}{context} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text.replace("\n", "\n    ")


def parse_level(level: str | int) -> int:
    """A level name (any case) or number; ``ValueError`` names the choices."""
    if isinstance(level, int):
        return level
    text = level.strip()
    if text.isdigit():
        return int(text)
    value = logging.getLevelName(text.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}: DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


_installed: list[tuple[logging.Handler, int]] = []


def configure(
    level: str | int = logging.INFO, format: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Log to ``stream`` (stderr) from ``level`` up, as ``format`` (``text`` or ``json``), with
    :class:`ContextFilter`: one handler on the root logger, so the application's records get
    the same fields. Python warnings are logged too. A second call replaces the first."""
    if format not in FORMATS:
        raise ValueError(f"unknown log format {format!r}: text or json")
    number = parse_level(level)
    unconfigure()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    _installed.append((handler, root.level))
    root.addHandler(handler)
    root.setLevel(number)
    logging.captureWarnings(True)
    return handler


def unconfigure() -> None:
    """Undo :func:`configure` (the root logger's level as it was)."""
    root = logging.getLogger()
    while _installed:
        handler, level = _installed.pop()
        root.removeHandler(handler)
        root.setLevel(level)
        logging.captureWarnings(False)
