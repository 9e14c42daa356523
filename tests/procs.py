"""Helpers for tests that start real OS processes and read their stdout line by line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio


class Proc:
    """A child process whose stdout is read as lines."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._buffer = b""
        #: What the process announced as its address, when it does.
        self.address = ""

    async def line(self) -> str:
        stdout = self.proc.stdout
        assert stdout is not None
        while b"\n" not in self._buffer:
            chunk = await stdout.receive_some(4096)
            if not chunk:
                raise EOFError("process exited")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)


@asynccontextmanager
async def python_process(*argv: str, stderr: Any = subprocess.DEVNULL) -> AsyncIterator[Proc]:
    """Run ``python *argv``; killed (after a SIGCONT, in case it was stopped) when the block ends.
    ``stderr`` is where its standard error goes (a file, to read what it logged)."""
    proc = await trio.lowlevel.open_process([sys.executable, *argv], stdout=subprocess.PIPE, stderr=stderr)
    try:
        yield Proc(proc)
    finally:
        if proc.returncode is None:
            with trio.CancelScope(shield=True):
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
                except ProcessLookupError:
                    pass
                await proc.wait()
