"""``trimicro call`` and ``stream``: one request and its reply, or a stream fed from standard input."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import trio

from trimicro.mailbox.limits import DEFAULT_LIMITS

from ..cluster import Cluster
from .common import UsageError, auth_headers, client_node, parse_json
from .discovery import wait_for, wait_seconds

__all__ = ["MAX_INPUT_LINE", "call", "stream"]


async def call(args: argparse.Namespace, out: TextIO) -> int:
    body = parse_json(args.body, "the request") if args.body else {}
    async with client_node(args) as cluster:
        await wait_for(cluster, args.service, wait_seconds(args))
        result = await cluster.call(
            args.service, args.endpoint, body, timeout=args.timeout, headers=auth_headers(args)
        )
    json.dump(result, out, indent=None if args.json else 2, default=str)
    print(file=out)
    return 0


#: Longest line ``stream`` reads from standard input (a message body's limit on the wire).
MAX_INPUT_LINE = DEFAULT_LIMITS.max_size


async def stream(args: argparse.Namespace, out: TextIO) -> int:
    """Exit 0 when the stream ends; 128 + the signal's number when SIGINT or SIGTERM cut it short
    (the stream is closed, so the handler sees it cancelled, and the node stops as usual)."""
    request = parse_json(args.request, "the request") if args.request else None
    caught: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with client_node(args) as cluster, trio.open_nursery() as guard:
            with trio.CancelScope() as work:

                async def stop_on_signal() -> None:
                    async for sig in signals:
                        caught.append(sig)
                        work.cancel()
                        return

                guard.start_soon(stop_on_signal)
                await _stream_lines(cluster, args, request, out)
            guard.cancel_scope.cancel()
    return 128 + caught[0] if caught else 0


async def _stream_lines(cluster: Cluster, args: argparse.Namespace, request: Any, out: TextIO) -> None:
    await wait_for(cluster, args.service, wait_seconds(args))
    async with (
        cluster.open_stream(args.service, args.endpoint, request, headers=auth_headers(args)) as stream,
        trio.open_nursery() as n,
    ):

        async def feed() -> None:
            async for line in _stdin_lines():
                if line.strip():
                    await stream.send(parse_json(line.decode(errors="replace"), "an input line"))
            stream.close_send()

        if not args.no_input:
            n.start_soon(feed)
        else:
            stream.close_send()
        async for item in stream:
            print(json.dumps(item, default=str), file=out, flush=True)
        n.cancel_scope.cancel()


async def _stdin_lines() -> AsyncIterator[bytes]:
    """Standard input, line by line, read in a worker thread that cancellation abandons.

    A blocked read of a terminal or pipe cannot be interrupted, so a thread trio waited for
    would hold Ctrl-C back until the user typed Ctrl-D. The thread reads the file descriptor
    itself (``os.read``), not ``sys.stdin``: an abandoned thread left blocked inside the
    buffered reader would hold its lock when the interpreter closes it at exit.
    """
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        raise UsageError("standard input cannot be read here: pass --no-input") from None
    pending = b""
    while True:
        chunk = await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line
        if len(pending) > MAX_INPUT_LINE:
            raise UsageError(f"an input line is longer than {MAX_INPUT_LINE} bytes")
    if pending:
        yield pending
