"""Nodes on NATS: chosen by URL in start_cluster, by the environment and on the command line
(two processes), and an acknowledged subscriber that restarts gets what it missed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trio
from nats_server import NatsServer, nats_server
from procs import python_process

from trimicro.actors import Actor
from trimicro.cluster import plugins
from trimicro.cluster.broker import Broker, Message
from trimicro.cluster.broker.nats import NatsBroker
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry.nats import NatsRegistry
from trimicro.cluster.store import Record
from trimicro.cluster.store.nats import NatsStore
from trimicro.mailbox.errors import NotFound

__all__ = ["nats_server"]  # the fixture, used by name

ROOT = Path(__file__).resolve().parent.parent
CLI = ("-m", "trimicro.cluster.cli")


class Echo(Actor):
    service_name = "Echo"

    async def say(self, msg: dict[str, str]) -> str:
        return f"{msg['text']} from {self.context.node.id}"


class Collector(Actor):
    """Keeps what it receives outside itself (a restarted node gets a fresh actor)."""

    def __init__(self, got: list[object], arrived: trio.Event) -> None:
        self.got = got
        self.arrived = arrived

    async def on_message(self, msg: Message) -> None:
        self.got.append(msg.body)
        self.arrived.set()


def urls(server: NatsServer) -> dict[str, str]:
    """Registry, broker and store on ``server``, with names no other test uses."""
    tag = uuid.uuid4().hex[:10]
    return {
        "registry": f"{server.url}?bucket=reg_{tag}",
        "broker": f"{server.url}?prefix=b{tag}&stream=S{tag}",
        "store": f"{server.url}?bucket_prefix=s{tag}",
    }


async def test_start_cluster_takes_nats_urls_for_registry_broker_and_store(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    chosen = urls(nats_server)
    async with (
        start_cluster("server", **chosen, home=tmp_path) as a,
        start_cluster("client", **chosen, home=tmp_path) as b,
    ):
        assert isinstance(a.registry, NatsRegistry) and isinstance(a.store, NatsStore)
        assert isinstance(a.pubsub, NatsBroker) and isinstance(a.pubsub, Broker)
        await a.serve(Echo)
        assert await b.call("echo", "Echo.say", {"text": "hi"}) == "hi from server"
        async with a.pubsub.messages("news.*") as news:
            with trio.fail_after(10):
                while b.node.id != a.node.id and a.node.id not in b.pubsub.remote_interest:
                    await b.pubsub.wait_interest()
            assert await b.publish("news.eu", "hello") == 1
            with trio.fail_after(10):
                assert (await news.receive()).body == "hello"
        await a.store.write(Record("k", b"v"))
    again = plugins.load("store", chosen["store"])  # a store of another process would see it
    try:
        assert (await again.read("k"))[0].value == b"v"
    finally:
        await again.aclose()


async def test_the_environment_chooses_nats(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for kind, url in urls(nats_server).items():
        monkeypatch.setenv(f"TRIMICRO_{kind.upper()}", url)
    async with start_cluster("env", home=tmp_path, membership=False) as c:
        assert isinstance(c.registry, NatsRegistry) and isinstance(c.store, NatsStore)
        assert isinstance(c.pubsub, NatsBroker)


async def test_an_acked_subscriber_that_restarts_gets_what_it_missed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    chosen = urls(nats_server)
    got: list[object] = []
    async with start_cluster("publisher", **chosen, home=tmp_path, membership=False) as pub:
        async with start_cluster("subscriber", **chosen, home=tmp_path, membership=False) as sub:
            arrived = trio.Event()
            ref = await sub.node.spawn(Collector, got, arrived, name="billing")
            await sub.pubsub.subscribe("invoices", ref)
            with trio.fail_after(10):
                while "subscriber" not in pub.pubsub.remote_interest:
                    await pub.pubsub.wait_interest()
            assert await pub.publish("invoices", "first", ack=True) == 1
        # The subscriber is gone: the stream keeps what its durable consumer has not acked.
        with trio.fail_after(10):
            while "subscriber" in pub.pubsub.remote_interest:
                await pub.pubsub.wait_interest()
        assert await pub.publish("invoices", "missed-1", ack=True) == 0
        assert await pub.publish("invoices", "missed-2", ack=True) == 0
        arrived = trio.Event()
        async with start_cluster("subscriber", **chosen, home=tmp_path, membership=False) as sub:
            ref = await sub.node.spawn(Collector, got, arrived, name="billing")
            await sub.pubsub.subscribe("invoices", ref)
            with trio.move_on_after(10):
                while got[-1:] != ["missed-2"]:
                    await arrived.wait()
                    arrived = trio.Event()
            assert got[-1:] == ["missed-2"], got
    assert got == ["first", "missed-1", "missed-2"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_cli_runs_a_node_on_nats_and_another_process_calls_it(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = urls(nats_server)
    monkeypatch.setenv("TRIMICRO_HOME", str(tmp_path / "home"))
    for name in ("TRIMICRO_REGISTRY", "TRIMICRO_STORE", "TRIMICRO_BROKER", "TRIMICRO_AUDIENCE"):
        monkeypatch.delenv(name, raising=False)
    env = dict(os.environ)
    flags = ("--registry", chosen["registry"], "--broker", chosen["broker"], "--store", chosen["store"])
    argv = (*flags, "run", str(ROOT / "examples" / "services.py"), "--name", "nats-node")
    async with python_process(*CLI, *argv) as proc:
        with trio.fail_after(60):
            assert "node nats-node at 127.0.0.1:" in await proc.line()
        called = await trio.to_thread.run_sync(
            lambda: _cli(
                dict(env, TRIMICRO_REGISTRY=chosen["registry"]),
                "call",
                "greeter",
                "Greeter.hello",
                '{"name": "Ada"}',
            )
        )
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == "Hello, Ada! (from node nats-node)"
        proc.signal(signal.SIGINT)
        with trio.fail_after(30):
            assert "SIGINT: deregistering" in await proc.line()
            await proc.proc.wait()
    registry = plugins.load("registry", chosen["registry"])
    try:
        with pytest.raises(NotFound):  # deregistered on the way out
            await registry.get_service("greeter")
    finally:
        await registry.aclose()
