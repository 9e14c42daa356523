"""Config: sources, merging and precedence, typed access, hot reload, broken files, watches, secrets."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.actors import Actor, ask, start_node
from trimicro.cluster.config import (
    Change,
    Config,
    ConfigActor,
    ConfigChanged,
    GetConfig,
    WatchConfig,
    default_sources,
    generate_secret_key,
    open_config,
    seal,
)
from trimicro.cluster.config.sources import (
    MAX_DEPTH,
    MAX_SOURCE_BYTES,
    Defaults,
    EnvSource,
    FileSource,
    FlagSource,
    StoreSource,
    deep_merge,
    write_store_config,
)
from trimicro.cluster.store import MemoryStore, Record
from trimicro.mailbox.errors import BadRequest, Conflict, Forbidden, NotFound

ROOT = Path(__file__).resolve().parent.parent


def rewrite(path: Path, text: str) -> None:
    """Rewrite a file so its fingerprint surely changes, even within one mtime tick."""
    before = path.stat() if path.exists() else None
    path.write_text(text)
    if before is not None:
        st_ = path.stat()
        if (st_.st_mtime_ns, st_.st_size) == (before.st_mtime_ns, before.st_size):
            os.utime(path, ns=(st_.st_atime_ns, before.st_mtime_ns + 1_000_000))


async def loaded(*sources: Any, **kw: Any) -> Config:
    config = Config(sources, **kw)
    await config.reload(force=True)
    return config


# --------------------------------------------------------------------------------------------
# Sources


async def test_file_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"db": {"host": "j", "port": 1}}')
    (tmp_path / "a.toml").write_text('[db]\nhost = "t"\nport = 2\n')
    assert await FileSource(tmp_path / "a.json").load() == {"db": {"host": "j", "port": 1}}
    assert await FileSource(tmp_path / "a.toml").load() == {"db": {"host": "t", "port": 2}}
    (tmp_path / "conf").write_text('{"x": 1}')
    assert await FileSource(tmp_path / "conf", format="json").load() == {"x": 1}
    with pytest.raises(BadRequest, match="format"):
        FileSource(tmp_path / "a.ini")


def test_yaml_needs_pyyaml(tmp_path: Path) -> None:
    try:
        import yaml  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        with pytest.raises(BadRequest, match="PyYAML"):
            FileSource(tmp_path / "a.yaml")
    else:
        assert FileSource(tmp_path / "a.yml").format == "yaml"


async def test_file_limits(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text('{"x": "' + "a" * MAX_SOURCE_BYTES + '"}')
    with pytest.raises(BadRequest, match="limit"):
        await FileSource(big).load()
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1))
    with pytest.raises(BadRequest, match="deeper"):
        await FileSource(deep).load()
    dotted = tmp_path / "dotted.toml"
    dotted.write_text('"a.b" = 1\n')
    with pytest.raises(BadRequest, match="path separator"):
        await FileSource(dotted).load()
    top = tmp_path / "list.json"
    top.write_text("[1, 2]")
    with pytest.raises(BadRequest, match="top level"):
        await FileSource(top).load()


async def test_env_mapping() -> None:
    env = {
        "APP_DB__HOST": "h",
        "APP_DB__PORT": "5433",
        "APP_LOG_LEVEL": "debug",
        "APP_X": "scalar",
        "APP_X__Y": "nested wins",
        "APP_BAD____KEY": "skipped",
        "OTHER_DB__HOST": "not ours",
        "APP_": "no key",
    }
    tree = await EnvSource("APP_", environ=env).load()
    assert tree == {"db": {"host": "h", "port": "5433"}, "log_level": "debug", "x": {"y": "nested wins"}}


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8).filter(
    lambda s: "__" not in s
)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.lists(segment, min_size=1, max_size=4).map(tuple), st.text(max_size=8), max_size=8))
def test_env_names_map_to_paths(paths: dict[tuple[str, ...], str]) -> None:
    """Every variable lands at its path unless a longer variable nests under it."""
    env = {"APP_" + "__".join(p).upper(): v for p, v in paths.items()}
    tree = trio.run(EnvSource("APP_", environ=env).load)
    for parts, value in paths.items():
        shadowed = any(len(q) > len(parts) and q[: len(parts)] == parts for q in paths)
        node: Any = tree
        for part in parts:
            node = node[part]
        assert isinstance(node, dict) if shadowed else node == value


async def test_flags() -> None:
    argv = ["serve", "--db.port=5433", "--db.host", "h", "-v", "--debug", "--log.level", "x", "--", "--no"]
    assert await FlagSource(argv).load() == {
        "db": {"port": "5433", "host": "h"},
        "debug": "true",
        "log": {"level": "x"},
    }
    config = await loaded(FlagSource(["--a..b=1"]))
    assert "--a..b" in config.errors["flags"]


async def test_store_source_json_and_msgpack() -> None:
    store = MemoryStore()
    assert await StoreSource(store).load() == {}  # nothing shared yet: empty, not an error
    await write_store_config(store, {"db": {"host": "s"}})
    assert await StoreSource(store).load() == {"db": {"host": "s"}}
    import msgpack

    await store.write(Record("other", msgpack.packb({"a": {"b": 1}})))
    assert await StoreSource(store, "other").load() == {"a": {"b": 1}}
    await store.write(Record("bad", b"\xc1"))
    with pytest.raises(BadRequest, match="bad"):
        await StoreSource(store, "bad").load()


# --------------------------------------------------------------------------------------------
# Merging and precedence

leaf = st.one_of(st.integers(), st.text(max_size=4), st.booleans())
key = st.sampled_from(["a", "b", "c"])
tree = st.recursive(leaf, lambda inner: st.dictionaries(key, inner, max_size=3), max_leaves=10)
trees = st.dictionaries(key, tree, max_size=3)


def leaves(t: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    if isinstance(t, dict):
        return [item for k, v in t.items() for item in leaves(v, (*prefix, k))]
    return [(prefix, t)]


def at(t: Any, parts: tuple[str, ...]) -> Any:
    for p in parts:
        if not isinstance(t, dict) or p not in t:
            return "<absent>"
        t = t[p]
    return t


@settings(max_examples=50, deadline=None)
@given(trees, trees)
def test_deep_merge_later_wins_for_every_path(base: dict[str, Any], over: dict[str, Any]) -> None:
    merged = deep_merge(base, over)
    for parts, value in leaves(over):
        assert at(merged, parts) == value
    for parts, value in leaves(base):
        # Walk ``over`` along the path: base survives only where over has nothing on the way.
        node: Any = over
        overridden = False
        for p in parts:
            if not isinstance(node, dict):
                overridden = True
                break
            if p not in node:
                break
            node = node[p]
        else:
            overridden = True
        if not overridden:
            assert at(merged, parts) == value


async def test_precedence_across_all_five_kinds(tmp_path: Path) -> None:
    store = MemoryStore()
    await write_store_config(store, {"a": "store", "b": "store", "c": "store", "d": "store"})
    f = tmp_path / "app.toml"
    f.write_text('b = "file"\nc = "file"\nd = "file"\n')
    env = {"APP_C": "env", "APP_D": "env"}
    sources = default_sources(
        {"a": "defaults", "b": "defaults", "e": "defaults", "nested": {"x": 1, "y": 2}},
        files=[f],
        environ=env,
        argv=["--d=flag", "--nested.y=3"],
        store=store,
    )
    assert [s.name for s in sources] == ["defaults", "store:config", f"file:{f}", "env", "flags"]
    config = await loaded(*sources)
    assert config.errors == {}
    assert config.as_dict() == {
        "a": "store",
        "b": "file",
        "c": "env",
        "d": "flag",
        "e": "defaults",
        "nested": {"x": 1, "y": "3"},
    }


async def test_scalar_replaces_map_and_back() -> None:
    config = await loaded(
        Defaults({"db": {"host": "h"}, "x": 1}), Defaults({"db": "off", "x": {"y": 2}}, name="o")
    )
    assert config.as_dict() == {"db": "off", "x": {"y": 2}}


async def test_unique_source_names() -> None:
    with pytest.raises(BadRequest, match="unique"):
        Config([Defaults({}), Defaults({})])


# --------------------------------------------------------------------------------------------
# Typed access


@attrs.frozen
class Pool:
    size: int = 4
    timeout: float = 1.5


@attrs.frozen
class Db:
    host: str
    port: int = 5432
    tls: bool = False
    replicas: list[str] = attrs.field(factory=list)
    pool: Pool = attrs.field(factory=Pool)
    note: str | None = None


async def test_typed_getters() -> None:
    config = await loaded(
        Defaults({"db": {"port": 5432}}),
        EnvSource(
            environ={"APP_DB__PORT": "5433", "APP_DB__TLS": "Yes", "APP_HOSTS": "a, b,c", "APP_R": "0.5"}
        ),
    )
    assert config.get("db.port") == "5433"
    assert config.get("db.port", int) == 5433
    assert config.get("db.tls", bool) is True
    assert config.get("hosts", list) == ["a", "b", "c"]
    assert config.get("r", float) == 0.5
    assert config.get("db.missing", int, default=7) == 7
    assert config.get("db.missing", default=None) is None
    assert config.get("db", dict) == {"port": "5433", "tls": "Yes"}
    assert "db.port" in config and "db.nope" not in config
    with pytest.raises(NotFound, match=r"db\.missing"):
        config.get("db.missing")
    with pytest.raises(BadRequest, match=r"config db\.tls: 'Yes' is not a valid int"):
        config.get("db.tls", int)
    with pytest.raises(BadRequest, match="not a valid bool"):
        config.get("r", bool)
    with pytest.raises(BadRequest, match="a map is not a valid int"):
        config.get("db", int)
    with pytest.raises(BadRequest, match="empty segment"):
        config.get("db..port")


async def test_get_section_structures_attrs() -> None:
    config = await loaded(
        Defaults({"db": {"host": "h", "replicas": ["r1"], "pool": {"size": 8}, "extra": "ignored"}}),
        EnvSource(environ={"APP_DB__PORT": "6000", "APP_DB__TLS": "on", "APP_DB__POOL__TIMEOUT": "2"}),
    )
    assert config.get_section("db", Db) == Db("h", 6000, True, ["r1"], Pool(8, 2.0))
    assert config.get("db", Db).port == 6000

    @attrs.frozen
    class App:
        db: Db

    assert config.get_section("", App).db.host == "h"
    bad = await loaded(Defaults({"db": {"host": "h", "pool": {"size": "many"}}}))
    with pytest.raises(BadRequest, match=r"db\.pool\.size"):
        bad.get_section("db", Db)
    with pytest.raises(BadRequest, match=r"db\.host: missing"):
        (await loaded(Defaults({"db": {}}))).get_section("db", Db)


# --------------------------------------------------------------------------------------------
# Failures and reload


async def test_missing_file_warns_and_others_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trimicro.cluster.config"):
        config = await loaded(Defaults({"a": 1}), FileSource(tmp_path / "nope.json"))
    assert config.get("a") == 1
    assert "file not found" in config.errors[f"file:{tmp_path / 'nope.json'}"]
    assert any(
        f"file:{tmp_path / 'nope.json'}" in r.getMessage() and "file not found" in r.getMessage()
        for r in caplog.records
    )


async def test_hot_reload_within_a_second(tmp_path: Path) -> None:
    f = tmp_path / "app.json"
    f.write_text(json.dumps({"db": {"port": 1}}))
    async with open_config(Defaults({"db": {"port": 0}}), FileSource(f), interval=0.05) as config:
        assert config.get("db.port", int) == 1
        version = config.version
        rewrite(f, json.dumps({"db": {"port": 2222}}))
        with trio.fail_after(1):
            await config.wait_changed(version)
        assert config.get("db.port", int) == 2222


async def test_broken_file_keeps_last_good_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "app.toml"
    f.write_text("port = 1\n")
    async with open_config(FileSource(f, name="app"), interval=0.05) as config:
        version = config.version
        with caplog.at_level(logging.WARNING, logger="trimicro.cluster.config"):
            rewrite(f, "port = = broken\n")
            with trio.fail_after(1):
                while "app" not in config.errors:
                    await config.wait_reloaded()
        assert "invalid TOML" in config.errors["app"]
        assert config.get("port", int) == 1 and config.version == version
        assert sum("app" in r.getMessage() for r in caplog.records) == 1  # reported once, not per poll
        rewrite(f, "port = 3\n")
        with trio.fail_after(1):
            await config.wait_changed(version)
        assert config.get("port", int) == 3 and config.errors == {}


async def test_error_in_block_is_raised_as_itself() -> None:
    with pytest.raises(NotFound):
        async with open_config(Defaults({})) as config:
            config.get("nope")


async def test_deleted_file_keeps_last_good(tmp_path: Path) -> None:
    f = tmp_path / "app.json"
    f.write_text('{"k": "v"}')
    config = await loaded(FileSource(f, name="app"))
    f.unlink()
    assert not await config.reload()
    assert config.get("k") == "v" and "not found" in config.errors["app"]


async def test_store_shared_config_reloads() -> None:
    store = MemoryStore()
    await write_store_config(store, {"feature": {"on": False}})
    async with open_config(StoreSource(store), interval=0.05) as config:
        version = config.version
        await write_store_config(store, {"feature": {"on": True}})
        with trio.fail_after(1):
            await config.wait_changed(version)
        assert config.get("feature.on", bool) is True
        await store.aclose()  # unreachable: keeps the last good value
        with trio.fail_after(1):
            while "store:config" not in config.errors:
                await config.wait_reloaded()
        assert config.get("feature.on", bool) is True and "closed" in config.errors["store:config"]


async def test_slow_source_times_out() -> None:
    class Slow:
        name = "slow"

        async def load(self) -> dict[str, Any]:
            await trio.sleep_forever()
            raise AssertionError

        def fingerprint(self) -> object:
            return None

    config = await loaded(Defaults({"a": 1}), Slow(), load_timeout=0.01)
    assert config.get("a") == 1 and "longer than" in config.errors["slow"]


# --------------------------------------------------------------------------------------------
# Watches


async def test_watch_iterator(tmp_path: Path) -> None:
    f = tmp_path / "app.json"
    f.write_text('{"db": {"port": 1}, "other": 0}')
    async with open_config(FileSource(f), interval=0.05) as config, config.watch("db.port") as changes:
        rewrite(f, '{"db": {"port": 1}, "other": 11}')  # another path: no change for us
        with trio.fail_after(1):
            await config.wait_changed(config.version)
        rewrite(f, '{"db": {"port": 22}, "other": 11}')
        with trio.fail_after(1):
            assert await changes.__anext__() == Change("db.port", 1, 22)
        rewrite(f, '{"other": 11}')
        with trio.fail_after(1):
            assert await changes.__anext__() == Change("db.port", 22, None)
    # the watch ended with its block: iteration stops
    assert [c async for c in changes] == []


async def test_slow_watcher_keeps_newest_in_bounded_buffer() -> None:
    config = Config([Defaults({})])
    watch = config.watch("n")
    for n in range(100):
        config._merged = {"n": n}
        config._notify({"n": n - 1}, {"n": n})
    assert len(watch._buffer) == 16
    got = [await watch.__anext__() for _ in range(16)]
    assert got[-1] == Change("n", 98, 99)
    watch.close()
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()


class Recorder(Actor):
    max_concurrency = 4  # an ask may wait in ``seen_changes`` while changes keep arriving

    def __init__(self) -> None:
        self.seen: list[ConfigChanged] = []
        self.arrived = trio.Event()

    async def changed(self, msg: ConfigChanged) -> None:
        self.seen.append(msg)
        self.arrived.set()

    async def seen_changes(self, msg: int) -> list[ConfigChanged]:
        """Answer with the changes so far, waiting for at least ``msg`` of them."""
        while len(self.seen) < msg:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return list(self.seen)


async def test_watch_actor_gets_change_messages(tmp_path: Path) -> None:
    f = tmp_path / "app.toml"
    f.write_text("[db]\nport = 1\n")
    async with start_node("cfg") as node, open_config(FileSource(f), interval=0.05) as config:
        ref = await node.spawn(Recorder, name="recorder")
        unwatch = config.watch_actor("db.port", ref)
        rewrite(f, "[db]\nport = 2\n")
        with trio.fail_after(1):
            seen = await ask(ref, 1)
        assert seen == [ConfigChanged("db.port", 1, 2)]
        unwatch()


async def test_config_actor_serves_get_and_watch(tmp_path: Path) -> None:
    key = generate_secret_key()
    f = tmp_path / "app.json"
    f.write_text(json.dumps({"db": {"port": 1, "password": seal(key, "hunter2")}}))

    class Client(Recorder):
        async def subscribe(self, msg: tuple) -> None:  # type: ignore[type-arg]
            await ask(msg[0], WatchConfig(msg[1]))

    async with (
        start_node("cfg") as node,
        open_config(FileSource(f), interval=0.05, secret_key=key) as config,
    ):
        server = await node.spawn(ConfigActor, config, name="config")
        assert await ask(server, GetConfig("db.port")) == 1
        assert await ask(server, {"path": "db.port"}, endpoint="Config.get") == 1
        with pytest.raises(NotFound):
            await ask(server, GetConfig("db.nope"))
        with pytest.raises(Forbidden):
            await ask(server, GetConfig("db.password"))
        with pytest.raises(Forbidden):
            await ask(server, GetConfig("db"))  # a map holding a secret is a secret
        client = await node.spawn(Client, name="client")
        await ask(client, (server, "db.port"))
        rewrite(f, json.dumps({"db": {"port": 2}}))
        with trio.fail_after(1):
            assert await ask(client, 1) == [ConfigChanged("db.port", 1, 2)]


async def test_watch_actor_needs_running_config() -> None:
    config = await loaded(Defaults({}))
    async with start_node("cfg") as node:
        ref = await node.spawn(Recorder)
        with pytest.raises(Conflict, match="running config"):
            config.watch_actor("a", ref)


# --------------------------------------------------------------------------------------------
# Secrets


async def test_sealed_secret_opened_only_by_get(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = generate_secret_key()
    sealed = seal(key, "s3cr3t-pw")
    assert sealed.startswith("sealed:") and "s3cr3t-pw" not in sealed
    env = {"APP_DB__PASSWORD": sealed, "APP_TOKENS": seal(key, "t1")}
    with caplog.at_level(logging.DEBUG):
        async with open_config(
            Defaults({"db": {"user": "u"}}), EnvSource(environ=env), secret_key=key
        ) as config:
            assert config.get("db.password") == "s3cr3t-pw"
            assert config.get("db", dict) == {"user": "u", "password": "s3cr3t-pw"}
            assert config.get("tokens", list) == ["t1"]
            watch = config.watch("db")
            env["APP_DB__PASSWORD"] = seal(key, "n3w-pw")
            await config.reload()
            change = await watch.__anext__()
            for text in (repr(config), str(config.as_dict()), repr(change), str(config._merged)):
                assert "s3cr3t-pw" not in text and "n3w-pw" not in text
            assert config.get("db.password") == "n3w-pw"
            with pytest.raises(BadRequest) as info:
                config.get("db.password", int)
            assert "n3w-pw" not in str(info.value)

            @attrs.frozen
            class Creds:
                password: int

            with pytest.raises(BadRequest) as info:
                config.get_section("db", Creds)
            assert "n3w-pw" not in str(info.value)
    assert not any("pw" in r.getMessage() for r in caplog.records)


async def test_wrong_or_no_key_cannot_unseal() -> None:
    sealed = seal(generate_secret_key(), "plain")
    wrong = await loaded(Defaults({"p": sealed}), secret_key=generate_secret_key())
    with pytest.raises(BadRequest) as info:
        wrong.get("p")
    assert info.value.detail == "cannot unseal p"
    none = await loaded(Defaults({"p": sealed, "q": "sealed:!!notbase64"}))
    with pytest.raises(BadRequest, match="no secret key"):
        none.get("p")
    with pytest.raises(BadRequest, match="a secret key is 32 bytes"):
        Config([], secret_key=b"short")
    tampered = await loaded(Defaults({"q": "sealed:!!notbase64"}), secret_key=generate_secret_key())
    with pytest.raises(BadRequest, match="cannot unseal q"):
        tampered.get("q")
