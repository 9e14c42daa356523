"""What every command shares: the plugin URLs, identity and token options and how they resolve
(flag, else environment, else default), the short-lived client nodes, tables, JSON input.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import trio

from trimicro.mailbox.secure.identity import default_home, joined

from .. import plugins
from ..cluster import start_cluster

__all__ = [
    "ADMIN_TTL",
    "HeaderSource",
    "UsageError",
    "admin_header_source",
    "admin_headers",
    "auth_headers",
    "broker_url",
    "client_id",
    "client_node",
    "config_file",
    "home_dir",
    "listen_address",
    "member_node",
    "parse_json",
    "print_table",
    "registry_url",
    "store_url",
    "token_audience",
]


def registry_url(args: argparse.Namespace) -> str:
    """``--registry`` (a URL; ``mdns`` and ``memory`` are ``mdns://`` and ``memory://``), else
    ``$TRIMICRO_REGISTRY``, else mDNS on the ``--interface`` addresses (127.0.0.1 without)."""
    interfaces = getattr(args, "interface", None)
    default = "mdns://" + ",".join(interfaces) if interfaces else "mdns://"
    return (
        plugins.configured(
            "registry", getattr(args, "registry", None), default, config_file=config_file(args)
        )
        or default
    )


def listen_address(args: argparse.Namespace) -> str:
    """``--listen``, else port 0 of the first ``--interface``, else of 127.0.0.1."""
    interfaces = getattr(args, "interface", None)
    given: str | None = getattr(args, "listen", None)
    if given:
        return given
    host = interfaces[0] if interfaces else "127.0.0.1"
    return f"[{host}]:0" if ":" in host else f"{host}:0"


def broker_url(args: argparse.Namespace) -> str | None:
    """``--broker`` (a URL), else ``$TRIMICRO_BROKER``, else the cluster's own (``cluster://``)."""
    return plugins.configured(
        "broker", getattr(args, "broker", None), "cluster://", config_file=config_file(args)
    )


def store_url(args: argparse.Namespace) -> str | None:
    """``--store`` (a URL; a folder path, as before URLs, means LMDB there), else ``$TRIMICRO_STORE``."""
    given = getattr(args, "store", None)
    if given and "://" not in given:
        given = "lmdb://" + str(Path(given).expanduser().resolve())
    return plugins.configured("store", given, config_file=config_file(args))


def config_file(args: argparse.Namespace) -> str | None:
    """``--config FILE``: the config file whose ``[plugins]`` table chooses what flags and the
    environment leave open (else ``$TRIMICRO_CONFIG``, read by the plugin loader)."""
    given: str | None = getattr(args, "config", None)
    return given


def home_dir(args: argparse.Namespace) -> Path | None:
    return Path(args.home) if getattr(args, "home", None) else None


def token_audience(args: argparse.Namespace) -> str | None:
    """The cluster's token audience (``--audience`` or ``$TRIMICRO_AUDIENCE``): ``run`` checks
    tokens against it and the admin tokens the CLI signs for itself carry it."""
    return getattr(args, "audience", None) or os.environ.get("TRIMICRO_AUDIENCE") or None


def auth_headers(args: argparse.Namespace) -> dict[str, str] | None:
    """``--token`` (or ``$TRIMICRO_TOKEN``) as the request's bearer token."""
    token = getattr(args, "token", None) or os.environ.get("TRIMICRO_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else None


#: Lifetime of the admin tokens the CLI signs for itself (seconds).
ADMIN_TTL = 300

#: What gives a request's headers when it is sent: a long-running command asks it every time.
HeaderSource = Callable[[], dict[str, str] | None]


def admin_headers(args: argparse.Namespace) -> dict[str, str] | None:
    """``--token`` if given, else a five-minute admin token signed with the home's authority key:
    whoever holds that key (the ``0600`` file) is the cluster's administrator anyway. For one
    command's few calls; a command that runs longer than the token uses :func:`admin_header_source`."""
    return admin_header_source(args)()


def admin_header_source(args: argparse.Namespace, *, clock: Callable[[], float] = time.time) -> HeaderSource:
    """The headers of :func:`admin_headers`, for a command that runs for minutes or hours
    (``trimicro top``): each call returns headers valid then. A token signed here is signed
    again once half its lifetime has passed by ``clock`` (wall-clock seconds, as the token's
    ``exp``), so one call's headers stay valid for at least ``ADMIN_TTL / 2`` seconds; a
    ``--token`` is returned as given (its owner chose its lifetime).

    The authority key is read now: a joined home (:class:`IdentityError`) fails at once, not
    at the first call.
    """
    given = auth_headers(args)
    if given:
        return lambda: given
    from trimicro.mailbox.secure.identity import dev_authority

    from ..auth import Account, issue_token

    authority = dev_authority(home_dir(args))
    admin = Account("admin", "user", authority.public_key.hex(), ("admin",))
    audience = token_audience(args)
    signed: dict[str, str] = {}
    signed_at = 0.0

    def headers() -> dict[str, str]:
        nonlocal signed, signed_at
        now = clock()
        # Also when the clock went back: the token's iat may then be in the future.
        if not signed or not signed_at <= now < signed_at + ADMIN_TTL / 2:
            token = issue_token(authority.signing_key, admin, ttl=ADMIN_TTL, now=now, audience=audience)
            signed, signed_at = {"authorization": f"Bearer {token}"}, now
        return dict(signed)  # the caller's to change

    return headers


class UsageError(Exception):
    """A mistake in how the command was used (exit 2, message only)."""


# ---- client commands ---------------------------------------------------------------------------

#: Client certificates are node certificates whose id starts with this (``cli-HOST``).
CLIENT_PREFIX = "cli-"
#: How long a command waits for a client certificate that other commands use (default).
CLIENT_WAIT = 5.0


@asynccontextmanager
async def client_id(args: argparse.Namespace) -> AsyncIterator[str]:
    """The node id a client command runs as, held until the block ends: ``--as NODE``, else
    in a home with the authority a fresh ``cli-`` id (its certificate is made on the spot).

    A joined home can make no certificate: there it is an installed ``cli-`` certificate
    (docs/hosts.md) or ``--as NODE``, held with a lock file while the command runs, and a
    command waits (``--wait``) for a free one. Two processes under one node id at once would
    break each other: a peer takes the second for a restart of the first and drops its links.
    For the same reason the default is never a served node's id.
    """
    given: str | None = getattr(args, "as_node", None)
    home = default_home(home_dir(args))
    if not joined(home):
        yield given or f"{CLIENT_PREFIX}{uuid.uuid4().hex[:8]}"
        return
    nodes = home / "nodes"
    candidates = (
        [given] if given else sorted(p.parent.name for p in nodes.glob(f"{CLIENT_PREFIX}*/node.cert"))
    )
    if not candidates:
        raise UsageError(
            f"{home} joined a cluster and holds no client certificate: on the authority's host run "
            f"`trimicro cert issue {CLIENT_PREFIX}HOST`, then here `trimicro cert install "
            f"{CLIENT_PREFIX}HOST.bundle.json` (docs/hosts.md)"
        )
    wait = getattr(args, "wait", None)
    deadline = trio.current_time() + (CLIENT_WAIT if wait is None else float(wait))
    while True:
        for node_id in candidates:
            held = _lock(nodes / node_id)
            if held is not None:
                try:
                    yield node_id
                finally:
                    os.close(held)
                return
        if trio.current_time() >= deadline:
            raise UsageError(
                f"other commands use every client certificate of {home} ({', '.join(candidates)}): "
                f"let them finish, or install another (`trimicro cert issue {CLIENT_PREFIX}HOST-2`)"
            )
        await trio.sleep(0.1)  # a lock file has no wake-up: ask again


def _lock(folder: Path) -> int | None:
    """An exclusive lock on ``folder``'s client lock file (held while the fd is open, dropped
    when the process dies), or ``None`` if another process holds it."""
    try:
        fd = os.open(folder / "client.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        raise UsageError(f"no certificate for {folder.name} in {folder.parent.parent}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def client_node(args: argparse.Namespace) -> AbstractAsyncContextManager[Any]:
    """A short-lived node that only calls: not a member, announces nothing, listens nowhere."""
    return _short_lived(args, listen=None, membership=False, announce=False)


@asynccontextmanager
async def _short_lived(args: argparse.Namespace, **options: Any) -> AsyncIterator[Any]:
    async with (
        client_id(args) as node_id,
        start_cluster(
            node_id,
            registry=registry_url(args),
            broker=broker_url(args),
            store="",
            home=home_dir(args),
            auth_refresh=None,  # it serves nothing: no rules to fetch for a one-shot command
            audience=token_audience(args),
            config_file=config_file(args),
            **options,
        ) as cluster,
    ):
        yield cluster


def print_table(rows: list[list[str]], headers: list[str], out: TextIO, indent: str = "") -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(indent + line.rstrip(), file=out)
    for row in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


def member_node(args: argparse.Namespace) -> Any:
    """A short-lived member: pub/sub needs the interest that members exchange, so the node
    announces itself while the command runs (and leaves the membership at exit)."""
    return _short_lived(args)
