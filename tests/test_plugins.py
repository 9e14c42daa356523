"""Plugins by entry point, selected by URL: the loader, start_cluster and the environment, the
`trimicro plugins` command, and the example plugin (a JSON-file registry) pip-installed into this
venv and used by two nodes in two processes."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from nats_server import NatsServer, nats_server
from procs import python_process

from trimicro.actors import Actor
from trimicro.cluster import plugins
from trimicro.cluster.cli import main
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import (
    MdnsRegistry,
    MemoryRegistry,
    NodeInfo,
    Registry,
    Service,
    StaticRegistry,
)
from trimicro.cluster.store import LmdbStore, MemoryStore, Record
from trimicro.mailbox.errors import MicroError, ServiceUnavailable
from trimicro.testing.conformance import RegistryConformance

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "examples" / "plugins" / "jsonfile"
CLI = ("-m", "trimicro.cluster.cli")
__all__ = ["nats_server"]  # the fixture, used by name


class Echo(Actor):
    service_name = "Echo"

    async def say(self, msg: dict[str, str]) -> str:
        return f"{msg['text']} from {self.context.node.id}"


# ---- the loader -------------------------------------------------------------------------------


def test_an_unknown_scheme_is_a_clear_error_naming_the_installed_schemes() -> None:
    with pytest.raises(plugins.UnknownScheme) as caught:
        plugins.load("registry", "consul://10.0.0.1:8500")
    exc = caught.value
    assert isinstance(exc, ValueError) and isinstance(exc, MicroError)
    assert (exc.code, exc.id) == (400, "plugins")
    assert "no trimicro.registry plugin for scheme 'consul'" in exc.detail
    assert all(f"{s}://" in exc.detail for s in ("mdns", "memory", "static"))
    with pytest.raises(plugins.UnknownScheme, match=r"installed: .*lmdb://.*memory://"):
        plugins.load("trimicro.store", "redis://localhost")


def test_bad_urls_and_groups_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(plugins.PluginError, match="no plugin group 'database'"):
        plugins.load("database", "memory://")
    with pytest.raises(plugins.PluginError, match="is not a URL"):
        plugins.load("registry", "/not/a/url")
    with pytest.raises(plugins.PluginError, match=r"unknown option\(s\) colour"):
        plugins.load("store", f"lmdb://{tmp_path}?colour=blue")
    with pytest.raises(plugins.PluginError, match="needs a path"):
        plugins.load("store", "lmdb://")
    with pytest.raises(plugins.PluginError, match="a seed is HOST:PORT or NODE_ID@HOST:PORT"):
        plugins.load("registry", "static://127.0.0.1")
    with pytest.raises(plugins.PluginError, match="a seed is HOST:PORT or NODE_ID@HOST:PORT"):
        plugins.load("registry", "static://@127.0.0.1:7000")


def test_static_registry_takes_bare_seed_addresses() -> None:
    """``static://HOST:PORT,...`` lists addresses to join through (their node ids come from the
    handshake), beside the records of ``NODE@HOST:PORT`` seeds."""
    static = plugins.load("registry", "static://10.0.0.1:7000,n2@10.0.0.2:7000,[::1]:7001?cluster=ab")
    assert static.seeds == ("10.0.0.1:7000", "[::1]:7001")
    assert plugins.load("registry", "static://n1@127.0.0.1:7000?cluster=ab").seeds == ()


def test_built_ins_are_selected_by_url(tmp_path: Path) -> None:
    assert isinstance(plugins.load("registry", "mdns"), MdnsRegistry)  # the CLI's old word
    assert isinstance(plugins.load("registry", "mdns://127.0.0.1"), MdnsRegistry)
    assert plugins.load("registry", "memory://a") is plugins.load("registry", "memory://a")
    assert plugins.load("registry", "memory://a") is not plugins.load("registry", "memory://b")
    static = plugins.load("registry", "static://n1@127.0.0.1:7000,n2@127.0.0.1:7001?cluster=ab")
    assert isinstance(static, StaticRegistry)
    assert isinstance(plugins.load("store", "memory://"), MemoryStore)
    lmdb = plugins.load("store", f"lmdb://{tmp_path}/db?table=t&sync=false")
    assert isinstance(lmdb, LmdbStore)
    codec = plugins.load("codec", "json")
    assert codec.content_type == "application/json"
    assert type(plugins.load("transport", "tcp://?max_frame_size=1024")).__name__ == "TcpTransport"
    assert {("mdns", "trimicro"), ("static", "trimicro")} <= set(plugins.installed("registry").items())

    async def seeds() -> list[Service]:
        found = await static.get_service("trimicro.node")
        await lmdb.aclose()
        return found

    (record,) = trio.run(seeds)
    assert record.nodes == (
        NodeInfo("n1", "127.0.0.1:7000", {}, "ab"),
        NodeInfo("n2", "127.0.0.1:7001", {}, "ab"),
    )


# ---- start_cluster and the environment --------------------------------------------------------


async def test_start_cluster_takes_urls_for_registry_and_store(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 'store'}"
    async with (
        start_cluster("server", registry="memory://urls", store=url, home=tmp_path, membership=False) as a,
        start_cluster("client", registry="memory://urls", home=tmp_path, membership=False) as b,
    ):
        assert isinstance(a.registry, MemoryRegistry) and a.registry is b.registry
        assert isinstance(a.store, LmdbStore) and b.store is None
        await a.serve(Echo)
        assert await b.call("echo", "Echo.say", {"text": "hi"}) == "hi from server"
        await a.store.write(Record("k", b"v"))
        store = a.store
    with pytest.raises(ServiceUnavailable):  # the cluster built it from the URL, so closed it
        await store.read("k")
    reopened = plugins.load("store", url)
    try:
        assert [r.value for r in await reopened.read("k")] == [b"v"]
    finally:
        await reopened.aclose()


async def test_the_environment_chooses_when_start_cluster_is_not_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIMICRO_REGISTRY", "memory://from-env")
    monkeypatch.setenv("TRIMICRO_STORE", "memory://from-env")
    monkeypatch.setenv("TRIMICRO_CODEC", "json,msgpack")
    async with start_cluster("env", home=tmp_path, membership=False) as c:
        assert c.registry is plugins.load("registry", "memory://from-env")
        assert isinstance(c.store, MemoryStore)
        assert c.node.codecs.default_codec.content_type == "application/json"
    async with start_cluster(
        "told", registry="memory://told", store="", home=tmp_path, membership=False
    ) as c:
        assert c.registry is not plugins.load("registry", "memory://from-env") and c.store is None
    monkeypatch.setenv("TRIMICRO_REGISTRY", "etcd://127.0.0.1:2379")
    with pytest.raises(plugins.UnknownScheme, match="etcd"):
        async with start_cluster("bad", home=tmp_path, membership=False):
            pass


def test_the_cli_takes_urls_before_or_after_the_subcommand(tmp_path: Path) -> None:
    import io

    for argv in (
        ["--registry", "etcd://x", "services", "--wait", "0"],
        ["services", "--wait", "0", "--registry", "etcd://x"],
    ):
        err = io.StringIO()
        assert main(["--home", str(tmp_path), *argv], io.StringIO(), err) == 2
        assert err.getvalue().startswith("trimicro: no trimicro.registry plugin for scheme 'etcd'")
        assert "mdns://" in err.getvalue() and "Traceback" not in err.getvalue()
    out = io.StringIO()
    assert main(["--home", str(tmp_path), "services", "--registry", "memory://", "--wait", "0"], out) == 0
    assert out.getvalue().split() == ["SERVICE", "VERSION", "NODES"]


def test_trimicro_plugins_lists_every_group_with_schemes_and_distributions() -> None:
    result = subprocess.run(
        [sys.executable, *CLI, "plugins", "--json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert list(listed) == list(plugins.GROUPS.values())
    assert {"mdns", "memory", "static"} <= set(listed["trimicro.registry"])
    assert listed["trimicro.store"]["lmdb"] == listed["trimicro.registry"]["mdns"] == "trimicro"
    assert {"msgpack", "cbor", "json"} <= set(listed["trimicro.codec"])
    table = subprocess.run(
        [sys.executable, *CLI, "plugins"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert table.splitlines()[0].split() == ["GROUP", "SCHEME", "DISTRIBUTION"]
    assert ["trimicro.store", "lmdb://", "trimicro"] in [line.split() for line in table.splitlines()]
    assert ["trimicro.broker", "cluster://", "trimicro"] in [line.split() for line in table.splitlines()]
    assert ["trimicro.auth", "jwt://", "trimicro"] in [line.split() for line in table.splitlines()]
    for group in ("trimicro.registry", "trimicro.broker", "trimicro.store"):
        assert listed[group]["nats"] == "trimicro"


def test_the_cli_takes_nats_urls(tmp_path: Path, nats_server: NatsServer) -> None:
    """``--registry nats://...`` before or after the subcommand (the server is the tests' own)."""
    import io

    url = f"{nats_server.url}?bucket=cli_{uuid.uuid4().hex[:8]}"
    for argv in (
        ["--registry", url, "services", "--wait", "0"],
        ["services", "--wait", "0", "--registry", url],
    ):
        out, err = io.StringIO(), io.StringIO()
        assert main(["--home", str(tmp_path), *argv], out, err) == 0, err.getvalue()
        assert out.getvalue().split() == ["SERVICE", "VERSION", "NODES"]
    err = io.StringIO()
    assert (
        main(["--home", str(tmp_path), "services", "--registry", f"{url}&colour=red"], io.StringIO(), err)
        == 2
    )
    assert "unknown option(s) colour" in err.getvalue() and "Traceback" not in err.getvalue()


# ---- the example plugin, installed and used across processes -----------------------------------


def _installed_plugin_is_current() -> bool:
    """Whether this venv holds the example plugin as the source has it (then pip is skipped)."""
    try:
        dist = importlib.metadata.distribution("trimicro-jsonfile")
    except importlib.metadata.PackageNotFoundError:
        return False
    installed = Path(str(dist.locate_file("trimicro_jsonfile.py")))
    source = PLUGIN / "trimicro_jsonfile.py"
    eps = {(ep.group, ep.name) for ep in dist.entry_points}
    return (
        installed.is_file()
        and installed.read_bytes() == source.read_bytes()
        and ("trimicro.registry", "jsonfile") in eps
    )


def _isolation_not_needed() -> bool:
    """Whether the venv can build the plugin itself (setuptools and, for older ones, wheel)."""
    try:
        import setuptools

        if tuple(int(p) for p in setuptools.__version__.split(".")[:2]) >= (70, 1):
            return True
        importlib.import_module("wheel")
        return True
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="module")
def jsonfile_plugin(tmp_path_factory: pytest.TempPathFactory) -> None:
    """``pip install examples/plugins/jsonfile`` into this venv (what a user does; idempotent:
    skipped when the installed copy matches the source). It only adds a module and a scheme.
    Built from a copy, so the build leaves nothing in the source tree."""
    if not _installed_plugin_is_current():
        flags = ["--no-build-isolation"] if _isolation_not_needed() else []
        copy = tmp_path_factory.mktemp("plugin") / "jsonfile"
        shutil.copytree(PLUGIN, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *flags, str(copy)],
            check=True,
            timeout=300,
        )
        importlib.invalidate_caches()
    assert _installed_plugin_is_current()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_the_example_plugin_serves_two_nodes_in_two_processes(
    jsonfile_plugin: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = f"jsonfile://{tmp_path / 'registry.json'}?poll=0.2"
    monkeypatch.setenv("TRIMICRO_HOME", str(tmp_path / "home"))
    for name in ("TRIMICRO_REGISTRY", "TRIMICRO_STORE", "TRIMICRO_AUDIENCE", "TRIMICRO_CODEC"):
        monkeypatch.delenv(name, raising=False)
    env = dict(os.environ)
    listed = json.loads(_cli(env, "plugins", "--json").stdout)
    assert listed["trimicro.registry"]["jsonfile"] == "trimicro-jsonfile"
    # One node chooses the plugin by flag; the other process by the environment.
    argv = ("--registry", registry, "run", str(ROOT / "examples" / "services.py"), "--name", "file-node")
    async with python_process(*CLI, *argv) as proc:
        with trio.fail_after(60):
            assert "node file-node at 127.0.0.1:" in await proc.line()
        doc = json.loads((tmp_path / "registry.json").read_text())
        assert {e["name"] for e in doc["entries"]} >= {"greeter", "counter", "trimicro.node"}
        called = await trio.to_thread.run_sync(
            lambda: _cli(
                dict(env, TRIMICRO_REGISTRY=registry), "call", "greeter", "Greeter.hello", '{"name": "Ada"}'
            )
        )
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == "Hello, Ada! (from node file-node)"
        proc.signal(signal.SIGINT)
        with trio.fail_after(30):
            assert "SIGINT: deregistering" in await proc.line()
            await proc.proc.wait()
        doc = json.loads((tmp_path / "registry.json").read_text())
        assert doc["entries"] == []  # deregistered on the way out


async def test_the_example_plugin_in_process_ttl_and_watch(jsonfile_plugin: None, tmp_path: Path) -> None:
    from trimicro.cluster.registry import EventType

    url = f"jsonfile://{tmp_path / 'r.json'}?poll=0.05"
    one, two = plugins.load("registry", url), plugins.load("registry", url)  # two "processes"
    record = Service("svc", "1", {}, (), (NodeInfo("n1", "127.0.0.1:1"),))
    async with two.watch("svc") as events:
        await one.register(record, ttl=0.5)
        assert [s.nodes for s in await two.get_service("svc")] == [record.nodes]
        with trio.fail_after(10):
            event = await events.__anext__()
            assert (event.type, event.service) == (EventType.CREATE, record)
            event = await events.__anext__()  # the TTL lapses without a deregister
            assert event.type is EventType.DELETE
    assert await two.list_services() == []


# --8<-- [start:conformance]
class TestJsonFileRegistryConformance(RegistryConformance):
    """The example plugin keeps every promise of a registry, as the built-ins do: two registries
    on one file (built from the URL, as a user selects it) stand for two processes. Real time:
    the plugin's TTLs are wall-clock, since other processes read them."""

    @staticmethod
    @asynccontextmanager
    async def _on_file(path: Path) -> AsyncIterator[Registry]:
        registry = plugins.load("registry", f"jsonfile://{path}?poll=0.05")
        try:
            yield registry
        finally:
            await registry.aclose()

    @pytest.fixture
    async def registry(self, jsonfile_plugin: None, tmp_path: Path) -> AsyncIterator[Registry]:
        async with self._on_file(tmp_path / "registry.json") as registry:
            yield registry

    @pytest.fixture
    async def observer(self, jsonfile_plugin: None, tmp_path: Path) -> AsyncIterator[Registry]:
        async with self._on_file(tmp_path / "registry.json") as observer:
            yield observer


# --8<-- [end:conformance]
