"""The ``trimicro`` command: run services, list and describe them, call them, stream, see nodes.

Every command other than ``run`` starts a short-lived client node (no services, not a member)
that finds the cluster through the registry (mDNS on 127.0.0.1 by default) and uses the
development identity of ``$TRIMICRO_HOME`` (``~/.trimicro``), like the nodes it talks to.
People get tables; ``--json`` gives scripts one JSON document. A failure prints Go Micro's error
fields and exits non-zero; a user error never prints a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

import trio

from trimicro.actors import Actor
from trimicro.mailbox.errors import MicroError, NotFound
from trimicro.mailbox.limits import DEFAULT_LIMITS

from . import plugins
from .cluster import Cluster, start_cluster
from .registry import Service

__all__ = ["main"]

EXIT_ERROR = 1
EXIT_USAGE = 2


def _registry(args: argparse.Namespace) -> str:
    """``--registry`` (a URL; ``mdns`` and ``memory`` are ``mdns://`` and ``memory://``), else
    ``$TRIMICRO_REGISTRY``, else mDNS on 127.0.0.1."""
    return plugins.configured("registry", getattr(args, "registry", None), "mdns://") or "mdns://"


def _broker(args: argparse.Namespace) -> str | None:
    """``--broker`` (a URL), else ``$TRIMICRO_BROKER``, else the cluster's own (``cluster://``)."""
    return plugins.configured("broker", getattr(args, "broker", None), "cluster://")


def _store_url(args: argparse.Namespace) -> str | None:
    """``--store`` (a URL; a folder path, as before URLs, means LMDB there), else ``$TRIMICRO_STORE``."""
    given = getattr(args, "store", None)
    if given and "://" not in given:
        given = "lmdb://" + str(Path(given).expanduser().resolve())
    return plugins.configured("store", given)


def _home(args: argparse.Namespace) -> Path | None:
    return Path(args.home) if getattr(args, "home", None) else None


def _audience(args: argparse.Namespace) -> str | None:
    """The cluster's token audience (``--audience`` or ``$TRIMICRO_AUDIENCE``): ``run`` checks
    tokens against it and the admin tokens the CLI signs for itself carry it."""
    return getattr(args, "audience", None) or os.environ.get("TRIMICRO_AUDIENCE") or None


def _auth_headers(args: argparse.Namespace) -> dict[str, str] | None:
    """``--token`` (or ``$TRIMICRO_TOKEN``) as the request's bearer token."""
    token = getattr(args, "token", None) or os.environ.get("TRIMICRO_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else None


# ---- run -------------------------------------------------------------------------------------


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


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    module = load_target(args.target)
    entries = services_of(module)
    if not entries:
        raise UsageError(f"{args.target} defines no services (an Actor with service_name, or SERVICES)")
    # SIGINT and SIGTERM are taken over before the node starts: one arriving while it starts,
    # while the ready line waits on a full stdout pipe, or the instant after that line, waits
    # here (trio keeps it) and stops the node cleanly once it is up (deregistered, drained, exit
    # 0), instead of a KeyboardInterrupt thrown into whatever runs at that moment.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        store_url = _store_url(args)
        async with start_cluster(
            args.name,
            registry=_registry(args),
            broker=_broker(args),
            store=store_url or "",
            listen=args.listen,
            home=_home(args),
            audience=_audience(args),
        ) as cluster:
            for entry in entries:
                cls, options = (entry, {}) if isinstance(entry, type) else entry
                await cluster.serve(cls, **options)
            auth_store = None
            if store_url and cluster.store is not None:
                from .store.service import StoreService

                # Another table of the same store, hidden from "store" (a call may name a table).
                auth_store = plugins.load("store", store_url, table="auth")
                hidden = {(getattr(auth_store, "database", ""), getattr(auth_store, "table", "auth"))}
                await cluster.serve(StoreService, cluster.store, hidden=hidden, name="store")
                await _serve_auth(cluster, auth_store, args)
            names = ", ".join(sorted(cluster.services_digest().split(",")))
            print(f"node {cluster.id} at {cluster.address} serving {names}", file=out, flush=True)
            async for sig in signals:
                print(f"{signal.Signals(sig).name}: deregistering and stopping", file=out, flush=True)
                break
            # Still inside the receiver: a second Ctrl-C during the shutdown is not a traceback.
            if auth_store is not None:
                await auth_store.aclose()
    return 0


async def _serve_auth(cluster: Cluster, store: Any, args: argparse.Namespace) -> None:
    """The node with the store and the authority key also runs the auth service."""
    from trimicro.mailbox.secure.identity import dev_authority

    from .auth import AUTH_SERVICE, AuthService

    authority = dev_authority(_home(args))
    await cluster.serve(AuthService, store, authority.signing_key, name=AUTH_SERVICE)


class UsageError(Exception):
    """A mistake in how the command was used (exit 2, message only)."""


# ---- client commands ---------------------------------------------------------------------------


async def _client(args: argparse.Namespace) -> Any:
    return start_cluster(
        f"cli-{uuid.uuid4().hex[:8]}",
        registry=_registry(args),
        broker=_broker(args),
        store="",
        listen=None,
        home=_home(args),
        membership=False,
        announce=False,
        auth_refresh=None,  # it serves nothing: no rules to fetch for a one-shot command
        audience=_audience(args),
    )


def _table(rows: list[list[str]], headers: list[str], out: TextIO, indent: str = "") -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(indent + line.rstrip(), file=out)
    for row in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _service_json(svc: Service) -> dict[str, Any]:
    return {
        "name": svc.name,
        "version": svc.version,
        "metadata": svc.metadata,
        "endpoints": [
            {
                "name": e.name,
                "request": e.request,
                "response": e.response,
                "metadata": e.metadata,
                "stream": e.stream,
            }
            for e in svc.endpoints
        ],
        "nodes": [{"id": n.id, "address": n.address, "metadata": n.metadata} for n in svc.nodes],
    }


#: A listing of every service is final once it has not changed for SETTLE seconds and the
#: registry has had LISTEN seconds to answer: mDNS answers arrive a few services at a time (a
#: responder holds back a record it multicast in the last second for up to a second, until the
#: browser's second query, about a second after its first).
SETTLE = 0.3
LISTEN = 1.3
#: A lookup of a service nobody serves answers 404 once the listing of every service has
#: settled without it and the registry has had MISS seconds: longer than LISTEN, since a missed
#: service fails a call where it only shortens a listing (the second query's answers get ~0.9 s).
MISS = 2.0
#: Default ``--wait``: a lookup ends as soon as the service shows up, so a generous wait only
#: delays a real miss when no node at all answers (a loaded machine can take a few seconds from
#: start-up to the first mDNS answer). ``publish`` waits less for subscribers' interest, which
#: ends early only when every known member has sent it (with no member at all, it is the whole wait).
WAIT = 5.0
PUBLISH_WAIT = 2.0


def _wait(args: argparse.Namespace, default: float = WAIT) -> float:
    return default if args.wait is None else float(args.wait)


def _listen(args: argparse.Namespace) -> float:
    """LISTEN for mDNS; 0 for a registry that answers in full at once."""
    return LISTEN if plugins.parse_url(_registry(args)).scheme == "mdns" else 0.0


class _Settling:
    """Whether successive answers have stopped changing: the same services, versions and nodes
    for SETTLE seconds, and at least ``floor`` seconds since the first question."""

    def __init__(self, start: float, floor: float) -> None:
        self.start = self.steady_since = start
        self.floor = floor
        self.key: list[tuple[str, str, tuple[str, ...]]] | None = None

    def settled(self, found: list[Service], now: float) -> bool:
        key = sorted((s.name, s.version, tuple(sorted(n.id for n in s.nodes))) for s in found)
        if not found or key != self.key:
            self.key, self.steady_since = key, now
            return False
        return now - self.steady_since >= SETTLE and now - self.start >= self.floor


async def _listing(cluster: Cluster) -> list[Service] | None:
    """Every service of this client's clusters (``None`` if the registry failed this time)."""
    try:
        return await cluster.services()
    except MicroError:
        return None


async def _lookup(cluster: Cluster, name: str) -> list[Service] | None:
    """The service's records ([] if not found, ``None`` if the registry failed this time)."""
    try:
        return await cluster.describe(name)
    except NotFound:
        return []
    except MicroError:
        return None


async def _wait_for(
    cluster: Cluster, name: str | None, wait: float, listen: float = LISTEN, *, complete: bool = False
) -> list[Service]:
    """What the registry says about ``name`` (every service but trimicro's with ``None``),
    asked again for up to ``wait`` seconds: mDNS answers arrive over a second or so.

    Only this client's clusters are listed (:meth:`Cluster.services`, :meth:`Cluster.describe`),
    so another cluster on the machine neither answers a lookup nor keeps a listing changing.

    * A lookup (``name``) returns the first answer that has the service: any node of it will do
      for a call. ``complete`` (``describe``) waits for the answer to settle instead, so that
      every node is shown.
    * A listing (``name=None``) returns once it has settled, after ``listen`` seconds at least
      (0 for registries that answer in full at once).
    * A lookup of a service nobody serves raises ``NotFound`` once the listing of every service
      has settled without it, after MISS seconds (``listen`` if 0), not at the end of ``wait``.
      An empty listing (no node answered yet) waits for ``wait``: a node may be starting.
    """
    start = trio.current_time()
    everything = _Settling(start, MISS if listen > 0 else 0.0)
    answer = _Settling(start, listen)
    last: list[Service] = []
    with trio.move_on_after(wait):
        while True:
            now = trio.current_time()
            if name is None:
                listed = await _listing(cluster)
                if listed is not None:
                    last = [s for s in listed if not s.name.startswith("trimicro.")]
                    if answer.settled(last, now):
                        return last
            else:
                found = await _lookup(cluster, name)
                if found and not complete:
                    return found
                if found and answer.settled(found, now):
                    return found
                if found == []:
                    listed = await _listing(cluster)
                    if (
                        listed is not None
                        and everything.settled(listed, now)
                        and all(s.name != name for s in listed)
                    ):
                        break
            await trio.sleep(0.1)
    if name is None:
        return last
    return await cluster.describe(name)


async def _services(args: argparse.Namespace, out: TextIO) -> int:
    async with await _client(args) as cluster:
        found = await _wait_for(cluster, None, _wait(args), _listen(args))
    found.sort(key=lambda s: (s.name, s.version))
    if args.json:
        json.dump([_service_json(s) for s in found], out, indent=2)
        print(file=out)
    else:
        _table([[s.name, s.version, str(len(s.nodes))] for s in found], ["service", "version", "nodes"], out)
    return 0


async def _describe(args: argparse.Namespace, out: TextIO) -> int:
    async with await _client(args) as cluster:
        found = await _wait_for(cluster, args.service, _wait(args), _listen(args), complete=True)
    if args.json:
        json.dump([_service_json(s) for s in found], out, indent=2)
        print(file=out)
        return 0
    for svc in found:
        print(f"service {svc.name} version {svc.version}", file=out)
        if svc.metadata:
            print(f"  metadata: {json.dumps(svc.metadata)}", file=out)
        print("  nodes:", file=out)
        _table([[n.id, n.address] for n in svc.nodes], ["id", "address"], out, "    ")
        print("  endpoints:", file=out)
        rows = [
            [
                e.name + (" (stream)" if e.stream else ""),
                json.dumps(e.request),
                json.dumps(e.response),
                "yes" if e.metadata.get("idempotent") == "true" else "",
            ]
            for e in svc.endpoints
        ]
        _table(rows, ["endpoint", "request", "response", "idempotent"], out, "    ")
    return 0


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None


async def _call(args: argparse.Namespace, out: TextIO) -> int:
    body = _parse_json(args.body, "the request") if args.body else {}
    async with await _client(args) as cluster:
        await _wait_for(cluster, args.service, _wait(args))
        result = await cluster.call(
            args.service, args.endpoint, body, timeout=args.timeout, headers=_auth_headers(args)
        )
    json.dump(result, out, indent=None if args.json else 2, default=str)
    print(file=out)
    return 0


#: Longest line ``stream`` reads from standard input (a message body's limit on the wire).
MAX_INPUT_LINE = DEFAULT_LIMITS.max_size


async def _stream(args: argparse.Namespace, out: TextIO) -> int:
    """Exit 0 when the stream ends; 128 + the signal's number when SIGINT or SIGTERM cut it short
    (the stream is closed, so the handler sees it cancelled, and the node stops as usual)."""
    request = _parse_json(args.request, "the request") if args.request else None
    caught: list[int] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with await _client(args) as cluster, trio.open_nursery() as guard:
            with trio.CancelScope() as work:

                async def stop_on_signal() -> None:
                    async for sig in signals:
                        caught.append(sig)
                        work.cancel()
                        return

                guard.start_soon(stop_on_signal)
                await _stream_lines(cluster, args, request, out)
            guard.cancel_scope.cancel()
    return 128 + caught[0] if caught else 0


async def _stream_lines(cluster: Cluster, args: argparse.Namespace, request: Any, out: TextIO) -> None:
    await _wait_for(cluster, args.service, _wait(args))
    async with (
        cluster.open_stream(args.service, args.endpoint, request, headers=_auth_headers(args)) as stream,
        trio.open_nursery() as n,
    ):

        async def feed() -> None:
            async for line in _stdin_lines():
                if line.strip():
                    await stream.send(_parse_json(line.decode(errors="replace"), "an input line"))
            stream.close_send()

        if not args.no_input:
            n.start_soon(feed)
        else:
            stream.close_send()
        async for item in stream:
            print(json.dumps(item, default=str), file=out, flush=True)
        n.cancel_scope.cancel()


async def _stdin_lines() -> AsyncIterator[bytes]:
    """Standard input, line by line, read in a worker thread that cancellation abandons.

    A blocked read of a terminal or pipe cannot be interrupted, so a thread trio waited for
    would hold Ctrl-C back until the user typed Ctrl-D. The thread reads the file descriptor
    itself (``os.read``), not ``sys.stdin``: an abandoned thread left blocked inside the
    buffered reader would hold its lock when the interpreter closes it at exit.
    """
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        raise UsageError("standard input cannot be read here: pass --no-input") from None
    pending = b""
    while True:
        chunk = await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line
        if len(pending) > MAX_INPUT_LINE:
            raise UsageError(f"an input line is longer than {MAX_INPUT_LINE} bytes")
    if pending:
        yield pending


def _member_client(args: argparse.Namespace) -> Any:
    """A short-lived member: pub/sub needs the interest that members exchange, so the node
    announces itself while the command runs (and leaves the membership at exit)."""
    return start_cluster(
        f"cli-{uuid.uuid4().hex[:8]}",
        registry=_registry(args),
        broker=_broker(args),
        store="",
        home=_home(args),
        auth_refresh=None,
        audience=_audience(args),
    )


async def _settle_interest(cluster: Cluster, wait: float) -> None:
    """Give members ``wait`` seconds to find us and send their interest (ends early when every
    known member has)."""
    with trio.move_on_after(wait):
        while True:
            members = {m.id for m in cluster.membership.swim.alive_members()} - {cluster.id}
            if members and members <= set(cluster.pubsub.remote_interest):
                return
            await cluster.pubsub.wait_interest()


async def _publish(args: argparse.Namespace, out: TextIO) -> int:
    body = _parse_json(args.body, "the message")
    async with _member_client(args) as cluster:
        await _settle_interest(cluster, _wait(args, PUBLISH_WAIT))
        n = await cluster.publish(args.topic, body, ack=args.ack, headers=_auth_headers(args))
    if args.json:
        json.dump({"topic": args.topic, "deliveries": n}, out)
        print(file=out)
    else:
        print(f"published on {args.topic}: {n} deliveries", file=out)
    return 0


async def _subscribe(args: argparse.Namespace, out: TextIO) -> int:
    async with (
        _member_client(args) as cluster,
        cluster.pubsub.messages(args.topic, queue=args.queue) as messages,
    ):
        print(f"# subscribed to {args.topic}", file=sys.stderr, flush=True)
        seen = 0
        async for msg in messages:
            line = {"topic": msg.topic, "body": msg.body, "headers": msg.headers, "publisher": msg.publisher}
            print(json.dumps(line, default=str), file=out, flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    return 0


async def _store(args: argparse.Namespace, out: TextIO) -> int:
    from .store import Record
    from .store.service import RemoteStore

    async with await _client(args) as cluster:
        await _wait_for(cluster, args.service, _wait(args))
        store = RemoteStore(cluster, args.service)
        ns = {"database": args.database, "table": args.table}
        result: Any
        if args.action == "write":
            if args.value is None:
                raise UsageError("store write needs KEY and VALUE")
            await store.write(Record(args.key, args.value.encode()), ttl=args.ttl, **ns)
            result = {"written": args.key}
        elif args.action == "read":
            records = await store.read(args.key or "", prefix=args.prefix, **ns)
            result = [
                {
                    "key": r.key,
                    "value": r.value.decode(errors="replace"),
                    "metadata": dict(r.metadata),
                    "expiry": r.expiry,
                    "version": r.version,
                }
                for r in records
            ]
        elif args.action == "delete":
            await store.delete(args.key or "", **ns)
            result = {"deleted": args.key}
        else:
            result = await store.list(prefix=args.key or "", **ns)
    if args.json or not isinstance(result, list):
        json.dump(result, out)
        print(file=out)
    elif args.action == "list":
        for key in result:
            print(key, file=out)
    else:
        for item in result:
            print(f"{item['key']}\t{item['value']}", file=out)
    return 0


def _admin_headers(args: argparse.Namespace) -> dict[str, str] | None:
    """``--token`` if given, else a five-minute admin token signed with the home's authority key:
    whoever holds that key (the ``0600`` file) is the cluster's administrator anyway."""
    given = _auth_headers(args)
    if given:
        return given
    from trimicro.mailbox.secure.identity import dev_authority

    from .auth import Account, issue_token

    authority = dev_authority(_home(args))
    admin = Account("admin", "user", authority.public_key.hex(), ("admin",))
    token = issue_token(authority.signing_key, admin, ttl=300, audience=_audience(args))
    return {"authorization": f"Bearer {token}"}


async def _auth(args: argparse.Namespace, out: TextIO) -> int:
    """``trimicro auth user|token|rules|revoke|jwks``: calls to the auth service."""
    from .auth import AUTH_SERVICE

    what = args.auth_command
    if what == "jwks":
        endpoint, body = "Auth.jwks", {}
    elif what == "user":
        action = args.user_action
        if action == "add":
            endpoint, body = (
                "Auth.add_account",
                {"id": args.id, "scopes": args.scope or [], "type": args.type},
            )
        elif action == "delete":
            endpoint, body = "Auth.delete_account", {"id": args.id}
        else:
            endpoint, body = "Auth.accounts", {}
    elif what == "token":
        secret = args.secret or os.environ.get("TRIMICRO_SECRET")
        if not secret:
            raise UsageError("auth token needs --secret or $TRIMICRO_SECRET")
        endpoint, body = "Auth.token", {"id": args.id, "secret": secret}
    elif what == "rules":
        action = args.rules_action
        if action == "create":
            parts = args.resource.split(":")
            if len(parts) != 3:
                raise UsageError("--resource is TYPE:NAME:ENDPOINT, e.g. service:greeter:Greeter.*")
            resource = {"type": parts[0], "name": parts[1], "endpoint": parts[2]}
            endpoint = "Auth.create_rule"
            body = {
                "id": args.id,
                "scope": args.scope,
                "resource": resource,
                "access": args.access,
                "priority": args.priority,
            }
        elif action == "delete":
            endpoint, body = "Auth.delete_rule", {"id": args.id}
        else:
            endpoint, body = "Auth.rules", {}
    else:
        given = {"token": args.jwt, "jti": args.jti, "account": args.account, "node": args.node}
        body = {k: v for k, v in given.items() if v}
        if len(body) != 1:
            raise UsageError("auth revoke takes exactly one of --jwt, --jti, --account, --node")
        endpoint = "Auth.revoke"
    async with await _client(args) as cluster:
        await _wait_for(cluster, AUTH_SERVICE, _wait(args))
        # Public keys: anyone may fetch them, without the authority key an admin token needs.
        headers = _auth_headers(args) if what == "jwks" else _admin_headers(args)
        result = await cluster.call(AUTH_SERVICE, endpoint, body, headers=headers)
    if what == "token" and not args.json:
        print(result["access"], file=out)  # the bare token, for $(trimicro auth token ...)
        return 0
    json.dump(result, out, indent=None if args.json else 2, default=str)
    print(file=out)
    return 0


async def _nodes(args: argparse.Namespace, out: TextIO) -> int:
    async with await _client(args) as cluster:
        members = await _wait_for_members(cluster, _wait(args))
    if args.json:
        json.dump(members, out, indent=2)
        print(file=out)
    else:
        rows = [[m["id"], m["address"], m["state"], m.get("services", "")] for m in members]
        _table(rows, ["node", "address", "state", "services"], out)
    return 0


async def _wait_for_members(cluster: Cluster, wait: float) -> list[dict[str, Any]]:
    """Ask any announced node for its membership view."""
    nodes = await _wait_for(cluster, "trimicro.node", wait)
    last: MicroError | None = None
    for svc in nodes:
        for info in svc.nodes:
            try:
                result: list[dict[str, Any]] = await cluster.call_node(info, "Membership.members", None)
                return result
            except MicroError as exc:
                last = exc
    raise last or MicroError("no node answered", code=503)


# ---- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimicro", description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="identity folder (default $TRIMICRO_HOME or ~/.trimicro)")
    _plugin_options(parser)
    parser.add_argument(
        "--audience",
        help="the cluster's token audience: tokens must name it in 'aud' (default $TRIMICRO_AUDIENCE)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a node serving the services a module defines")
    run.add_argument("target", help="a .py file or a module name")
    run.add_argument("--name", help="node id (default: random)")
    run.add_argument("--listen", default="127.0.0.1:0", help="address to accept nodes on")
    _plugin_options(run, nested=True)

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        _client_options(p)
        _plugin_options(p, nested=True)
        return p

    plug = sub.add_parser("plugins", help="list the installed plugins: every group, scheme and distribution")
    plug.add_argument("--json", action="store_true", help="machine-readable output")
    _plugin_options(plug, nested=True)
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
    _auth_parser(client("auth", "accounts, tokens, rules and revocations (the auth service)"))
    return parser


def _plugin_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """``--registry``, ``--broker`` and ``--store`` URLs, before or after the subcommand (after wins)."""
    default = argparse.SUPPRESS if nested else None
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


def _client_options(p: argparse.ArgumentParser, *, nested: bool = False) -> None:
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


def _auth_parser(auth: argparse.ArgumentParser) -> None:
    what = auth.add_subparsers(dest="auth_command", required=True)
    user = what.add_parser("user", help="accounts")
    actions = user.add_subparsers(dest="user_action", required=True)
    add = actions.add_parser("add", help="create an account; prints its secret once")
    add.add_argument("id")
    add.add_argument("--scope", action="append", help="a scope (repeat for several)")
    add.add_argument("--type", choices=["user", "service"], default="user")
    actions.add_parser("delete", help="delete an account and revoke its tokens").add_argument("id")
    actions.add_parser("list", help="list accounts")
    token = what.add_parser("token", help="log in: print an access token")
    token.add_argument("id")
    token.add_argument("--secret", help="the account's secret (default $TRIMICRO_SECRET)")
    rules = what.add_parser("rules", help="access rules")
    rule_actions = rules.add_subparsers(dest="rules_action", required=True)
    rule_actions.add_parser("list", help="list rules")
    create = rule_actions.add_parser("create", help="add or replace a rule")
    create.add_argument("id")
    create.add_argument("--scope", default="*", help='"" public, "*" any account, else a scope')
    create.add_argument("--resource", required=True, help="TYPE:NAME:ENDPOINT, * for any")
    create.add_argument("--access", choices=["granted", "denied"], default="granted")
    create.add_argument("--priority", type=int, default=0)
    rule_actions.add_parser("delete", help="delete a rule").add_argument("id")
    revoke = what.add_parser("revoke", help="revoke a token, an account or a node")
    revoke.add_argument("--jwt", help="a token (access or refresh) to revoke")
    revoke.add_argument("--jti", help="the id of a token to revoke")
    revoke.add_argument("--account", help="an account: all its tokens stop working")
    revoke.add_argument("--node", help="a node id: its links are closed and refused")
    jwks = what.add_parser("jwks", help="print the keys tokens verify with, as a JWKS (RFC 7517)")
    for leaf in (add, actions.choices["delete"], actions.choices["list"], token, create, revoke, jwks):
        _client_options(leaf, nested=True)
        _plugin_options(leaf, nested=True)
    for leaf in (rule_actions.choices["list"], rule_actions.choices["delete"]):
        _client_options(leaf, nested=True)
        _plugin_options(leaf, nested=True)


async def _plugins(args: argparse.Namespace, out: TextIO) -> int:
    """Every plugin group with its installed schemes and the distribution providing each."""
    await trio.lowlevel.checkpoint()
    found = {group: plugins.installed(group) for group in plugins.GROUPS.values()}
    if args.json:
        json.dump(found, out, indent=2)
        print(file=out)
        return 0
    rows = [
        [group, f"{scheme}://", dist] for group, schemes in found.items() for scheme, dist in schemes.items()
    ]
    rows += [[group, "-", "(none installed)"] for group, schemes in found.items() if not schemes]
    _table(rows, ["group", "scheme", "distribution"], out)
    return 0


COMMANDS = {
    "run": _run,
    "plugins": _plugins,
    "services": _services,
    "describe": _describe,
    "call": _call,
    "stream": _stream,
    "nodes": _nodes,
    "publish": _publish,
    "subscribe": _subscribe,
    "store": _store,
    "auth": _auth,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 failed call, 2 usage)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        try:
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


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    console()
