"""The HTTP gateway against the same stack answering a constant without trimicro, in one run.

Three servers on loopback in this process, all hypercorn's trio worker: a bare ASGI callable
answering a constant (the server's own ceiling), Starlette answering a constant (the stack the
gateway is built on), and the gateway calling a service of its cluster node
(``POST /api/echo/Echo.ping``). The load comes from a second process, ``wrk`` (Debian's
package: C, so the client is never the bottleneck the way a Python client is), 16 connections
for ``--seconds`` per round; rounds interleave the three targets in a rotating order, and the
ratios are medians of per-round ratios (the machine is shared and noisy). Every round is
bounded (wrk's duration, a timeout on the process).

A reply other than 200 is counted by status, with the first body of each status, and never
stops the run: under overload a call can end as a documented error (408 when its deadline
passes), which the JSON reports next to the rate instead of hiding it.

    .venv/bin/python benchmarks/bench_gateway.py [--seconds 5] [--rounds 5] [--connections 16]

``--instructions`` counts instead the CPU instructions the server process executes per request
(valgrind's callgrind: a figure the machine's load does not move, the reliable A/B here), for
the Starlette constant and the gateway: the server runs under callgrind, a client in this
process sends ``--small`` and then ``--large`` sequential requests on one keep-alive connection
to a fresh server each time, and the difference of the two totals over the difference in
requests is one request's cost, with start-up and shutdown cancelled out.

    .venv/bin/python benchmarks/bench_gateway.py --instructions [--small 200] [--large 600]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from trimicro.actors import Actor
from trimicro.cluster import start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.cluster.registry import MemoryRegistry

#: wrk's script: a JSON POST; non-200 replies counted by status with a sample body; one JSON
#: line of results at the end (latencies in microseconds).
SCRIPT = r"""
wrk.method = "POST"
wrk.body = '{"x": 1}'
wrk.headers["Content-Type"] = "application/json"
statuses = ""
samples = ""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function response(status, headers, body)
  if status ~= 200 then
    statuses = statuses .. status .. " "
    if #samples < 2000 then samples = samples .. status .. " " .. body:gsub("\n", " ") .. "\n" end
  end
end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for s in string.gmatch(t:get("statuses") or "", "%d+") do counts[s] = (counts[s] or 0) + 1 end
    io.stderr:write(t:get("samples") or "")
  end
  local parts = {}
  for s, n in pairs(counts) do table.insert(parts, string.format('"%s": %d', s, n)) end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %f, "p50_us": %d, "p99_us": %d, "socket_errors": %d, "non_200": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, table.concat(parts, ", ")))
end
"""


class Echo(Actor):
    service_name = "Echo"

    async def ping(self, body: Any) -> Any:
        return body


async def _bare(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"x":1}'})


async def _constant(request: Any) -> Response:
    await request.body()
    return Response(b'{"x":1}', media_type="application/json")


def _config() -> Config:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    return config


async def _round(wrk: str, script: Path, url: str, seconds: int, connections: int) -> dict[str, Any]:
    """One bounded wrk run against ``url``: requests/s, p50/p99 in ms, non-200 by status."""
    with trio.fail_after(seconds + 30):
        done = await trio.run_process(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "20s", "-s", str(script), url],
            capture_stdout=True,
            capture_stderr=True,
        )
    line = done.stdout.decode().strip().splitlines()[-1]
    raw = json.loads(line)
    ok = raw["requests"] - sum(raw["non_200"].values())
    return {
        "rps": ok / raw["seconds"],
        "p50_ms": raw["p50_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "non_200": raw["non_200"],
        "socket_errors": raw["socket_errors"],
        "samples": done.stderr.decode().splitlines()[:5],
    }


async def main(seconds: int, rounds: int, connections: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("needs wrk (apt-get install wrk)")
    starlette = Starlette(routes=[Route("/c", _constant, methods=["POST"])])
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(SCRIPT)
        async with (
            start_cluster("bench-gw", registry=MemoryRegistry(), store="", auth=False) as cluster,
            trio.open_nursery() as nursery,
        ):
            await cluster.serve(Echo)
            bare_url = (await nursery.start(serve, _bare, _config()))[0] + "/c"
            star_url = (await nursery.start(serve, starlette, _config()))[0] + "/c"
            async with open_gateway(cluster, GatewayOptions(address="127.0.0.1:0")) as gw:
                await gw.state.refresh()
                targets = {
                    "bare_asgi": bare_url,
                    "starlette_constant": star_url,
                    "gateway": gw.url + "/api/echo/Echo.ping",
                }
                names = list(targets)
                results: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
                for r in range(rounds):
                    for name in names[r % 3 :] + names[: r % 3]:  # rotate: no target always goes first
                        results[name].append(await _round(wrk, script, targets[name], seconds, connections))
            nursery.cancel_scope.cancel()

    def med(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in results[name]), 2)

    def ratio(a: str, b: str) -> float:
        return round(
            statistics.median(x["rps"] / y["rps"] for x, y in zip(results[a], results[b], strict=True)), 3
        )

    def failures(name: str) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for r in results[name]:
            for status, n in r["non_200"].items():
                counts[status] = counts.get(status, 0) + n
        samples = [s for r in results[name] for s in r["samples"]][:5]
        errors = sum(r["socket_errors"] for r in results[name])
        return {"non_200": counts, "socket_errors": errors, **({"samples": samples} if samples else {})}

    return {
        "seconds_per_round": seconds,
        "rounds": rounds,
        "connections": connections,
        **{
            name: {**{k: med(name, k) for k in ("rps", "p50_ms", "p99_ms")}, **failures(name)}
            for name in results
        },
        "gateway_vs_starlette_constant": ratio("gateway", "starlette_constant"),
        "starlette_vs_bare_asgi": ratio("starlette_constant", "bare_asgi"),
    }


async def serve_one(target: str) -> None:
    """Serve ``target`` (``constant`` or ``gateway``), print its URL, stop when stdin closes."""
    starlette = Starlette(routes=[Route("/c", _constant, methods=["POST"])])
    async with (
        start_cluster("bench-gw", registry=MemoryRegistry(), store="", auth=False) as cluster,
        trio.open_nursery() as nursery,
    ):
        await cluster.serve(Echo)
        if target == "constant":
            url = (await nursery.start(serve, starlette, _config()))[0] + "/c"
            print(url, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)
        else:
            async with open_gateway(cluster, GatewayOptions(address="127.0.0.1:0")) as gw:
                await gw.state.refresh()
                print(gw.url + "/api/echo/Echo.ping", flush=True)
                await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


def _instructions(target: str, requests: int) -> int:
    """Instructions a fresh server for ``target`` executes, start to end, serving ``requests``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        argv += [sys.executable, __file__, "--serve", target]
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            url = proc.stdout.readline().strip()
            if not url.startswith("http://"):
                raise SystemExit(f"the server did not start: {url!r}")
            host, _, rest = url.removeprefix("http://").partition(":")
            port, _, path = rest.partition("/")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            for _ in range(requests):
                conn.request("POST", "/" + path, b'{"x": 1}', {"content-type": "application/json"})
                reply = conn.getresponse()
                if reply.status != 200:
                    raise SystemExit(f"{target}: {reply.status} {reply.read()[:200]!r}")
                reply.read()
            conn.close()
            _, err = proc.communicate(timeout=300)  # closes stdin: the server stops
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    found = re.search(r"Collected : (\d+)", err)
    if found is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{err[-2000:]}")
    return int(found.group(1))


def instructions(small: int, large: int) -> dict[str, Any]:
    """Instructions per request of the Starlette constant and of the gateway (server side)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    per: dict[str, float] = {}
    for target in ("constant", "gateway"):
        per[target] = (_instructions(target, large) - _instructions(target, small)) / (large - small)
    return {
        "small": small,
        "large": large,
        "starlette_constant_instructions_per_request": round(per["constant"]),
        "gateway_instructions_per_request": round(per["gateway"]),
        "gateway_over_constant": round(per["gateway"] / per["constant"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--instructions", action="store_true", help="count instructions per request")
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=600)
    parser.add_argument("--serve", choices=["constant", "gateway"], help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve:
        trio.run(serve_one, a.serve)
    elif a.instructions:
        print(json.dumps(instructions(a.small, a.large), indent=2), file=sys.stdout)
    else:
        print(json.dumps(trio.run(main, a.seconds, a.rounds, a.connections), indent=2), file=sys.stdout)
