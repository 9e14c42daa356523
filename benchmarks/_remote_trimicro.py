"""trimicro's contestant in bench_remote.py: two nodes in two processes, encryption on.

The server process runs a node with one ``Bench`` actor; the client process runs a node that
calls it through ``ask``/``tell``/``open_stream`` exactly as an application would. Both use the
development identity under one private temporary home, so they trust each other and every byte
between them goes through the Noise channel (ChaCha20-Poly1305).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

from trimicro.actors import Actor, Stream, ask, open_stream, start_node, tell

HOME = Path(tempfile.gettempdir()) / f"trimicro-bench-{os.getuid()}"
MAX_CALLS = 2_000_000
MAX_MESSAGES = 20_000_000
PAYLOAD_100 = b"x" * 100


@attrs.frozen
class Add:
    """The ``ask1attrs`` body: the map ``{"op", "id", "a", "b"}`` structured into this class."""

    op: str
    id: int
    a: int
    b: int


class Bench(Actor):
    service_name = "Bench"

    def __init__(self) -> None:
        self.count = 0

    async def add(self, m: Any) -> Any:
        return {"op": "ok", "id": m["id"], "a": m["a"], "b": m["b"], "r": m["a"] + m["b"]}

    async def add_attrs(self, m: Add) -> Any:
        return {"op": "ok", "id": m.id, "a": m.a, "b": m.b, "r": m.a + m.b}

    async def tell(self, m: Any) -> None:
        self.count += 1

    async def count_of(self, m: Any) -> int:
        return self.count

    async def items(self, stream: Stream) -> None:
        n = 0
        async for _ in stream:
            n += 1
        await stream.send(n)


async def noop(call: Any, call_next: Any) -> Any:
    """A middleware that does nothing: what one layer of the onion costs."""
    return await call_next(call)


def _options(busy_poll: float | None, middleware: bool) -> dict[str, Any]:
    options: dict[str, Any] = {} if busy_poll is None else {"busy_poll": busy_poll}
    if middleware:  # imported here: the plain rows also run against checkouts without it
        from trimicro.actors.middleware import passes_through

        options["middleware"] = [passes_through(noop)]
    return options


async def serve(port_file: str, busy_poll: float | None = None, middleware: bool = False) -> None:
    options = _options(busy_poll, middleware)
    async with start_node("bench-server", listen="127.0.0.1:0", home=HOME, **options) as node:
        await node.spawn(Bench, name="bench")
        tmp = f"{port_file}.tmp"
        await trio.Path(tmp).write_text(node.address or "")
        os.replace(tmp, port_file)
        await trio.sleep_forever()


def _pct(sorted_ns: list[int], q: float) -> float | None:
    if not sorted_ns:
        return None
    return sorted_ns[min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns)) - 1))] / 1000


async def _asks(
    ref: Any,
    seconds: float,
    concurrency: int,
    headers: dict[str, str] | None = None,
    endpoint: str = "Bench.add",
) -> dict[str, Any]:
    lat: list[int] = []
    next_id = 0
    t0 = time.perf_counter_ns()
    deadline = t0 + int(seconds * 1e9)

    async def caller() -> None:
        nonlocal next_id
        while next_id < MAX_CALLS:
            t = time.perf_counter_ns()
            if t >= deadline:
                return
            i = next_id
            next_id += 1
            reply = await ask(ref, {"op": "add", "id": i, "a": 1, "b": 2}, endpoint=endpoint, headers=headers)
            assert reply["r"] == 3
            lat.append(time.perf_counter_ns() - t)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    lat.sort()
    return {"ops": len(lat), "seconds": elapsed, "p50_us": _pct(lat, 0.5), "p99_us": _pct(lat, 0.99)}


async def _tells(ref: Any, seconds: float) -> dict[str, Any]:
    before = await ask(ref, None, endpoint="Bench.count_of")
    t0 = time.perf_counter_ns()
    deadline = t0 + int(seconds * 1e9)
    sent = 0
    while sent < MAX_MESSAGES:
        for _ in range(256):
            await tell(ref, {"op": "tell", "id": sent, "a": 1, "b": 2}, endpoint="Bench.tell")
            sent += 1
        if time.perf_counter_ns() >= deadline:
            break
    after = await ask(ref, None, endpoint="Bench.count_of", timeout=60)  # behind every tell
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    return {"ops": after - before, "seconds": elapsed, "p50_us": None, "p99_us": None, "sent": sent}


async def _stream(ref: Any, seconds: float) -> dict[str, Any]:
    async with open_stream(ref, "Bench.items") as stream:
        t0 = time.perf_counter_ns()
        deadline = t0 + int(seconds * 1e9)
        sent = 0
        while sent < MAX_MESSAGES:
            for _ in range(256):
                await stream.send({"op": "item", "id": sent, "data": PAYLOAD_100})
                sent += 1
            if time.perf_counter_ns() >= deadline:
                break
        stream.close_send()
        confirmed = await stream.receive()  # the handler's count, after the last item
        elapsed = (time.perf_counter_ns() - t0) / 1e9
    return {"ops": confirmed, "seconds": elapsed, "p50_us": None, "p99_us": None, "sent": sent}


async def serve_without_busy_poll(port_file: str) -> None:
    """The server with busy polling off (``start_node(busy_poll=0)``), for the nopoll row."""
    await serve(port_file, busy_poll=0)


async def client_without_busy_poll(
    address: str, phase: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """The same client with busy polling off (``start_node(busy_poll=0)``): what the polling buys."""
    return await client(address, phase, seconds, concurrency, busy_poll=0)


async def serve_with_middleware(port_file: str) -> None:
    """The server with one no-op node middleware (around every handler), for the mw row."""
    await serve(port_file, middleware=True)


async def client_with_middleware(
    address: str, phase: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """The client with one no-op node middleware (around every call): with the server's, what
    one middleware on both sides costs."""
    return await client(address, phase, seconds, concurrency, middleware=True)


async def client(
    address: str,
    phase: str,
    seconds: float,
    concurrency: int,
    busy_poll: float | None = None,
    middleware: bool = False,
) -> dict[str, Any]:
    options = _options(busy_poll, middleware)
    async with start_node("bench-client", home=HOME, ask_timeout=30, **options) as node:
        server = await node.connect(address)
        ref = node.remote_ref(server, "bench")
        if phase in ("ask1", "ask16"):
            return await _asks(ref, seconds, concurrency)
        if phase == "ask1attrs":
            return await _asks(ref, seconds, concurrency, endpoint="Bench.add_attrs")
        if phase == "tell":
            return await _tells(ref, seconds)
        if phase == "stream":
            return await _stream(ref, seconds)
        raise NotImplementedError(phase)
