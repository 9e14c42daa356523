"""``trimicro run``: a node serving the services a module defines (and, with ``--store``, that
store and the auth service), until SIGINT or SIGTERM; with ``--workers N``, N such nodes in
processes of their own under this one (:mod:`.workers`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import trio

from trimicro.actors import Actor

from .. import plugins
from ..cluster import Cluster, start_cluster
from .common import (
    UsageError,
    broker_url,
    config_file,
    home_dir,
    listen_address,
    registry_url,
    store_url,
    token_audience,
)
from .workers import say, supervise, until_stopped, usable_cores, worker_listen

__all__ = ["load_target", "run", "services_of"]


def load_target(target: str) -> ModuleType:
    """Import ``target``: a path to a .py file or a dotted module name."""
    path = Path(target)
    if path.suffix == ".py" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"no such file: {target}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def services_of(module: ModuleType) -> list[Any]:
    """What ``run`` serves: ``SERVICES`` if the module defines it, else its own Actor classes
    that declare a ``service_name``. Entries are classes or ``(class, options)`` pairs."""
    declared = getattr(module, "SERVICES", None)
    if declared is not None:
        return list(declared)
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Actor)
        and obj.__module__ == module.__name__
        and getattr(obj, "service_name", None)
    ]


async def run(args: argparse.Namespace, out: TextIO) -> int:
    worker: int | None = getattr(args, "worker", None)
    count = getattr(args, "workers", 1)
    count = usable_cores() if count == "auto" else count
    if worker is None and count > 1:
        return await supervise(args, out, count, getattr(args, "argv", sys.argv[1:]))
    module = load_target(args.target)
    entries = services_of(module)
    if not entries:
        raise UsageError(f"{args.target} defines no services (an Actor with service_name, or SERVICES)")
    # SIGINT and SIGTERM are taken over before the node starts: one arriving while it starts,
    # while the ready line waits on a full stdout pipe, or the instant after that line, waits
    # here (trio keeps it) and stops the node cleanly once it is up (deregistered, drained, exit
    # 0), instead of a KeyboardInterrupt thrown into whatever runs at that moment.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # A worker (of a supervisor) is node NAME-K; only worker 1 serves the store (one cache).
        served = store_url(args) if worker in (None, 1) else None
        async with start_cluster(
            args.name if worker is None else f"{args.name}-{worker}",
            registry=registry_url(args),
            broker=broker_url(args),
            store=served or "",
            listen=worker_listen(listen_address(args), worker or 1),
            seeds=getattr(args, "seed", None) or (),
            home=home_dir(args),
            audience=token_audience(args),
            config_file=config_file(args),
            # Each worker serves /metrics on the next port, as it listens on the next one.
            metrics=worker_listen(args.metrics, worker or 1) if getattr(args, "metrics", None) else False,
        ) as cluster:
            for entry in entries:
                cls, options = (entry, {}) if isinstance(entry, type) else entry
                await cluster.serve(cls, **options)
            auth_store = None
            if served and cluster.store is not None:
                from ..store.service import StoreService

                # Another table of the same store, hidden from "store" (a call may name a table).
                auth_store = plugins.load("store", served, table="auth")
                hidden = {(getattr(auth_store, "database", ""), getattr(auth_store, "table", "auth"))}
                await cluster.serve(StoreService, cluster.store, hidden=hidden, name="store")
                await _serve_auth(cluster, auth_store, args)
            names = ", ".join(sorted(cluster.services_digest().split(",")))
            if cluster.metrics is not None and cluster.metrics.address:
                say(f"metrics at http://{cluster.metrics.address}/metrics", out)
            say(f"node {cluster.id} at {cluster.address} serving {names}", out)
            reason = await until_stopped(signals, lifeline=worker is not None)
            say(f"{reason}: deregistering and stopping", out)
            # Still inside the receiver: a second Ctrl-C during the shutdown is not a traceback.
            if auth_store is not None:
                await auth_store.aclose()
    return 0


async def _serve_auth(cluster: Cluster, store: Any, args: argparse.Namespace) -> None:
    """The node with the store and the authority key also runs the auth service."""
    from trimicro.mailbox.secure.identity import dev_authority

    from ..auth import AUTH_SERVICE, AuthService

    authority = dev_authority(home_dir(args))
    await cluster.serve(AuthService, store, authority.signing_key, name=AUTH_SERVICE)
