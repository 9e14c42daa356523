"""The HTTP gateway against the same stack answering a constant without trimicro, in one run.

Three servers on loopback in this process, all hypercorn's trio worker: a bare ASGI callable
answering a constant (the server's own ceiling), Starlette answering a constant (the stack the
gateway is built on: the routing's cost), and the gateway calling a service of its cluster node
(``POST /api/echo/Echo.ping``). The load comes from a second process (httpx, 16 concurrent
clients, keep-alive), rounds interleaved A/B/C, medians of per-round ratios reported as JSON:
requests/s, p50/p99 latency, gateway / starlette-constant (target >= 0.6).

    .venv/bin/python benchmarks/bench_gateway.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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

LOAD = r"""
import json, sys, time, trio, httpx
url, n, conc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
async def main():
    lat = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conc)) as c:
        left = [n]
        async def worker():
            while left[0] > 0:
                left[0] -= 1
                t = time.perf_counter()
                r = await c.post(url, content=b'{"x": 1}', headers={"content-type": "application/json"})
                lat.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(conc):
                nursery.start_soon(worker)
        took = time.perf_counter() - t0
    lat.sort()
    p50, p99 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3
    print(json.dumps({"rps": n / took, "p50_ms": p50, "p99_ms": p99}))
trio.run(main)
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


async def main(requests: int, rounds: int, concurrency: int) -> dict[str, Any]:
    starlette = Starlette(routes=[Route("/c", _constant, methods=["POST"])])
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
            results: dict[str, list[dict[str, float]]] = {k: [] for k in targets}
            for _ in range(rounds):
                for name, url in targets.items():
                    done = await trio.run_process(
                        [sys.executable, "-c", LOAD, url, str(requests), str(concurrency)],
                        capture_stdout=True,
                    )
                    results[name].append(json.loads(done.stdout))
        nursery.cancel_scope.cancel()

    def med(name: str, key: str) -> float:
        return round(statistics.median(r[key] for r in results[name]), 2)

    def ratio(a: str, b: str) -> float:
        return round(
            statistics.median(x["rps"] / y["rps"] for x, y in zip(results[a], results[b], strict=True)), 3
        )

    return {
        "requests_per_round": requests,
        "rounds": rounds,
        "concurrency": concurrency,
        **{name: {k: med(name, k) for k in ("rps", "p50_ms", "p99_ms")} for name in results},
        "gateway_vs_starlette_constant": ratio("gateway", "starlette_constant"),
        "starlette_vs_bare_asgi": ratio("starlette_constant", "bare_asgi"),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    a = parser.parse_args()
    print(json.dumps(trio.run(main, a.requests, a.rounds, a.concurrency), indent=2))
