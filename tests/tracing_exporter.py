"""A span exporter for the tests that trace across processes.

Each process appends its finished spans to ``$TRIMICRO_TEST_SPANS/spans-<pid>.jsonl``, one JSON
object a line, with the ids as hex and the times in nanoseconds (the test compares them across
processes of one machine, one clock). The test makes it an exporter the ``trimicro`` command
can be told to use (``OTEL_TRACES_EXPORTER=trimicro_test_jsonl``) the way any third-party
exporter is found: an entry point in the ``opentelemetry_traces_exporter`` group, here of a
throwaway distribution the test writes on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def row(span: ReadableSpan) -> dict[str, Any]:
    assert span.context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "start": span.start_time,
        "end": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [f"{link.context.span_id:016x}" for link in span.links],
        "service": span.resource.attributes.get("service.name"),
        "pid": os.getpid(),
    }


class JsonLinesExporter(SpanExporter):
    def __init__(self) -> None:
        self.path = Path(os.environ["TRIMICRO_TEST_SPANS"]) / f"spans-{os.getpid()}.jsonl"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self.path.open("a") as out:
            for span in spans:
                out.write(json.dumps(row(span), default=str) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass
