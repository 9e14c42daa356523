"""``trimicro run --log-format json`` in a real process: every line of its standard error is one
JSON object with the documented fields, naming the node, the actor when one logged, and the
trace when the record was made inside a span."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio
from health_services import SPAN_ID, TRACE_ID
from procs import python_process

from trimicro.actors.logs import FIELDS

ROOT = Path(__file__).resolve().parent.parent
#: Generous bounds for a loaded 2-core machine: a clean run takes a fraction of each.
START = 60.0
STOP = 30.0


async def test_json_logs_of_a_real_run(tmp_path: Path) -> None:
    errors = tmp_path / "stderr"
    argv = ["-m", "trimicro.cluster.cli", "--home", str(tmp_path), "--registry", "memory://"]
    argv += ["run", str(ROOT / "tests" / "health_services.py"), "--name", "logs1", "--log-format", "json"]
    with errors.open("wb") as sink:
        async with python_process(*argv, stderr=sink) as proc:
            with trio.fail_after(START):
                ready = await proc.line()
            assert ready.startswith("node logs1 at 127.0.0.1:"), ready
            proc.signal(signal.SIGINT)
            with trio.fail_after(STOP):
                assert await proc.proc.wait() == 0
    records = [json.loads(line) for line in errors.read_text().splitlines()]  # every line parses
    assert records and all(list(r)[: len(FIELDS)] == list(FIELDS) for r in records)
    assert all(r["node"] == "logs1" for r in records), [r for r in records if r["node"] != "logs1"]
    by_message = {r["message"]: r for r in records}
    address = ready.split(" at ")[1].split(" ")[0]
    # INFO by default: the listening address and the registrations.
    assert by_message[f"node logs1 listening on {address}"]["logger"] == "trimicro.actors.remote"
    assert by_message[f"registered service breaker version latest at {address}"]["level"] == "INFO"
    assert by_message["breaker started"]["actor"] == "/user/breaker"
    traced = by_message["inside a traced call"]
    assert (traced["trace_id"], traced["span_id"]) == (f"{TRACE_ID:032x}", f"{SPAN_ID:016x}")
    assert traced["actor"] == "/user/breaker" and traced["level"] == "WARNING"
    assert by_message["breaker started"]["trace_id"] is None
