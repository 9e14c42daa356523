"""The gateway fuzzed by schemathesis (from a second process) through its own OpenAPI document:
no 5xx that is not a documented service error, every reply matches the document (JSON, msgpack
and CBOR), every request the document admits is accepted, no warning, no crash.
Bounded: a few examples per operation, a fixed seed and a time budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio
from gateway_services import Shop

from trimicro.cluster import start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.registry import MemoryRegistry

ST = Path(sys.executable).with_name("st")
#: Deserializers for the msgpack and CBOR replies, so that they are checked too.
HOOKS = Path(__file__).resolve().parent / "gateway_fuzz_hooks.py"


async def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(tmp_path: Path) -> None:
    async with start_cluster("fuzz", registry=MemoryRegistry(), store="", auth=False) as cluster:
        await cluster.serve(Shop)
        async with open_gateway(cluster, GatewayOptions(address="127.0.0.1:0", default_timeout=2.0)) as gw:
            await gw.state.refresh()
            command = [
                str(ST),
                "run",
                f"{gw.url}/openapi.json",
                "--checks",
                # Positive data accepted: what the document says a field takes (an "integer"
                # field takes 1.0), the service takes.
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance,positive_data_acceptance",
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                "5",
                "--seed",
                "1",
                "--workers",
                "1",
                "--max-time",
                "40",
                "--request-timeout",
                "5",
                # The stream and subscription bridges stay open while the client does.
                "--exclude-path-regex",
                "(subscribe|Shop.count|Shop.flood|Shop.slow)",
            ]
            env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)}
            done = await trio.to_thread.run_sync(
                # In a folder of its own: schemathesis keeps a cache of past failures in its
                # working directory and replays them, which would make runs depend on each other.
                lambda: subprocess.run(
                    command, capture_output=True, text=True, timeout=110, cwd=tmp_path, env=env
                )
            )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # No warnings either: one says that some replies were not checked against the document.
    assert "WARNINGS" not in done.stdout, done.stdout[-4000:]
