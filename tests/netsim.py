"""Hosts for tests: network namespaces on one bridge, each running its own node process.

:class:`Netsim` makes a *bridge* namespace holding a Linux bridge, and one namespace per host
joined to it by a veth pair (``10.99.0.N/24`` on the host's end). The hosts have separate
network stacks (interfaces, routes, sockets, firewall): a node in one reaches another only over
the veth pairs and the bridge, as across a switch. Names are unique per run (a random prefix),
so runs in parallel do not clash; :meth:`Netsim.close` deletes every namespace (and with it its
interfaces, firewall rules and the processes' sockets) and is called by the fixture's finalizer,
even when the test fails.

Faults, from what this machine's kernel has (no netem, no tc gact action):

* **loss**: an nftables rule on the host's input from its veth, ``numgen random mod 100 < N
  drop``: each packet into the host is dropped with probability N % (TCP retransmits);
* **partition**: nftables rules dropping everything in and out of the host's veth (silence,
  not resets: as a cable pulled or a firewall dropping, the peers only notice by timeouts);
* **latency**: a relay process of our own in the host's namespace (:func:`relay`), and an
  nftables ``redirect`` of incoming TCP to the node's port towards it: every chunk the relay
  reads waits ``delay`` seconds before it is written on, in each direction, so each link into
  that host gets ``delay`` one way (twice that round trip). It is TCP only: UDP (mDNS) is not
  delayed, which is why the fault tests join through seeds (their traffic is all TCP).

Run ``python tests/netsim.py relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY``
for the relay (the harness does, inside the namespace).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import trio

HERE = Path(__file__).resolve().parent
SUBNET = "10.99.0"
NODE_PORT = 7000
RELAY_PORT = 7100


class NetsimUnavailable(Exception):
    """Namespaces cannot be created here (not root, no ``ip``, a sandbox without the syscall)."""


def _run(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, check=True, input=input, text=True, capture_output=True, timeout=30)


@attrs.define
class Host:
    """One simulated host: its namespace, its veth and address."""

    ns: str
    veth: str
    address: str

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def nft(self, script: str) -> None:
        _run(*self.argv("nft", "-f", "-"), input=script)


class Netsim:
    """A bridge namespace and hosts on it; see the module docstring. Close it when done."""

    def __init__(self) -> None:
        self.prefix = f"tm{secrets.token_hex(3)}"
        self.bridge = f"{self.prefix}-br"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        try:
            self._add_ns(self.bridge)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise NetsimUnavailable(f"cannot create a network namespace: {detail.strip()}") from exc
        _run("ip", "-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.bridge, "link", "set", "br0", "up")

    def _add_ns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def add_host(self) -> Host:
        i = len(self.hosts) + 1
        host = Host(f"{self.prefix}-h{i}", f"{self.prefix}h{i}", f"{SUBNET}.{i}")
        self._add_ns(host.ns)
        port = f"{self.prefix}b{i}"
        veth = ["type", "veth", "peer", "name", port, "netns", self.bridge]
        _run("ip", "link", "add", host.veth, "netns", host.ns, *veth)
        _run("ip", "-n", self.bridge, "link", "set", port, "master", "br0")
        _run("ip", "-n", self.bridge, "link", "set", port, "up")
        _run("ip", "-n", host.ns, "addr", "add", f"{host.address}/24", "dev", host.veth)
        _run("ip", "-n", host.ns, "link", "set", host.veth, "up")
        host.nft(
            "table inet netsim {\n"
            "  chain input { type filter hook input priority 0; }\n"
            "  chain output { type filter hook output priority 0; }\n"
            "}\n"
            "table ip netsim_nat {\n"
            "  chain prerouting { type nat hook prerouting priority -100; }\n"
            "}\n"
        )
        self.hosts.append(host)
        return host

    # ---- faults --------------------------------------------------------------------------------

    def loss(self, host: Host, percent: int) -> None:
        """Drop ``percent`` % of the packets entering ``host`` from its veth."""
        host.nft(f'add rule inet netsim input iifname "{host.veth}" numgen random mod 100 < {percent} drop\n')

    def partition(self, host: Host) -> None:
        """Drop everything in and out of ``host``'s veth (its peers see silence)."""
        host.nft(
            f'add rule inet netsim input iifname "{host.veth}" drop\n'
            f'add rule inet netsim output oifname "{host.veth}" drop\n'
        )

    def heal(self, host: Host) -> None:
        """Remove the loss and partition rules of ``host`` (the latency relay stays)."""
        host.nft("flush chain inet netsim input\nflush chain inet netsim output\n")

    def redirect_to_relay(self, host: Host, port: int = NODE_PORT, relay_port: int = RELAY_PORT) -> None:
        """New TCP connections into ``host`` for ``port`` go to its relay at ``relay_port``."""
        host.nft(
            f'add rule ip netsim_nat prerouting iifname "{host.veth}" '
            f"tcp dport {port} redirect to :{relay_port}\n"
        )

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            # Processes still in the namespace keep it alive (and their sockets): kill them first.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False)
            for pid in pids.stdout.split():
                with suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.namespaces.clear()


# ---- node processes in hosts -------------------------------------------------------------------


class HostProc:
    """A process in a host whose stdout lines are JSON events (``tests/host_peer.py``).

    It keeps this host's membership :attr:`view` (member id -> state) and call counters from
    those events; :meth:`wait_for` waits on them (woken by each event, bounded by a deadline).
    """

    def __init__(self, host: Host, proc: trio.Process, changed: Callable[[], None]) -> None:
        self.host = host
        self.proc = proc
        self.name = ""
        self.address = ""
        self.view: dict[str, str] = {}
        #: Every membership event: (time.time(), member, kind).
        self.events: list[tuple[float, str, str]] = []
        self.calls = 0
        self.failed = 0
        self.lines: list[str] = []
        self._changed = changed

    async def read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        buffer = b""
        while True:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                self._apply(raw.decode())

    def _apply(self, line: str) -> None:
        self.lines.append(line)
        try:
            event = json.loads(line)
        except ValueError:
            event = {}
        if "ready" in event:
            self.name, self.address = event["ready"], event["address"]
        elif "member" in event:
            member, kind = event["member"], event["event"]
            self.events.append((event["t"], member, kind))
            if kind != "updated":
                self.view[member] = {"joined": "alive"}.get(kind, kind)
        elif "calls" in event:
            self.calls, self.failed = event["calls"], event["failed"]
        self._changed()

    def alive(self) -> set[str]:
        """Members this host holds alive (itself included once it announced)."""
        alive = {m for m, state in self.view.items() if state == "alive"}
        return alive | {self.name} if self.name else alive


class Cluster:
    """The node processes of one test, and a way to wait on what they report."""

    def __init__(self, nursery: trio.Nursery, logs: Path | None) -> None:
        self.nursery = nursery
        self.logs = logs
        self.procs: list[HostProc] = []
        #: The cluster nodes among :attr:`procs` (not the relays).
        self.nodes: list[HostProc] = []
        self._event = trio.Event()

    def _changed(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def start(self, host: Host, *argv: str) -> HostProc:
        """Run ``python argv`` in ``host``; the process is killed when the cluster block ends."""
        stderr: Any = subprocess.DEVNULL
        if self.logs is not None:
            stderr = open(self.logs / f"{host.ns}-{len(self.procs)}.log", "wb")  # noqa: SIM115, ASYNC230
        try:
            proc = await trio.lowlevel.open_process(
                host.argv(sys.executable, *argv), stdout=subprocess.PIPE, stderr=stderr
            )
        finally:
            if stderr is not subprocess.DEVNULL:
                stderr.close()  # the child has its own copy
        hp = HostProc(host, proc, self._changed)
        self.procs.append(hp)
        self.nursery.start_soon(hp.read)
        return hp

    async def peer(self, host: Host, *options: str) -> HostProc:
        """A cluster node in ``host`` (``tests/host_peer.py OPTIONS``), once it is ready."""
        hp = await self.start(host, str(HERE / "host_peer.py"), *options)
        self.nodes.append(hp)
        await self.wait_for(lambda: bool(hp.name), 60, f"{host.ns} ready")
        return hp

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Return once ``predicate()`` holds (checked at each reported event); fail at ``timeout``."""
        with trio.move_on_after(timeout):
            while not predicate():
                await self._event.wait()
            return
        raise AssertionError(f"not within {timeout:g}s: {what}; {self.describe()}")

    def describe(self) -> str:
        views = "; ".join(f"{p.name or p.host.ns}: {sorted(p.view.items())}" for p in self.nodes)
        exited = [
            f"{p.host.ns} exited {p.proc.returncode}" for p in self.procs if p.proc.returncode is not None
        ]
        return views + (f" ({', '.join(exited)}; stderr in {self.logs})" if exited else "")

    def agree(self, procs: list[HostProc] | None = None) -> bool:
        """Whether each of ``procs`` (default: every node) holds every one of them alive."""
        procs = self.nodes if procs is None else procs
        names = {p.name for p in procs}
        return all(names <= p.alive() for p in procs)


@asynccontextmanager
async def processes(logs: Path | None = None) -> AsyncIterator[Cluster]:
    """A :class:`Cluster` whose processes are killed at the end of the block (their standard
    error goes to files in ``logs``, if given)."""
    async with trio.open_nursery() as nursery:
        cluster = Cluster(nursery, logs)
        try:
            yield cluster
        finally:
            with trio.CancelScope(shield=True):
                for p in cluster.procs:
                    if p.proc.returncode is None:
                        p.proc.kill()
                    await p.proc.wait()
            nursery.cancel_scope.cancel()


# ---- the three-host cluster of the fault tests and benchmarks ------------------------------------


def node_options(host: Host, name: str, home: Path, *extra: str) -> list[str]:
    """``tests/host_peer.py`` options for node ``name`` listening on ``host``'s address."""
    return ["--home", str(home), "--name", name, "--listen", f"{host.address}:{NODE_PORT}", *extra]


async def three_hosts(
    netsim: Netsim, cluster: Cluster, home: Path, *, delay: float = 0.0, period: float = 0.2
) -> tuple[list[Host], list[HostProc]]:
    """Hosts and nodes a (serves echo: the seed), b (serves echo, joins through a) and c (calls
    echo every ``period`` s, joins through a). Every link between them is TCP, so with
    ``delay`` > 0 the relays (one per host, set up before the nodes start) delay all of it."""
    hosts = [netsim.add_host() for _ in range(3)]
    if delay > 0:
        for host in hosts:
            netsim.redirect_to_relay(host)
            argv = [host.address, str(RELAY_PORT), host.address, str(NODE_PORT), str(delay)]
            relay = await cluster.start(host, str(HERE / "netsim.py"), "relay", *argv)
            await cluster.wait_for(lambda r=relay: bool(r.name), 60, "relay ready")
    seed = f"{hosts[0].address}:{NODE_PORT}"
    roles = [
        ("a", ["--serve", "echo"]),
        ("b", ["--seed", seed, "--serve", "echo"]),
        ("c", ["--seed", seed, "--call", "echo", "--period", str(period)]),
    ]
    procs = [
        await cluster.peer(h, *node_options(h, name, home, *extra))
        for h, (name, extra) in zip(hosts, roles, strict=True)
    ]
    return hosts, procs


# ---- the latency relay -------------------------------------------------------------------------


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, delay: float) -> None:
    """Copy ``src`` to ``dst``, each chunk written ``delay`` seconds after it was read."""
    send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def writer() -> None:
        async for due, data in receive:
            await trio.sleep_until(due)
            if not data:
                await dst.send_eof()
                return
            await dst.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async for chunk in src:
            send.send_nowait((trio.current_time() + delay, chunk))
        send.send_nowait((trio.current_time() + delay, b""))


async def relay(listen_host: str, listen_port: int, target_host: str, target_port: int, delay: float) -> None:
    """Accept on ``listen_host:listen_port`` and relay each connection to the target, late."""

    async def handle(client: trio.SocketStream) -> None:
        try:
            async with (
                client,
                await trio.open_tcp_stream(target_host, target_port) as server,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(_pump, client, server, delay)
                nursery.start_soon(_pump, server, client, delay)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side went away: the other is closed with it

    listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)
    print(json.dumps({"ready": "relay", "address": f"{listen_host}:{listen_port}"}), flush=True)
    await trio.serve_listeners(handle, listeners)


def _main(argv: list[str]) -> Any:
    if len(argv) == 6 and argv[0] == "relay":
        _, lhost, lport, thost, tport, delay = argv
        return trio.run(relay, lhost, int(lport), thost, int(tport), float(delay))
    sys.exit("usage: netsim.py relay LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT DELAY")


if __name__ == "__main__":
    _main(sys.argv[1:])
