"""Config from five sources, hot reload into a running actor, a broken edit, a sealed secret.

Run it with `python examples/config_demo.py`. It uses a temporary directory, an in-memory store
and no network: everything a node would need, in one process.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import attrs
import trio

from trimicro.actors import Actor, ask, start_node
from trimicro.cluster.config import (
    ConfigChanged,
    default_sources,
    generate_secret_key,
    open_config,
    seal,
    write_store_config,
)
from trimicro.cluster.store import MemoryStore


@attrs.frozen
class Db:
    host: str
    port: int = 5432
    pool_size: int = 5


@attrs.frozen
class Seen:
    """Ask a PoolWatcher for the changes it has seen, once there are at least ``count``."""

    count: int


class PoolWatcher(Actor):
    """Stands for any actor that must follow a setting while it runs."""

    max_concurrency = 2  # a ``Seen`` ask may wait while changes keep arriving

    def __init__(self) -> None:
        self.changes: list[ConfigChanged] = []
        self.arrived = trio.Event()

    async def changed(self, msg: ConfigChanged) -> None:
        self.changes.append(msg)
        self.arrived.set()

    async def seen(self, msg: Seen) -> list[ConfigChanged]:
        while len(self.changes) < msg.count:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return list(self.changes)


def edit(path: Path, text: str) -> None:
    """Write ``text``; nudge the mtime if the write landed in the same tick with the same size."""
    before = path.stat()
    path.write_text(text)
    after = path.stat()
    if (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size):
        os.utime(path, ns=(after.st_atime_ns, after.st_mtime_ns + 1_000_000))


async def main() -> None:
    key = generate_secret_key()  # in production: from a key file or a secrets manager
    with tempfile.TemporaryDirectory() as tmp:
        app_toml = Path(tmp) / "app.toml"
        app_toml.write_text("[db]\npool_size = 10\n")
        store = MemoryStore()
        await write_store_config(store, {"features": {"beta": True}})  # shared by the cluster

        sources = default_sources(
            {"db": {"host": "localhost", "port": 5432, "pool_size": 5}},  # defaults in code
            store=store,
            files=[app_toml],
            environ={"APP_DB__HOST": "db.internal", "APP_DB__PASSWORD": seal(key, "correct horse")},
            argv=["--db.port=5433"],
        )
        async with start_node("config-demo") as node, open_config(*sources, secret_key=key) as config:
            print(f"db.port = {config.get('db.port', int)} (from flags)")
            print(f"db.host = {config.get('db.host')} (from env)")
            print(f"features.beta = {config.get('features.beta', bool)} (from the store)")
            print(f"as attrs: {config.get_section('db', Db)}")

            watcher = await node.spawn(PoolWatcher, name="pool")
            config.watch_actor("db.pool_size", watcher)
            edit(app_toml, "[db]\npool_size = 20\n")
            with trio.fail_after(1):
                (change,) = await ask(watcher, Seen(1))
            print(f"actor saw {change.path}: {change.old} -> {change.new}")

            edit(app_toml, "[db\npool_size = oops\n")
            with trio.fail_after(1):
                while not config.errors:
                    await config.wait_reloaded()
            reason = config.errors[f"file:{app_toml}"]
            print(f"broken file kept pool_size = {config.get('db.pool_size', int)}; error: {reason}")

            edit(app_toml, "[db]\npool_size = 30\n")
            with trio.fail_after(1):
                while config.errors:
                    await config.wait_reloaded()
            print(f"recovered: pool_size = {config.get('db.pool_size', int)}")

            password = config.get("db.password")
            hidden = "correct horse" not in repr(config) and "correct horse" not in str(config.as_dict())
            print(f"password unsealed in memory only: {password == 'correct horse' and hidden}")


if __name__ == "__main__":
    trio.run(main)
