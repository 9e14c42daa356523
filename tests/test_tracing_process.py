"""One trace across four real processes: gateway -> service A -> service B -> a subscriber.

Every process is the ``trimicro`` command (``api``, ``run`` twice, ``subscribe``), which sets up
the OpenTelemetry SDK from ``OTEL_*`` variables (cluster/tracing.py). Each exports its spans to
a file of its own through an exporter found by name in the ``opentelemetry_traces_exporter``
entry-point group, as a third-party exporter would be (tests/tracing_exporter.py); the files
are complete once the processes have exited (the SDK flushes at exit). The test sends the
HTTP request with a ``traceparent`` of its own, so it knows the trace to look for, and checks
its tree: each span the child of the one before, in the process that should have made it,
each inside its parent's time, the subscriber's ``process`` span linked to the ``publish``.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from procs import Proc, python_process

TESTS = Path(__file__).resolve().parent
EXPORTER = "trimicro_test_jsonl"


def install_exporter(site: Path) -> None:
    """A distribution on ``site`` that registers tests/tracing_exporter.py's exporter by name."""
    dist = site / "trimicro_test_exporter-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: trimicro-test-exporter\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        f"[opentelemetry_traces_exporter]\n{EXPORTER} = tracing_exporter:JsonLinesExporter\n"
    )


def read_spans(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(folder.glob("spans-*.jsonl")) for line in path.open()]


async def exited(*procs: Proc) -> None:
    with trio.fail_after(30):
        for proc in procs:
            assert await proc.proc.wait() == 0


async def test_gateway_to_a_to_b_to_a_subscriber_is_one_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site, spans = tmp_path / "site", tmp_path / "spans"
    spans.mkdir()
    install_exporter(site)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(site), str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", EXPORTER)
    monkeypatch.setenv("TRIMICRO_TEST_SPANS", str(spans))
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_SAMPLER", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    cli = ["-m", "trimicro.cluster.cli", "--home", str(tmp_path / "home")]
    registry = ["--registry", f"mdns://?type=_t{uuid.uuid4().hex[:10]}._tcp.local."]
    async with (
        python_process(*cli, "run", str(TESTS / "tracing_back.py"), *registry) as back,
        python_process(*cli, "run", str(TESTS / "tracing_front.py"), *registry) as front,
        python_process(*cli, "subscribe", "shipped", "--count", "1", *registry) as subscriber,
        python_process(*cli, "api", "--address", "127.0.0.1:0", *registry) as gateway,
    ):
        with trio.fail_after(60):
            assert "serving back" in await back.line()
            assert "serving front" in await front.line()
            line = await gateway.line()
        url = line.split(" at ", 1)[1].split()[0]
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            last: Any = None
            with trio.move_on_after(90) as waited:
                while True:  # until the gateway knows front and back knows the subscriber (no sync point)
                    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
                    r = await http.post(
                        "/api/front/order",
                        json={"item": "tea"},
                        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
                    )
                    if r.status_code == 200 and r.json() == 1:
                        break
                    last = (r.status_code, r.text)
                    assert r.status_code in (200, 404, 503), r.text
                    await trio.sleep(0.2)
            assert not waited.cancelled_caught, last
        with trio.fail_after(30):
            delivered = json.loads(await subscriber.line())
        assert delivered["body"] == {"item": "tea"}
        assert delivered["headers"]["traceparent"].split("-")[1] == trace_id
        for proc in (gateway, front, back):
            proc.signal(signal.SIGINT)
        await exited(gateway, front, back, subscriber)

    tree = [s for s in read_spans(spans) if s["trace_id"] == trace_id]
    order = [
        ("POST /api/{service}/{endpoint:path}", "SERVER", "trimicro-api"),
        ("Front/order", "CLIENT", "trimicro-api"),
        ("Front/order", "SERVER", "tracing_front"),
        ("Back/ship", "CLIENT", "tracing_front"),
        ("Back/ship", "SERVER", "tracing_back"),
        ("publish shipped", "PRODUCER", "tracing_back"),
        ("process shipped", "CONSUMER", "trimicro-subscribe"),
    ]
    assert sorted((s["name"], s["kind"], s["service"]) for s in tree) == sorted(order), tree
    chain = [next(s for s in tree if (s["name"], s["kind"], s["service"]) == key) for key in order]
    assert chain[0]["parent_id"] == parent_id  # the HTTP client's span
    for parent, child in itertools.pairwise(chain):
        assert child["parent_id"] == parent["span_id"], (parent["name"], child["name"])
    for outer, inner in itertools.pairwise(chain[:-1]):  # the calls nest in time
        assert outer["start"] <= inner["start"] <= inner["end"] <= outer["end"], (
            outer["name"],
            inner["name"],
        )
    publish, process = chain[5], chain[6]
    assert process["links"] == [publish["span_id"]]  # and links to its creation context
    assert publish["start"] <= process["start"]
    assert len({s["pid"] for s in chain}) == 4  # gateway, A, B, subscriber
    assert chain[0]["attributes"]["http.response.status_code"] == 200
    assert chain[4]["attributes"]["rpc.service"] == "Back" and chain[4]["attributes"]["rpc.method"] == "ship"
    assert all(s["status"] == "UNSET" for s in chain)


def test_the_cli_refuses_an_exporter_nobody_provides(tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "OTEL_TRACES_EXPORTER": "no_such_exporter"}
    out = subprocess.run(
        [sys.executable, "-m", "trimicro.cluster.cli", "--home", str(tmp_path), "plugins"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert "no OpenTelemetry trace exporter named 'no_such_exporter'" in out.stderr
