"""What every command shares: the plugin URLs, identity and token options and how they resolve
(flag, else environment, else default), the short-lived client nodes, tables, JSON input.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from pathlib import Path
from typing import Any, TextIO

from .. import plugins
from ..cluster import start_cluster

__all__ = [
    "UsageError",
    "auth_headers",
    "broker_url",
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


class UsageError(Exception):
    """A mistake in how the command was used (exit 2, message only)."""


# ---- client commands ---------------------------------------------------------------------------


async def client_node(args: argparse.Namespace) -> Any:
    return start_cluster(
        f"cli-{uuid.uuid4().hex[:8]}",
        registry=registry_url(args),
        broker=broker_url(args),
        store="",
        listen=None,
        home=home_dir(args),
        membership=False,
        announce=False,
        auth_refresh=None,  # it serves nothing: no rules to fetch for a one-shot command
        audience=token_audience(args),
        config_file=config_file(args),
    )


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
    return start_cluster(
        f"cli-{uuid.uuid4().hex[:8]}",
        registry=registry_url(args),
        broker=broker_url(args),
        store="",
        home=home_dir(args),
        auth_refresh=None,
        audience=token_audience(args),
        config_file=config_file(args),
    )
