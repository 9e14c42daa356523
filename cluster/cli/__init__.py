"""The ``trimicro`` command: run services, list and describe them, call them, stream, see nodes.

Every command other than ``run`` starts a short-lived client node (no services, not a member)
that finds the cluster through the registry (mDNS on 127.0.0.1 by default) and uses the
development identity of ``$TRIMICRO_HOME`` (``~/.trimicro``), like the nodes it talks to; in a
home that joined a cluster, an installed ``cli-`` certificate (:func:`.common.client_id`).
People get tables; ``--json`` gives scripts one JSON document. A failure prints Go Micro's error
fields and exits non-zero; a user error never prints a traceback.

The package: :func:`main` (argument parsing and the exit statuses) here, one module per command
group: :mod:`.serve` (``run``), :mod:`.listing` (``services``, ``describe``, ``nodes``),
:mod:`.calls` (``call``, ``stream``), :mod:`.topics` (``publish``, ``subscribe``), :mod:`.records`
(``store``), :mod:`.accounts` (``auth``), :mod:`.installed` (``plugins``), :mod:`.trust`
(``authority``, ``cert``), :mod:`.top` (``top``), :mod:`.health` (``health``); what they
share in :mod:`.common`, :mod:`.discovery` and :mod:`.options`; :mod:`.workers` supervises
``run --workers N``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import trio

from trimicro.actors.lowlevel import configure_logging, unconfigure_logging
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.logs import get_logger

from .. import plugins, tracing
from .accounts import add_auth_parser, auth
from .api import add_api_parser, api
from .calls import call, stream
from .common import UsageError
from .discovery import MISS, PUBLISH_WAIT, WAIT, wait_for, wait_seconds
from .health import add_health_parser, health
from .installed import list_plugins
from .listing import describe, nodes, services
from .options import client_options, log_options, plugin_options
from .records import store
from .serve import load_target, run, services_of
from .top import add_top_parser, top
from .topics import publish, subscribe
from .trust import add_trust_parsers, authority, cert
from .workers import add_worker_options

__all__ = [
    "MISS",
    "PUBLISH_WAIT",
    "WAIT",
    "build_parser",
    "console",
    "load_target",
    "main",
    "services_of",
    "wait_for",
    "wait_seconds",
]

log = get_logger(__package__)

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimicro", description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="identity folder (default $TRIMICRO_HOME or ~/.trimicro)")
    plugin_options(parser)
    parser.add_argument(
        "--audience",
        help="the cluster's token audience: tokens must name it in 'aud' (default $TRIMICRO_AUDIENCE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("run", help="start a node serving the services a module defines")
    serve.add_argument("target", help="a .py file or a module name")
    serve.add_argument("--name", help="node id (default: random)")
    serve.add_argument(
        "--listen", help="address to accept nodes on (default port 0 of --interface, else 127.0.0.1)"
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="count requests, errors and latency per endpoint, and serve them for Prometheus at "
        "http://HOST:PORT/metrics (a bare port: on 127.0.0.1)",
    )
    plugin_options(serve, nested=True)
    add_worker_options(serve)
    log_options(serve)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        client_options(p)
        plugin_options(p, nested=True)
        return p

    plug = sub.add_parser("plugins", help="list the installed plugins: every group, scheme and distribution")
    plug.add_argument("--json", action="store_true", help="machine-readable output")
    plugin_options(plug, nested=True)
    client("services", "list services")
    d = client("describe", "show a service's nodes and endpoints")
    d.add_argument("service")
    c = client("call", "call an endpoint with a JSON body and print the reply")
    c.add_argument("service")
    c.add_argument("endpoint", help='e.g. "Greeter.hello"')
    c.add_argument("body", nargs="?", help="JSON request (default {})")
    c.add_argument("--timeout", type=float, default=10.0)
    s = client("stream", "open a stream: JSON lines on stdin go out, replies come out as JSON lines")
    s.add_argument("service")
    s.add_argument("endpoint")
    s.add_argument("request", nargs="?", help="JSON request sent with the open")
    s.add_argument("--no-input", action="store_true", help="send nothing, only read")
    client("nodes", "show the membership view")
    add_top_parser(client("top", "a live view of the nodes: endpoints by rate and latency, mailboxes, links"))
    pub = client("publish", "publish a JSON message on a topic")
    pub.add_argument("topic")
    pub.add_argument("body", help="JSON message")
    pub.add_argument("--ack", action="store_true", help="wait for every delivery to be acknowledged")
    subp = client("subscribe", "print messages on a topic (pattern) as JSON lines")
    subp.add_argument("topic", help="subject pattern, e.g. orders.* or orders.>")
    subp.add_argument("--queue", help="join a queue group")
    subp.add_argument("--count", type=int, default=0, help="exit after this many messages")
    st = client("store", "read, write, delete or list keys of a store service")
    st.add_argument("action", choices=["read", "write", "delete", "list"])
    st.add_argument("key", nargs="?", help="the key (for list: a prefix)")
    st.add_argument("value", nargs="?", help="the value to write (text)")
    st.add_argument("--prefix", action="store_true", help="read: every key starting with KEY")
    st.add_argument("--ttl", type=float, help="write: seconds until the record expires")
    st.add_argument("--service", default="store", help="the store service name (default store)")
    st.add_argument("--database", help="the database to use (default: the store's own)")
    st.add_argument("--table", help="the table to use (default: the store's own)")
    add_auth_parser(client("auth", "accounts, tokens, rules and revocations (the auth service)"))
    add_health_parser(client("health", "is a node live and ready (exit 0), and if not, which check fails"))
    add_trust_parsers(sub)
    gw = sub.add_parser("api", help="serve the HTTP gateway, its OpenAPI docs and the dashboard")
    add_api_parser(gw)
    plugin_options(gw, nested=True)
    log_options(gw)
    return parser


COMMANDS = {
    "run": run,
    "plugins": list_plugins,
    "services": services,
    "describe": describe,
    "call": call,
    "stream": stream,
    "nodes": nodes,
    "publish": publish,
    "subscribe": subscribe,
    "store": store,
    "auth": auth,
    "authority": authority,
    "cert": cert,
    "api": api,
    "top": top,
    "health": health,
}

#: Commands that run until stopped log from INFO up by default (membership, addresses,
#: registrations); a one-shot command from WARNING up, so its output stays its answer.
SERVERS = {"run", "api"}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failed call, 2 usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `run --workers` gives it to each worker
    try:
        _configure_logging(args, err)
        try:
            tracing.configure(_service_name(args))  # when OTEL_* variables ask for traces
            return trio.run(COMMANDS[args.command], args, out)
        except BaseExceptionGroup as group:  # an error from inside a nursery: report the first
            raise _first_leaf(group) from None
    except plugins.PluginError as exc:
        print(f"trimicro: {exc.detail}", file=err)
        return EXIT_USAGE
    except MicroError as exc:
        fields = exc.to_fields()
        if getattr(args, "json", False):
            json.dump({"error": fields}, err)
            print(file=err)
        else:
            source = fields["id"] or "?"
            print(f"error {fields['code']} {fields['status']}: {fields['detail']} (from {source})", file=err)
        return EXIT_ERROR
    except (UsageError, FileNotFoundError, ImportError) as exc:
        print(f"trimicro: {exc}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    finally:
        unconfigure_logging()


def _configure_logging(args: argparse.Namespace, err: TextIO) -> None:
    """Records to ``err`` with time, level, logger, node and actor: ``--log-level`` and
    ``--log-format`` (``run``, ``api``), else ``$TRIMICRO_LOG_LEVEL`` and ``$TRIMICRO_LOG_FORMAT``."""
    default = "INFO" if args.command in SERVERS else "WARNING"
    level = getattr(args, "log_level", None) or os.environ.get("TRIMICRO_LOG_LEVEL") or default
    form = getattr(args, "log_format", None) or os.environ.get("TRIMICRO_LOG_FORMAT") or "text"
    try:
        configure_logging(level, form.lower(), err)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    log.debug("logging at %s as %s", level, form)


def _service_name(args: argparse.Namespace) -> str:
    """The ``service.name`` of this process's traces (unless ``OTEL_SERVICE_NAME`` says): a
    node's name or the module it serves, else the command (``trimicro-api``)."""
    if args.command == "run":
        target = str(args.target)
        return str(args.name or (Path(target).stem if target.endswith(".py") else target.rsplit(".", 1)[-1]))
    return f"trimicro-{args.command}"


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())
