"""The options every command accepts (plugin URLs) and those of every client command, before
or after the subcommand.
"""

from __future__ import annotations

import argparse
from typing import Any

from .discovery import PUBLISH_WAIT, WAIT

__all__ = ["client_options", "log_options", "plugin_options"]


def plugin_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--config``, the ``--registry``, ``--broker`` and ``--store`` URLs, ``--interface`` and
    ``--seed``, before or after the subcommand (after wins)."""
    default = argparse.SUPPRESS if nested else None
    p.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help="a config file (TOML, JSON, YAML) whose [plugins] table names the plugins that flags and "
        "the environment leave open (default $TRIMICRO_CONFIG)",
    )
    p.add_argument(
        "--registry",
        default=default,
        metavar="URL",
        help="discovery: mdns:// (default; or $TRIMICRO_REGISTRY), memory://, static://, or a plugin's",
    )
    p.add_argument(
        "--broker",
        default=default,
        metavar="URL",
        help="pub/sub: cluster:// (default; or $TRIMICRO_BROKER), or a plugin's",
    )
    p.add_argument(
        "--store",
        default=default,
        metavar="URL",
        help="run: also serve this store as service 'store' (and auth): lmdb:///DIR (a bare DIR too), "
        "memory://, a plugin's (default $TRIMICRO_STORE)",
    )
    p.add_argument(
        "--interface",
        action="append",
        default=default,
        metavar="ADDR",
        help="announce and discover by mDNS on this interface address (repeat for several; default "
        "127.0.0.1 only); run listens on the first one unless --listen says otherwise",
    )
    p.add_argument(
        "--seed",
        action="append",
        default=default,
        metavar="HOST:PORT",
        help="run: join the cluster through the member at HOST:PORT and the members it knows (repeat)",
    )


def client_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """Options of every client command; a nested subcommand repeats them (the parent's value
    stands unless given again after the subcommand)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if nested else value

    p.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")
    p.add_argument(
        "--wait",
        type=float,
        default=default(None),
        help=f"seconds to wait for discovery (default {WAIT:g}; publish: {PUBLISH_WAIT:g} for interest)",
    )
    p.add_argument(
        "--token", default=default(None), help="bearer token for the calls (default $TRIMICRO_TOKEN)"
    )
    p.add_argument(
        "--as",
        dest="as_node",
        default=default(None),
        metavar="NODE",
        help="run as this node id (default: a fresh cli- id; in a joined home a free cli- certificate)",
    )


def log_options(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format`` of the commands that run a node until stopped."""
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO (default: membership changes, addresses, registrations), WARNING, ERROR "
        "(default $TRIMICRO_LOG_LEVEL)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text (default) or json: one object per line on stderr (default $TRIMICRO_LOG_FORMAT)",
    )
