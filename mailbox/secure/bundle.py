"""Node bundles: how a node on another host gets its key, its certificate and the trust root.

One host holds the cluster's authority key (``trimicro authority init``: :func:`init_authority`).
Joining a host takes two commands and a copy, no file edited by hand:

1. on the authority's host, ``trimicro cert issue NODE`` (:func:`issue_bundle`) generates an
   Ed25519 key for ``NODE``, has the authority sign its certificate
   (:meth:`~trimicro.mailbox.secure.identity.Authority.issue`, the same code and format as every
   node's certificate) and writes one **bundle** file, ``0600``;
2. the file is copied to the new host (``scp``: it holds a private key, so over a secure channel);
3. there, ``trimicro cert install FILE`` (:func:`install_bundle`) checks the bundle (the
   certificate is signed by the authority it names and is for the key it carries) and writes the
   node's ``node.key`` and ``node.cert`` under ``HOME/nodes/NODE/`` and the authority's public
   key to ``HOME/authorities.pub``; the home has *joined* the cluster
   (:func:`~trimicro.mailbox.secure.identity.joined`), and a node started there as ``NODE``
   loads that identity.

The bundle is a JSON object (RFC 8259) with the raw bytes in standard base64 (RFC 4648):
``{"format": "trimicro-node-bundle/1", "node_id", "key"`` (the 32-byte Ed25519 private key
seed, RFC 8032), ``"certificate"`` (the signed certificate bytes as nodes exchange them in
the handshake), ``"authorities"`` (the 32-byte public keys to trust)``}``. Nothing here is
cryptography of our own: keys are PyNaCl's, the certificate is
:mod:`~trimicro.mailbox.secure.identity`'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from trimicro.mailbox.errors import BadRequest, Conflict

from .identity import (
    AUTHORITY_FILE,
    DEFAULT_CERT_TTL,
    MAX_CERT_SIZE,
    TRUSTED_FILE,
    Authority,
    Certificate,
    CertificateError,
    NodeIdentity,
    check_node_id,
    dev_authority,
    joined,
    read_trusted,
    verify_certificate,
    write_private,
)

__all__ = [
    "FORMAT",
    "BundleError",
    "describe",
    "init_authority",
    "install_bundle",
    "issue_bundle",
    "read_bundle",
]

FORMAT = "trimicro-node-bundle/1"
_MAX_BUNDLE = 4 * MAX_CERT_SIZE


class BundleError(BadRequest):
    """A bundle (or the authority it needs) cannot be used: malformed, forged, or misplaced."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, id="identity")


def init_authority(home: Path) -> Authority:
    """Create the cluster authority's key in ``home`` (``0600`` in a ``0700`` folder).

    Refuses (:class:`~trimicro.mailbox.errors.Conflict`) when ``home`` already has one, or joined
    another cluster: replacing a trust root is never a side effect of a command.
    """
    path = home / AUTHORITY_FILE
    if path.exists():
        raise Conflict(f"{home} already has an authority ({path})", id="identity")
    if joined(home):
        raise Conflict(f"{home} joined a cluster whose authority is on another host", id="identity")
    return dev_authority(home)


def issue_bundle(
    authority: Authority,
    node_id: str,
    *,
    name: str = "",
    roles: Iterable[str] = (),
    ttl: float = DEFAULT_CERT_TTL,
    now: float | None = None,
) -> bytes:
    """A bundle for ``node_id``: a fresh key and its certificate signed by ``authority``."""
    check_node_id(node_id)
    key = SigningKey.generate()
    cert = authority.issue(node_id, bytes(key.verify_key), name=name, roles=roles, ttl=ttl, now=now)
    document = {
        "format": FORMAT,
        "node_id": node_id,
        "key": _b64(bytes(key)),
        "certificate": _b64(cert),
        "authorities": [_b64(authority.public_key)],
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def read_bundle(data: bytes, *, now: float | None = None) -> NodeIdentity:
    """The identity a bundle carries, checked: its certificate is signed by an authority it
    names, valid now, and for its key and node id. Raises :class:`BundleError` otherwise."""
    if len(data) > _MAX_BUNDLE:
        raise BundleError(f"a bundle is at most {_MAX_BUNDLE} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"not a node bundle (JSON): {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BundleError(f"not a node bundle (format {FORMAT!r})")
    node_id = _field(document, "node_id", str)
    try:
        check_node_id(node_id)  # it names a folder of the home: never a path out of it
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    authorities = _field(document, "authorities", list)
    if not authorities or len(authorities) > 16:
        raise BundleError("a bundle names 1 to 16 authorities")
    seed = _unb64(_field(document, "key", str), "key")
    trusted = [_unb64(a, "authority") if isinstance(a, str) else b"" for a in authorities]
    if len(seed) != 32 or any(len(a) != 32 for a in trusted):
        raise BundleError("a bundle's key and authorities are 32 bytes each")
    key = SigningKey(seed)
    cert = _unb64(_field(document, "certificate", str), "certificate")
    try:
        checked = verify_certificate(cert, bytes(key.verify_key), trusted, now=now)
    except CertificateError as exc:
        raise BundleError(f"the bundle's certificate is refused: {exc.detail}") from None
    if checked.node_id != node_id:
        raise BundleError(f"the bundle says {node_id!r} but its certificate is for {checked.node_id!r}")
    return NodeIdentity(key, cert, trusted)


def install_bundle(home: Path, data: bytes, *, now: float | None = None) -> NodeIdentity:
    """Check a bundle and install it in ``home`` (see the module docstring); returns its identity.

    The home must not hold an authority of its own. A fresh home comes to trust the bundle's
    authorities (that is what joining is); a home that already trusts some takes only a bundle
    signed by one of them (several nodes of one cluster can be installed in one home; a
    renewal replaces the node's key and certificate with the new bundle's).
    """
    identity = read_bundle(data, now=now)
    if (home / AUTHORITY_FILE).exists():
        raise Conflict(
            f"{home} has an authority of its own: install the bundle in another home (--home)",
            id="identity",
        )
    already = read_trusted(home)
    if already and not set(identity.trusted) & set(already):
        # Which authorities a home trusts changes by an explicit step, never as a side effect
        # of installing a bundle (made by anyone): a home that trusts some takes only bundles
        # signed by one of them.
        raise Conflict(
            f"the bundle for {identity.node_id} is signed by an authority {home} does not trust: "
            "install it in another home (--home)",
            id="identity",
        )
    trusted = list(dict.fromkeys([*already, *identity.trusted]))
    directory = home / "nodes" / identity.node_id
    write_private(directory / "node.key", bytes(identity.signing_key), overwrite=True)
    write_private(directory / "node.cert", identity.certificate, overwrite=True)
    write_private(home / TRUSTED_FILE, "".join(f"{k.hex()}\n" for k in trusted).encode(), overwrite=True)
    return identity


def describe(cert: bytes, *, now: float | None = None) -> dict[str, Any]:
    """A certificate's fields for people and scripts (``trimicro cert show``); structure only."""
    c = Certificate.decode(cert)
    at = time.time() if now is None else now
    return {
        "node_id": c.node_id,
        "name": c.name,
        "roles": list(c.roles),
        "public_key": c.public_key.hex(),
        "issuer": c.issuer.hex(),
        "not_before": _utc(c.not_before),
        "expires": _utc(c.expires),
        "valid": c.not_before <= at < c.expires,
    }


def _utc(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"the bundle's {what} is not base64") from None


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    value = document.get(name)
    if not isinstance(value, kind):
        raise BundleError(f"the bundle's {name!r} must be a {kind.__name__}")
    return value
