"""Remote RPC benchmark: trimicro across two OS processes on loopback, beside its ceiling and peers.

Every contestant is a pair: a server entry point, run as a child process
(``python bench_remote.py --serve NAME --port-file F``), and an async client function run in this
process against it. All sockets bind or connect to 127.0.0.1 only. One run measures, interleaved
over ``--rounds`` (default 3; inside a round: phase by phase, every contestant in turn, the order of
the contestants rotating from round to round):

* ``ask1``:   one caller, sequential request/reply: round trips/s, p50/p99 latency in µs;
* ``ask16``:  16 concurrent callers sharing ONE connection: round trips/s, p50/p99 in µs;
* ``tell``:   one-way messages/s client -> server. The server counts what arrives; the client reads
  the count before it starts and stops the clock when one final request returns the count, so only
  messages that reached the server are counted;
* ``stream``: one-way items carrying 100 bytes of payload, items/s, confirmed the same way (peers
  without streams send them through their one-way path).
* ``ask1attrs``: trimicro only: ``ask1`` to a handler annotated with an attrs class (``add``'s
  four fields), so each map body is structured and checked field by field into that class on
  the server (``trimicro.actors.bodies``) before the handler runs.

The ask message is ``{"op": "add", "id": i, "a": 1, "b": 2}`` (msgpack); the reply has the same
shape, ``{"op": "ok", "id": i, "a": 1, "b": 2, "r": 3}``. A tell is ``{"op": "tell", "id": i, "a": 1,
"b": 2}``, a stream item ``{"op": "item", "id": i, "data": <100 bytes>}``.

Contestants:

* ``raw``: the ceiling. trio TCP, 4-byte big-endian length + msgpack frames, no encryption, no
  actors. ask1 sends a frame and reads the reply in the same task (no reader task); ask16 has a
  reader task and one writer task that sends every pending frame with one ``send_all``; the one-way
  phases send 64 frames per ``send_all``. The server answers all requests of one read with one
  ``send_all``.
* ``nats``: nats-py through a nats-server this script starts (``nats-server -a 127.0.0.1 -p PORT``,
  free port) and stops by pid; the responder is the server process. ask = ``request()``; one-way =
  ``publish()`` on one subject, with a count request every 10000 messages (NATS has no flow control:
  a backlog that grows without bound ends with a slow-consumer drop) and a final one.
* ``grpc``: grpcio's asyncio API, unary calls through generic method handlers on raw bytes (no
  codegen). One-way phases are not measured (null).
* ``trimicro-nopoll``: the same two nodes with busy polling off (``start_node(busy_poll=0)``;
  ``serve_without_busy_poll`` and ``client_without_busy_poll`` in that module), ask phases only.
  By default a node polls for up to 200 µs instead of sleeping in ``epoll_wait``: the client for
  the reply of a lone request, the server for the next request after answering the only one in
  flight (see ``trimicro.actors.busypoll``); the raw ceiling does not, so this row shows both.
* ``trimicro-mw``: the same two nodes, each with one no-op node middleware
  (``start_node(middleware=[noop])``: it runs around every call the client makes and every
  handler the server runs); ``serve_with_middleware`` and ``client_with_middleware`` in that
  module. Phases ask1, ask16 and tell; the ratio trimicro-mw/trimicro is what it costs.
* ``trimicro``: imports ``benchmarks/_remote_trimicro.py``; skipped (with the reason) if it is
  missing or fails to import. It must provide::

      async def serve(port_file: str) -> None       # server process, run with trio.run
      async def client(address: str, phase: str, seconds: float, concurrency: int) -> dict
                                                    # this process, run with trio.run

  ``serve`` listens on 127.0.0.1 (port 0), then writes its address (e.g. ``127.0.0.1:PORT``) to
  ``port_file`` atomically (write a temporary file, then ``os.replace``) and serves until killed
  (SIGTERM). ``client`` gets that text verbatim as ``address``; it connects, THEN starts its clock
  and runs ``phase`` for ``seconds`` (and at most 2M calls / 20M messages), and returns
  ``{"ops": int, "seconds": float, "p50_us": float | None, "p99_us": float | None}`` (+ optionally
  ``"sent"`` for one-way phases). ``ops`` is round trips for ask1/ask16, and for tell/stream the
  number of messages the server confirmed it received (final count minus the count read before the
  clock started); ``seconds`` runs from the clock start to the last reply / to the confirmation.
  Latencies are per call, nearest rank on the sorted samples, µs (None for one-way phases).
  ``concurrency`` is 16 for ask16, else 1. Warm-up is a separate ``client()`` call with
  ``seconds=--warmup``; every call opens and closes its own connection. Raise
  ``NotImplementedError`` for a phase it does not support (reported as null).

Output: one JSON line per (round, contestant, phase) on stdout, then one summary line (medians per
contestant and phase, min-max, ratios trimicro/raw, trimicro/nats, trimicro/grpc,
trimicro-nopoll/raw and trimicro-mw/trimicro per phase computed per round then the median; null
when absent), and a markdown table on stderr (on stdout with ``--markdown``). ``cpu_us_per_op`` is
the CPU time of this process plus the server processes (nats: plus nats-server) over the measured
call, per op.
The default run (3 rounds, 4 phases, 5 contestants, 2 s + 0.3 s warm-up each) takes about
2.5 minutes.

Needs: nats-py, grpcio (pip), nats-server (Debian: ``apt-get install nats-server``).

Run:  .venv/bin/python benchmarks/bench_remote.py [--rounds 3] [--seconds 2] [--warmup 0.3]
      [--only raw,nats,grpc,trimicro] [--phases ask1,ask16,tell,stream,ask1attrs] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import msgpack
import trio

now_ns = time.perf_counter_ns
packb = msgpack.packb
unpackb = msgpack.unpackb

HOST = "127.0.0.1"  # the only interface anything binds or connects to
HERE = Path(__file__).resolve().parent

#: phase -> number of concurrent callers
PHASES: dict[str, int] = {"ask1": 1, "ask16": 16, "tell": 1, "stream": 1, "ask1attrs": 1}
#: The phases every peer runs (``ask1attrs`` exercises a trimicro feature the others lack).
COMMON_PHASES = ("ask1", "ask16", "tell", "stream")
ONEWAY = ("tell", "stream")
#: Hard caps so that every phase is bounded in count as well as in time.
MAX_CALLS = 2_000_000
MAX_MSGS = 20_000_000
RAW_BATCH = 64  # raw one-way frames per send_all
NATS_WINDOW = 10_000  # nats one-way: messages between two count requests
PAYLOAD_100 = b"x" * 100
CALL_TIMEOUT = 10.0  # one request/reply
CONFIRM_TIMEOUT = 30.0  # the final count of a one-way phase
SERVER_START_TIMEOUT = 20.0
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0)]  # never route loopback through a proxy

Result = dict[str, Any]
ClientFn = Callable[[str, str, float, int], Awaitable[Result]]


def log(*a: object) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# messages, results, addresses
# ---------------------------------------------------------------------------------------------


def ask_msg(i: int) -> dict[str, Any]:
    return {"op": "add", "id": i, "a": 1, "b": 2}


def answer(m: dict[str, Any]) -> dict[str, Any]:
    return {"op": "ok", "id": m["id"], "a": m["a"], "b": m["b"], "r": m["a"] + m["b"]}


def oneway_msg(phase: str, i: int) -> dict[str, Any]:
    if phase == "stream":
        return {"op": "item", "id": i, "data": PAYLOAD_100}
    return {"op": "tell", "id": i, "a": 1, "b": 2}


def check_reply(reply: dict[str, Any], i: int) -> None:
    if reply.get("id") != i or reply.get("r") != 3:
        raise RuntimeError(f"bad reply to call {i}: {reply!r}")


def pct_us(sorted_ns: list[int], q: float) -> float | None:
    """Nearest-rank percentile of sorted nanoseconds, in µs."""
    if not sorted_ns:
        return None
    k = min(len(sorted_ns) - 1, max(0, round(q * (len(sorted_ns) - 1))))
    return round(sorted_ns[k] / 1000.0, 1)


def calls_result(lat_ns: list[int], elapsed_ns: int) -> Result:
    lat_ns.sort()
    return {
        "ops": len(lat_ns),
        "seconds": elapsed_ns / 1e9,
        "p50_us": pct_us(lat_ns, 0.50),
        "p99_us": pct_us(lat_ns, 0.99),
    }


def oneway_result(received: int, sent: int, elapsed_ns: int) -> Result:
    return {"ops": received, "sent": sent, "seconds": elapsed_ns / 1e9, "p50_us": None, "p99_us": None}


def loopback_port(address: str) -> int:
    """Port of a "127.0.0.1:PORT" or "scheme://127.0.0.1:PORT" address; refuses any other host."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if parts.hostname != HOST or parts.port is None:
        raise ValueError(f"not a {HOST} address: {address!r}")
    return parts.port


def write_port_file(path: str, address: str) -> None:
    """Announce the server's address: atomically, so a reader never sees half of it."""
    tmp = f"{path}.tmp"
    Path(tmp).write_text(address + "\n")
    os.replace(tmp, path)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# raw: trio TCP + length-prefixed msgpack (the ceiling)
# ---------------------------------------------------------------------------------------------

LEN = struct.Struct(">I")


def frame(obj: Any) -> bytes:
    body: bytes = packb(obj)
    return LEN.pack(len(body)) + body


class FrameReader:
    """Decodes 4-byte-length-prefixed msgpack frames from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def read(self) -> list[Any]:
        """Every complete frame buffered so far (waits for at least one); [] at end of stream."""
        buf = self.buf
        while True:
            frames: list[Any] = []
            start, end = 0, len(buf)
            while end - start >= 4:
                size = LEN.unpack_from(buf, start)[0]
                stop = start + 4 + size
                if stop > end:
                    break
                frames.append(unpackb(memoryview(buf)[start + 4 : stop]))
                start = stop
            if start:
                del buf[:start]
            if frames:
                return frames
            chunk = await self.stream.receive_some(1 << 16)
            if not chunk:
                return []
            buf += chunk


async def raw_serve(port_file: str) -> None:
    counted = 0  # one-way messages received, over all connections

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal counted
        reader = FrameReader(stream)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while frames := await reader.read():
                out = []
                for m in frames:
                    op = m["op"]
                    if op == "add":
                        out.append(frame(answer(m)))
                    elif op == "count":
                        out.append(frame({"op": "count", "id": m["id"], "n": counted}))
                    else:
                        counted += 1
                if out:
                    await stream.send_all(b"".join(out))

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        write_port_file(port_file, f"{HOST}:{port}")


class _Slot:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.reply: Any = None


class PipelinedClient:
    """Many callers on one connection: a writer task sends every queued frame with one send_all,
    a reader task hands each reply to its caller by request id."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream)
        self.queued: list[bytes] = []
        self.wakeup = trio.Event()
        self.waiting: dict[int, _Slot] = {}
        self.next_id = 0

    async def write_loop(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            batch, self.queued = self.queued, []
            await self.stream.send_all(b"".join(batch))

    async def read_loop(self) -> None:
        while frames := await self.reader.read():
            for m in frames:
                slot = self.waiting.pop(m["id"])
                slot.reply = m
                slot.done.set()

    async def call(self, msg: dict[str, Any]) -> Any:
        slot = _Slot()
        self.waiting[msg["id"]] = slot
        self.queued.append(frame(msg))
        self.wakeup.set()
        await slot.done.wait()
        return slot.reply


async def _raw_ask1(stream: trio.SocketStream, seconds: float) -> Result:
    reader = FrameReader(stream)
    lat: list[int] = []
    t0 = now_ns()
    deadline = t0 + int(seconds * 1e9)
    i = 0
    while i < MAX_CALLS:
        t = now_ns()
        if t >= deadline:
            break
        await stream.send_all(frame(ask_msg(i)))
        (reply,) = await reader.read()
        lat.append(now_ns() - t)
        check_reply(reply, i)
        i += 1
    return calls_result(lat, now_ns() - t0)


async def _raw_ask_many(stream: trio.SocketStream, seconds: float, concurrency: int) -> Result:
    client = PipelinedClient(stream)
    lat: list[int] = []
    t0 = now_ns()
    deadline = t0 + int(seconds * 1e9)

    async def caller() -> None:
        while client.next_id < MAX_CALLS:
            t = now_ns()
            if t >= deadline:
                return
            i = client.next_id
            client.next_id += 1
            with trio.fail_after(CALL_TIMEOUT):
                reply = await client.call(ask_msg(i))
            lat.append(now_ns() - t)
            check_reply(reply, i)

    async with trio.open_nursery() as io:
        io.start_soon(client.read_loop)
        io.start_soon(client.write_loop)
        async with trio.open_nursery() as callers:
            for _ in range(concurrency):
                callers.start_soon(caller)
        elapsed = now_ns() - t0
        io.cancel_scope.cancel()
    return calls_result(lat, elapsed)


async def _raw_oneway(stream: trio.SocketStream, phase: str, seconds: float) -> Result:
    reader = FrameReader(stream)

    async def server_count() -> int:
        await stream.send_all(frame({"op": "count", "id": 0}))
        (reply,) = await reader.read()
        n: int = reply["n"]
        return n

    base = await server_count()
    sent = 0
    t0 = now_ns()
    deadline = t0 + int(seconds * 1e9)
    while sent < MAX_MSGS and now_ns() < deadline:
        await stream.send_all(b"".join([frame(oneway_msg(phase, sent + j)) for j in range(RAW_BATCH)]))
        sent += RAW_BATCH
    with trio.fail_after(CONFIRM_TIMEOUT):
        received = await server_count() - base
    return oneway_result(received, sent, now_ns() - t0)


async def raw_client(address: str, phase: str, seconds: float, concurrency: int) -> Result:
    stream = await trio.open_tcp_stream(HOST, loopback_port(address))
    async with stream:
        if phase in ONEWAY:
            return await _raw_oneway(stream, phase, seconds)
        if concurrency == 1:
            return await _raw_ask1(stream, seconds)
        return await _raw_ask_many(stream, seconds, concurrency)


# ---------------------------------------------------------------------------------------------
# asyncio callers shared by nats and grpc
# ---------------------------------------------------------------------------------------------


async def asyncio_calls(
    call: Callable[[bytes], Awaitable[bytes]], seconds: float, concurrency: int
) -> Result:
    lat: list[int] = []
    next_id = 0
    t0 = now_ns()
    deadline = t0 + int(seconds * 1e9)

    async def caller() -> None:
        nonlocal next_id
        while next_id < MAX_CALLS:
            t = now_ns()
            if t >= deadline:
                return
            i = next_id
            next_id += 1
            reply = unpackb(await call(packb(ask_msg(i))))
            lat.append(now_ns() - t)
            check_reply(reply, i)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return calls_result(lat, now_ns() - t0)


# ---------------------------------------------------------------------------------------------
# nats: nats-py through a local nats-server
# ---------------------------------------------------------------------------------------------

NATS_ASK = "bench.ask"
NATS_ONEWAY = "bench.oneway"  # one-way messages AND count requests: one subscription keeps them in order


async def nats_serve(port_file: str, url: str) -> None:
    import nats

    loopback_port(url)
    nc = await nats.connect(url, name="bench-remote-responder", allow_reconnect=False)
    counted = 0

    async def on_ask(msg: Any) -> None:
        await msg.respond(packb(answer(unpackb(msg.data))))

    async def on_oneway(msg: Any) -> None:
        nonlocal counted
        m = unpackb(msg.data)
        if m["op"] == "count":
            await msg.respond(packb({"op": "count", "id": m["id"], "n": counted}))
        else:
            counted += 1

    await nc.subscribe(NATS_ASK, cb=on_ask)
    await nc.subscribe(NATS_ONEWAY, cb=on_oneway)
    await nc.flush()
    write_port_file(port_file, url)
    await asyncio.Event().wait()  # until killed


async def _nats_oneway(nc: Any, phase: str, seconds: float) -> Result:
    async def server_count(timeout: float) -> int:
        reply = await nc.request(NATS_ONEWAY, packb({"op": "count", "id": 0}), timeout=timeout)
        n: int = unpackb(reply.data)["n"]
        return n

    base = await server_count(CALL_TIMEOUT)
    sent = since_sync = 0
    t0 = now_ns()
    deadline = t0 + int(seconds * 1e9)
    while sent < MAX_MSGS and now_ns() < deadline:
        for _ in range(RAW_BATCH):  # clock checked every 64 messages
            await nc.publish(NATS_ONEWAY, packb(oneway_msg(phase, sent)))
            sent += 1
        since_sync += RAW_BATCH
        if since_sync >= NATS_WINDOW:  # bound the backlog (no flow control in NATS)
            await server_count(CONFIRM_TIMEOUT)
            since_sync = 0
    received = await server_count(CONFIRM_TIMEOUT) - base
    return oneway_result(received, sent, now_ns() - t0)


async def nats_client(address: str, phase: str, seconds: float, concurrency: int) -> Result:
    import nats

    loopback_port(address)
    nc = await nats.connect(address, name="bench-remote-client", allow_reconnect=False)
    try:
        if phase in ONEWAY:
            return await _nats_oneway(nc, phase, seconds)

        async def call(data: bytes) -> bytes:
            reply = await nc.request(NATS_ASK, data, timeout=CALL_TIMEOUT)
            out: bytes = reply.data
            return out

        return await asyncio_calls(call, seconds, concurrency)
    finally:
        await nc.close()


# ---------------------------------------------------------------------------------------------
# grpc: grpc.aio unary calls, generic handlers on raw bytes
# ---------------------------------------------------------------------------------------------

GRPC_METHOD = "/bench.Bench/Ask"


def _identity(data: bytes) -> bytes:
    return data


async def grpc_serve(port_file: str) -> None:
    import grpc

    async def ask(request: bytes, context: Any) -> bytes:
        reply: bytes = packb(answer(unpackb(request)))
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Ask": grpc.unary_unary_rpc_method_handler(
                ask, request_deserializer=_identity, response_serializer=_identity
            )
        },
    )
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    write_port_file(port_file, f"{HOST}:{port}")
    await server.wait_for_termination()


async def grpc_client(address: str, phase: str, seconds: float, concurrency: int) -> Result:
    import grpc

    if phase in ONEWAY:
        raise NotImplementedError("grpc: one-way phases are not measured")
    async with grpc.aio.insecure_channel(f"{HOST}:{loopback_port(address)}", options=GRPC_OPTIONS) as ch:
        await asyncio.wait_for(ch.channel_ready(), CALL_TIMEOUT)
        rpc = ch.unary_unary(GRPC_METHOD, request_serializer=_identity, response_deserializer=_identity)

        async def call(data: bytes) -> bytes:
            out: bytes = await rpc(data, timeout=CALL_TIMEOUT)
            return out

        return await asyncio_calls(call, seconds, concurrency)


# ---------------------------------------------------------------------------------------------
# trimicro: benchmarks/_remote_trimicro.py, written separately
# ---------------------------------------------------------------------------------------------

TRIMICRO_MODULE = "_remote_trimicro"


def _trimicro_module() -> Any:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(TRIMICRO_MODULE)


def trimicro_check() -> str | None:
    try:
        mod = _trimicro_module()
    except ImportError as e:
        return f"{TRIMICRO_MODULE}.py not importable: {e}"
    except Exception as e:  # a broken module must not stop the other contestants
        return f"{TRIMICRO_MODULE}.py failed on import: {type(e).__name__}: {e}"
    missing = [f for f in ("serve", "client") if not callable(getattr(mod, f, None))]
    return f"{TRIMICRO_MODULE}.py lacks {', '.join(missing)}" if missing else None


def trimicro_client() -> ClientFn:
    fn: ClientFn = _trimicro_module().client
    return fn


def trimicro_nopoll_client() -> ClientFn:
    fn: ClientFn = _trimicro_module().client_without_busy_poll
    return fn


def trimicro_mw_client() -> ClientFn:
    fn: ClientFn = _trimicro_module().client_with_middleware
    return fn


# ---------------------------------------------------------------------------------------------
# contestants
# ---------------------------------------------------------------------------------------------


class Skip(Exception):
    """A contestant cannot run here; the message says why."""


def _module_check(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError as e:
                return f"cannot import {name}: {e}"
        return None

    return check


def _nats_server_exe() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if os.access(p, os.X_OK)), None
    )


def nats_check() -> str | None:
    if _nats_server_exe() is None:
        return "nats-server not found (Debian: apt-get install nats-server)"
    return _module_check("nats")()


def nats_prepare(procs: Procs, workdir: Path) -> list[str]:
    """Start nats-server on 127.0.0.1 with a free port; the responder gets its URL."""
    exe = _nats_server_exe()
    if exe is None:
        raise Skip("nats-server not found")
    port = free_loopback_port()
    proc = procs.start([exe, "-a", HOST, "-p", str(port)], workdir / "nats-server.log")
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:  # poll until it accepts connections (the only sleeps in this script)
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise Skip(f"nats-server did not start: {procs.log_tail(proc)}") from None
            time.sleep(0.02)
    return ["--nats-url", f"nats://{HOST}:{port}"]


@dataclass
class Contestant:
    name: str
    runner: Literal["trio", "asyncio"]  # event loop the client and the server run on
    serve: Callable[[str, argparse.Namespace], None]  # server process: (port_file, args), blocks
    load_client: Callable[[], ClientFn]
    check: Callable[[], str | None]  # -> reason to skip, or None
    phases: tuple[str, ...] = COMMON_PHASES
    prepare: Callable[[Procs, Path], list[str]] | None = None  # extra processes -> extra server args


def _trimicro(
    name: str, load_client: Callable[[], ClientFn], phases: tuple[str, ...], serve: str = "serve"
) -> Contestant:
    return Contestant(
        name,
        "trio",
        serve=lambda port_file, _a: trio.run(getattr(_trimicro_module(), serve), port_file),
        load_client=load_client,
        check=trimicro_check,
        phases=phases,
    )


CONTESTANTS: dict[str, Contestant] = {
    c.name: c
    for c in (
        Contestant(
            "raw",
            "trio",
            serve=lambda port_file, _a: trio.run(raw_serve, port_file),
            load_client=lambda: raw_client,
            check=lambda: None,
        ),
        Contestant(
            "nats",
            "asyncio",
            serve=lambda port_file, a: asyncio.run(nats_serve(port_file, a.nats_url)),
            load_client=lambda: nats_client,
            check=nats_check,
            prepare=nats_prepare,
        ),
        Contestant(
            "grpc",
            "asyncio",
            serve=lambda port_file, _a: asyncio.run(grpc_serve(port_file)),
            load_client=lambda: grpc_client,
            check=_module_check("grpc"),
            phases=("ask1", "ask16"),
        ),
        # ------------------------------------------------------------------------------------
        # trimicro: the framework under test. benchmarks/_remote_trimicro.py provides
        #   async def serve(port_file: str) -> None
        #   async def client(address: str, phase: str, seconds: float, concurrency: int) -> dict
        # both run with trio.run (see the module docstring for the contract).
        # ------------------------------------------------------------------------------------
        _trimicro("trimicro", trimicro_client, tuple(PHASES)),
        # The same, with busy polling off on both nodes (start_node(busy_poll=0)): the raw
        # ceiling does not poll, so this row shows what the polling buys and what is left.
        _trimicro("trimicro-nopoll", trimicro_nopoll_client, ("ask1", "ask16"), "serve_without_busy_poll"),
        # One no-op middleware on each node (client side and server side): what it costs.
        _trimicro("trimicro-mw", trimicro_mw_client, ("ask1", "ask16", "tell"), "serve_with_middleware"),
    )
}


# ---------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Child side of Popen: get SIGTERM if this script dies without its cleanup (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Procs:
    """Child processes started by this run; stop_all() ends each of them by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def start(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only us; we stop the children
                preexec_fn=_die_with_parent,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log_path
        return proc

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 3) -> str:
        """Exit status and the last lines of a child's output, on one line."""
        try:
            text = self.logs[proc.pid].read_text(errors="replace")
        except OSError:
            text = ""
        tail = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return f"rc={proc.poll()}: " + " | ".join(tail)[-400:]

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()


@dataclass
class Live:
    """A contestant whose server runs."""

    contestant: Contestant
    client: ClientFn
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


def start_contestant(c: Contestant, procs: Procs, workdir: Path) -> Live:
    first = len(procs.procs)
    extra = c.prepare(procs, workdir) if c.prepare else []
    port_file = workdir / f"{c.name}.port"
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", c.name, "--port-file", str(port_file)]
    server = procs.start(argv + extra, workdir / f"{c.name}.log")
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:  # poll for the port file, with a deadline
        with contextlib.suppress(FileNotFoundError):
            address = port_file.read_text().strip()
            if address:
                break
        if server.poll() is not None:
            raise Skip(f"server exited: {procs.log_tail(server)}")
        if time.monotonic() > deadline:
            raise Skip(f"no port file after {SERVER_START_TIMEOUT:.0f} s: {procs.log_tail(server)}")
        time.sleep(0.02)
    return Live(c, c.load_client(), address, procs.procs[first:])


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ns(pids: list[int]) -> int:
    """CPU time (user + system) of this process and of the given processes."""
    total = time.process_time_ns()
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLK_TCK
    return total


def run_client(live: Live, phase: str, seconds: float) -> Result:
    conc = PHASES[phase]
    limit = seconds + CONFIRM_TIMEOUT + CALL_TIMEOUT  # hard bound on one call
    if live.contestant.runner == "trio":

        async def on_trio() -> Result:
            with trio.fail_after(limit):
                return await live.client(live.address, phase, seconds, conc)

        return trio.run(on_trio)

    async def on_asyncio() -> Result:
        return await asyncio.wait_for(live.client(live.address, phase, seconds, conc), limit)

    return asyncio.run(on_asyncio())


def measure(live: Live, phase: str, args: argparse.Namespace) -> Result:
    """Warm up, then one measured call -> the JSON fields of one (contestant, phase)."""
    empty: Result = {"ops_per_s": None, "p50_us": None, "p99_us": None}
    if phase not in live.contestant.phases:
        return {**empty, "skipped": "not measured for this contestant"}
    dead = [p for p in live.procs if p.poll() is not None]
    if dead:
        return {**empty, "error": f"server process {dead[0].pid} exited rc={dead[0].returncode}"}
    pids = [p.pid for p in live.procs]
    try:
        if args.warmup > 0:
            run_client(live, phase, args.warmup)
        cpu0 = cpu_ns(pids)
        res = run_client(live, phase, args.seconds)
        cpu = cpu_ns(pids) - cpu0
        ops, secs = int(res["ops"]), float(res["seconds"])
        if secs <= 0:
            raise ValueError(f"client returned seconds={secs}")
    except NotImplementedError as e:
        return {**empty, "skipped": str(e) or "not implemented"}
    except Exception as e:  # one failing phase must not stop the run
        return {**empty, "error": f"{type(e).__name__}: {e}"[:500]}
    out: Result = {
        "ops_per_s": round(ops / secs),
        "p50_us": res.get("p50_us"),
        "p99_us": res.get("p99_us"),
        "ops": ops,
        "seconds": round(secs, 4),
        "cpu_us_per_op": round(cpu / 1000 / max(ops, 1), 2),
    }
    if "sent" in res:
        out["sent"] = res["sent"]
    return out


def calibrate(seconds: float = 0.1) -> float:
    """Pure-Python loop rate (M iterations/s): a machine-noise indicator."""
    n = 0
    t_end = now_ns() + int(seconds * 1e9)
    while now_ns() < t_end:
        for _ in range(10_000):
            n += 1
    return round(n / seconds / 1e6, 1)


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

PEERS = ("raw", "nats", "grpc")
#: The ratios of the summary: trimicro against each peer, trimicro without busy polling
#: against the ceiling, and trimicro with one no-op middleware against trimicro.
RATIOS = (*(("trimicro", peer) for peer in PEERS), ("trimicro-nopoll", "raw"), ("trimicro-mw", "trimicro"))
METRICS = ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_op")


def _median(vals: list[float]) -> float | None:
    return round(statistics.median(vals), 1) if vals else None


def summarise(lines: list[Result], names: list[str], phases: list[str]) -> Result:
    def rows(c: str, p: str) -> list[Result]:
        return [x for x in lines if x["contestant"] == c and x["phase"] == p and x["ops_per_s"] is not None]

    median: Result = {}
    min_max: Result = {}
    for c in names:
        median[c], min_max[c] = {}, {}
        for p in phases:
            got = rows(c, p)
            median[c][p] = (
                {k: _median([x[k] for x in got if x.get(k) is not None]) for k in METRICS} if got else None
            )
            ops = [x["ops_per_s"] for x in got]
            min_max[c][p] = [min(ops), max(ops)] if ops else None
    ratios: Result = {}
    for me, peer in RATIOS:
        key = f"{me}/{peer}"
        ratios[key] = {}
        for p in phases:
            mine = {x["round"]: x["ops_per_s"] for x in rows(me, p)}
            theirs = {x["round"]: x["ops_per_s"] for x in rows(peer, p)}
            per_round = [mine[r] / theirs[r] for r in mine if theirs.get(r)]
            ratios[key][p] = (
                {
                    "median": round(statistics.median(per_round), 3),
                    "min": round(min(per_round), 3),
                    "max": round(max(per_round), 3),
                }
                if per_round
                else None
            )
    return {"median": median, "min_max": min_max, "ratios": ratios}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def markdown(summary: Result, names: list[str], phases: list[str], skipped: dict[str, str]) -> str:
    out = [
        "| contestant | phase | ops/s (median) | min-max | p50 µs | p99 µs | CPU µs/op |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        for c in names:
            if c in skipped:
                continue
            m = summary["median"][c][p]
            rng = summary["min_max"][c][p]
            if m is None:
                out.append(f"| {c} | {p} | - | - | - | - | - |")
                continue
            span = f"{_fmt(rng[0])}-{_fmt(rng[1])}"
            out.append(
                f"| {c} | {p} | {_fmt(m['ops_per_s'])} | {span} | {_fmt(m['p50_us'])} "
                f"| {_fmt(m['p99_us'])} | {_fmt(m['cpu_us_per_op'])} |"
            )
    out += ["", "| phase | " + " | ".join(f"{me}/{peer}" for me, peer in RATIOS) + " |"]
    out.append("|---|" + "---:|" * len(RATIOS))
    for p in phases:
        cells = []
        for me, peer in RATIOS:
            r = summary["ratios"][f"{me}/{peer}"][p]
            cells.append("-" if r is None else f"{r['median']:.3f} ({r['min']:.2f}-{r['max']:.2f})")
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    if skipped:
        out += ["", *(f"- skipped {c}: {why}" for c, why in skipped.items())]
    return "\n".join(out)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for d in ("trio", "msgpack", "nats-py", "grpcio", "trimicro"):
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = None
    exe = _nats_server_exe()
    if exe:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5)
            out["nats-server"] = r.stdout.strip() or None
    return out


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def _csv(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)} (got {text!r})")
        return [s for s in choices if s in items]  # canonical order

    return parse


def parse_args() -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=float, default=2.0, help="measured time per phase (default 2)")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured warm-up per phase (default 0.3)")
    p.add_argument("--only", type=_csv(list(CONTESTANTS)), default=list(CONTESTANTS), help="contestants")
    p.add_argument("--phases", type=_csv(list(PHASES)), default=list(PHASES), help="phases")
    p.add_argument("--markdown", action="store_true", help="print the markdown table on stdout")
    p.add_argument("--serve", choices=list(CONTESTANTS), help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    p.add_argument("--nats-url", help=argparse.SUPPRESS)
    return p.parse_args()


def run(args: argparse.Namespace) -> None:
    t_start = time.monotonic()
    rounds = max(1, min(args.rounds, 20))
    skipped: dict[str, str] = {}
    live: dict[str, Live] = {}
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="bench_remote."))
    lines: list[Result] = []
    try:
        for name in args.only:
            c = CONTESTANTS[name]
            try:
                reason = c.check()
                if reason:
                    raise Skip(reason)
                live[name] = start_contestant(c, procs, workdir)
                log(f"{name}: server up at {live[name].address}")
            except Skip as e:
                skipped[name] = str(e)
                log(f"{name}: SKIPPED: {e}")
        order = [n for n in args.only if n in live]
        for r in range(1, rounds + 1):
            calib = calibrate()
            turn = order[(r - 1) % len(order) :] + order[: (r - 1) % len(order)] if order else []
            for phase in args.phases:
                for name in turn:
                    res = measure(live[name], phase, args)
                    line = {"bench": "bench_remote", "round": r, "contestant": name, "phase": phase, **res}
                    line["calib_mops"] = calib
                    lines.append(line)
                    print(json.dumps(line), flush=True)
                    extra = res.get("error") or res.get("skipped") or ""
                    log(f"round {r} {phase:6} {name:8} {_fmt(res['ops_per_s']):>10}/s {extra}")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(lines, list(args.only), list(args.phases))
    print(
        json.dumps(
            {
                "bench": "bench_remote",
                "summary": True,
                "rounds": rounds,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "wall_s": round(time.monotonic() - t_start, 1),
                "skipped": skipped,
                **summary,
                "env": {**versions(), "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
            }
        ),
        flush=True,
    )
    table = markdown(summary, list(args.only), list(args.phases), skipped)
    print(table, file=sys.stdout if args.markdown else sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    if args.serve:
        if not args.port_file:
            raise SystemExit("--serve needs --port-file")
        CONTESTANTS[args.serve].serve(args.port_file, args)
        return
    # SIGTERM -> SystemExit, so that the finally: above still stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(args)
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
