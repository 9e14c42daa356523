"""``trimicro authority`` and ``trimicro cert``: the cluster's trust root and node certificates.

Joining a host (docs/hosts.md): ``authority init`` once, on the host that keeps the authority
key; ``cert issue NODE`` there for each node of another host, which writes a bundle file (the
node's key, its certificate, the authority's public key; ``0600``); copy it over a secure
channel; ``cert install FILE`` on that host; then ``trimicro run --name NODE ...`` there.
Both take several at once: the workers of ``run --workers N`` are nodes ``NODE-1``...``NODE-N``,
each with a certificate of its own, and a host's client commands run as a ``cli-HOST`` node.
``cert show`` prints certificates (every node of the home, one node, or a bundle file).
These commands start no node: they only read and write files in the home.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO

import trio

from trimicro.mailbox.errors import Conflict
from trimicro.mailbox.secure.bundle import describe, init_authority, install_bundle, issue_bundle, read_bundle
from trimicro.mailbox.secure.identity import (
    AUTHORITY_FILE,
    DEFAULT_CERT_TTL,
    TRUSTED_FILE,
    default_home,
    dev_authority,
    joined,
    read_trusted,
    write_private,
)

from ..registry import cluster_fingerprint
from .common import UsageError, home_dir, print_table

__all__ = ["add_trust_parsers", "authority", "cert"]


def add_trust_parsers(sub: Any) -> None:
    """The ``authority`` and ``cert`` subcommands."""
    auth = sub.add_parser("authority", help="the cluster's authority (its trust root) in the home")
    what = auth.add_subparsers(dest="authority_command", required=True)
    what.add_parser("init", help="create the authority key (0600) in the home; refuses if one exists")
    what.add_parser("show", help="print the cluster fingerprint and the authority's public key")
    cert = sub.add_parser("cert", help="node certificates: issue a bundle, install it, show them")
    actions = cert.add_subparsers(dest="cert_command", required=True)
    issue = actions.add_parser("issue", help="write a node bundle (key + certificate) to copy to a host")
    issue.add_argument(
        "node",
        nargs="+",
        help="the node id a certificate names (the node runs as --name NODE); several: a bundle each",
    )
    issue.add_argument(
        "--out", help="the bundle file to write, for one NODE (default NODE.bundle.json; 0600)"
    )
    issue.add_argument("--role", action="append", default=[], help="a role (repeat for several)")
    issue.add_argument("--days", type=float, default=DEFAULT_CERT_TTL / 86400, help="validity (default 30)")
    install = actions.add_parser("install", help="install a bundle in the home (this host joins)")
    install.add_argument("file", nargs="+")
    show = actions.add_parser("show", help="print certificates: every node of the home, NODE, or --file")
    show.add_argument("node", nargs="?")
    show.add_argument("--file", help="a bundle file")
    for p in (show, install, issue):
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable")


async def authority(args: argparse.Namespace, out: TextIO) -> int:
    await trio.lowlevel.checkpoint()
    return _authority(args, out)


async def cert(args: argparse.Namespace, out: TextIO) -> int:
    await trio.lowlevel.checkpoint()
    return _cert(args, out)


# A few small files: read and written without a thread (the command runs nothing else).


def _authority(args: argparse.Namespace, out: TextIO) -> int:
    home = default_home(home_dir(args))
    if args.authority_command == "init":
        key = init_authority(home).public_key
        print(f"authority created: {home / 'authority.key'} (0600, keep it on this host only)", file=out)
    elif joined(home):
        key = read_trusted(home)[0]
        print(f"joined home: trusts the authority in {home / TRUSTED_FILE}", file=out)
    else:
        key = dev_authority(home).public_key
    print(f"cluster {cluster_fingerprint(key)}", file=out)
    print(f"public key {key.hex()}", file=out)
    return 0


def _cert(args: argparse.Namespace, out: TextIO) -> int:
    home = default_home(home_dir(args))
    if args.cert_command == "issue":
        days = args.days
        if not 0 < days <= 3650:
            raise UsageError("--days must be between 0 and 3650")
        if not (home / AUTHORITY_FILE).exists():  # never an authority made on the side
            raise UsageError(f"{home} holds no authority: run `trimicro authority init` first")
        if args.out and len(args.node) > 1:
            raise UsageError("--out names the bundle of one node: leave it out for several")
        paths = [Path(args.out or f"{node}.bundle.json") for node in args.node]
        taken = [str(path) for path in paths if path.exists()]
        if taken:  # checked for all before any is written
            raise Conflict(f"{', '.join(taken)} exists: remove it or choose --out", id="identity")
        rows = []
        for node, path in zip(args.node, paths, strict=True):
            bundle = issue_bundle(dev_authority(home), node, roles=args.role, ttl=days * 86400)
            if not write_private(path, bundle, overwrite=False):
                raise Conflict(f"{path} exists: remove it or choose --out", id="identity")
            rows.append(_fields(read_bundle(bundle).certificate))
        names = " ".join(path.name for path in paths)
        _print(
            args, out, rows, note=f"wrote {names} (0600); on the node's host: trimicro cert install {names}"
        )
    elif args.cert_command == "install":
        bundles = [Path(file).read_bytes() for file in args.file]
        identities = [install_bundle(home, data) for data in bundles]
        _print(
            args,
            out,
            [_fields(identity.certificate) for identity in identities],
            note=f"installed in {home}; run it: trimicro run --name {identities[0].node_id} ..."
            if len(identities) == 1
            else f"installed {', '.join(i.node_id for i in identities)} in {home}",
        )
    else:
        _print(args, out, [_fields(c) for c in _certificates(home, args)])
    return 0


def _certificates(home: Path, args: argparse.Namespace) -> list[bytes]:
    if args.file:
        return [read_bundle(Path(args.file).read_bytes()).certificate]
    nodes = home / "nodes"
    names = [args.node] if args.node else sorted(p.name for p in nodes.iterdir()) if nodes.is_dir() else []
    found = [nodes / name / "node.cert" for name in names]
    missing = [p.parent.name for p in found if not p.is_file()]
    if missing:
        raise UsageError(f"no certificate for {', '.join(missing)} in {home}")
    return [p.read_bytes() for p in found]


def _fields(certificate: bytes) -> dict[str, Any]:
    fields = describe(certificate)
    fields["cluster"] = cluster_fingerprint(bytes.fromhex(fields["issuer"]))
    return fields


def _print(args: argparse.Namespace, out: TextIO, rows: list[dict[str, Any]], note: str = "") -> None:
    if getattr(args, "json", False):
        json.dump(rows if len(rows) != 1 or not note else rows[0], out, indent=2)
        print(file=out)
        return
    table = [
        [r["node_id"], ",".join(r["roles"]), r["cluster"], r["expires"], "yes" if r["valid"] else "NO"]
        for r in rows
    ]
    print_table(table, ["node", "roles", "cluster", "expires", "valid"], out)
    if note:
        print(note, file=out)
