"""Node identities and the cluster's trust root: who is allowed on the other end of a channel.

The secure channel (:mod:`trimicro.mailbox.secure.channel`) binds a node's long-term Ed25519
key to each Noise handshake, as libp2p-noise does, and hands the peer's key plus an opaque
certificate to ``verify_peer``. This module fills in that certificate:

* an :class:`Authority` (one Ed25519 key per cluster) signs a :class:`Certificate` for each
  node: node id, the node's public key, a name, roles, and a validity window;
* a :class:`NodeIdentity` holds a node's signing key, its certificate and the authority keys it
  trusts; its :meth:`NodeIdentity.verify_peer` accepts a peer only if the peer's certificate is
  signed by a trusted authority, still valid, not revoked, and names exactly the key the peer
  just proved it holds in the handshake.

All signatures are PyNaCl's Ed25519 (``nacl.signing``); nothing here is home-made crypto.
Certificates are small, strictly checked msgpack maps, decoded with tight limits so hostile bytes
cannot make us allocate much.

Private keys live in files the way ssh keeps them (:mod:`.keyfiles`): created ``0o600`` inside
``0o700`` directories, written atomically, and refused on load if group or others may access them.
:func:`dev_identity` builds all of it with zero setup under ``~/.trimicro`` (or
``$TRIMICRO_HOME``): every node created from the same home trusts every other one.

A home on another host holds no authority key: it *joined* a cluster by installing a node
bundle (:mod:`.bundle`: ``trimicro cert issue`` on the authority's host, ``trimicro cert
install`` here), which writes the node's key and certificate under ``nodes/<id>/`` and the
authority's public key to :data:`TRUSTED_FILE`. :func:`dev_identity` then loads that node and
never creates anything, and :func:`dev_authority` refuses (a second authority there would make
a second cluster, not a bigger one).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import attrs
import msgpack  # type: ignore[import-untyped, unused-ignore]
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from trimicro.mailbox.errors import Unauthorized

from .keyfiles import IdentityError, load_key, load_or_create_key, write_private

__all__ = [
    "AUTHORITY_FILE",
    "CLOCK_SKEW",
    "DEFAULT_CERT_TTL",
    "MAX_CERT_SIZE",
    "TRUSTED_FILE",
    "Authority",
    "Certificate",
    "CertificateError",
    "IdentityError",
    "NodeIdentity",
    "check_node_id",
    "default_home",
    "dev_authority",
    "dev_identity",
    "installed_identity",
    "joined",
    "read_trusted",
    "verify_certificate",
    "write_private",
]

DEFAULT_CERT_TTL = 30 * 24 * 3600
"""Default certificate lifetime: 30 days, in seconds."""
CLOCK_SKEW = 60
"""Seconds a certificate may be used before its ``not_before`` (clocks disagree a little)."""
MAX_CERT_SIZE = 4096
"""Largest certificate we look at, signature included; anything larger is refused unparsed."""

_KEY_LEN = 32  # Ed25519 public keys and seeds
_SIG_LEN = 64
_MAX_NAME = 256  # node_id and name, in characters
_MAX_ROLES = 32
_MAX_ROLE = 64
_MAX_TIME = 2**63 - 1
_FIELDS = ("node_id", "public_key", "name", "roles", "not_before", "expires", "issuer")
_FIELD_SET = frozenset(_FIELDS)
_NODE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_KEY_FILE = "node.key"
_CERT_FILE = "node.cert"
AUTHORITY_FILE = "authority.key"
TRUSTED_FILE = "authorities.pub"
"""In a joined home: the public keys of the authorities its nodes trust, one hex key a line."""
_MAX_TRUSTED = 64


class CertificateError(Unauthorized):
    """A certificate was refused: malformed, foreign, forged, expired, revoked or for another key."""


@attrs.frozen
class Certificate:
    """A node certificate, as decoded from its signed bytes (:attr:`raw`).

    Build one with :meth:`decode` (structure only) or :func:`verify_certificate` (structure,
    signature, validity, key binding); constructing it directly checks nothing.
    """

    node_id: str
    public_key: bytes
    """The node's 32-byte Ed25519 verify key: its identity key in the handshake."""
    name: str
    roles: tuple[str, ...]
    not_before: int
    """Unix seconds."""
    expires: int
    """Unix seconds; the certificate is invalid from this moment on."""
    issuer: bytes
    """The signing authority's 32-byte Ed25519 public key."""
    raw: bytes = attrs.field(repr=False)
    """The signed bytes: 64-byte Ed25519 signature followed by the msgpack body."""

    @property
    def lifetime(self) -> int:
        """Seconds between ``not_before`` and ``expires``."""
        return self.expires - self.not_before

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        """Parse signed certificate bytes, checking structure only (see :func:`verify_certificate`).

        Raises :class:`CertificateError` for anything that is not a well-formed certificate.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CertificateError("certificate must be bytes")
        data = bytes(data)
        if len(data) > MAX_CERT_SIZE:
            raise CertificateError(f"certificate larger than {MAX_CERT_SIZE} bytes")
        if len(data) <= _SIG_LEN:
            raise CertificateError("certificate too short")
        try:
            fields = msgpack.unpackb(
                data[_SIG_LEN:],
                raw=False,
                strict_map_key=True,
                use_list=False,
                object_pairs_hook=_unique_map,
                max_bin_len=_KEY_LEN,
                max_str_len=_MAX_NAME * 4,
                max_array_len=_MAX_ROLES,
                max_map_len=len(_FIELDS),
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several types (and UnicodeDecodeError)
            raise CertificateError("malformed certificate: not valid msgpack") from exc
        problem = _field_problem(fields)
        if problem:
            raise CertificateError(f"malformed certificate: {problem}")
        return cls(
            node_id=fields["node_id"],
            public_key=fields["public_key"],
            name=fields["name"],
            roles=fields["roles"],
            not_before=fields["not_before"],
            expires=fields["expires"],
            issuer=fields["issuer"],
            raw=data,
        )


def _unique_map(pairs: Any) -> dict[Any, Any]:
    """msgpack map hook: refuse duplicate keys instead of letting the last one win."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate map key")
    return result


def _is_int(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_TIME


def _field_problem(fields: object) -> str:
    """Why ``fields`` is not a certificate body, or ``""`` if it is one."""
    if not isinstance(fields, dict) or fields.keys() != _FIELD_SET:
        return "must be a map of exactly " + ", ".join(_FIELDS)
    node_id, name, roles = fields["node_id"], fields["name"], fields["roles"]
    if not isinstance(node_id, str) or not 1 <= len(node_id) <= _MAX_NAME:
        return f"node_id must be a string of 1-{_MAX_NAME} characters"
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        return f"name must be a string of at most {_MAX_NAME} characters"
    if (
        not isinstance(roles, tuple)
        or len(roles) > _MAX_ROLES
        or not all(isinstance(r, str) and 1 <= len(r) <= _MAX_ROLE for r in roles)
    ):
        return f"roles must be at most {_MAX_ROLES} strings of 1-{_MAX_ROLE} characters"
    for key in ("public_key", "issuer"):
        value = fields[key]
        if not isinstance(value, bytes) or len(value) != _KEY_LEN:
            return f"{key} must be {_KEY_LEN} bytes"
    not_before, expires = fields["not_before"], fields["expires"]
    if not (_is_int(not_before) and _is_int(expires)):
        return "not_before and expires must be non-negative integers"
    if expires <= not_before:
        return "expires must be after not_before"
    return ""


def verify_certificate(
    cert: bytes,
    id_key: bytes,
    trusted: Collection[bytes],
    *,
    now: float | None = None,
    revoked: Collection[bytes] = (),
) -> Certificate:
    """Check ``cert`` fully and return it; raise :class:`CertificateError` to refuse it.

    ``id_key`` is the key the peer proved it holds (in the handshake); the certificate must name
    it. ``trusted`` holds authority public keys, ``revoked`` node public keys. ``now`` defaults
    to the current time; ``not_before`` tolerates :data:`CLOCK_SKEW` seconds of clock skew.
    """
    c = Certificate.decode(cert)
    if c.issuer not in trusted:
        raise CertificateError("certificate signed by a foreign authority")
    try:
        VerifyKey(c.issuer).verify(c.raw)
    except (CryptoError, ValueError, TypeError) as exc:
        raise CertificateError("certificate signature is invalid") from exc
    # From here on the fields are the authority's word.
    if c.public_key != bytes(id_key):
        raise CertificateError(f"certificate of {c.node_id!r} is for another key")
    if c.public_key in revoked:
        raise CertificateError(f"certificate of {c.node_id!r} is revoked")
    if now is None:
        now = time.time()
    if now < c.not_before - CLOCK_SKEW:
        raise CertificateError(f"certificate of {c.node_id!r} not valid before {c.not_before}")
    if now >= c.expires:
        raise CertificateError(f"certificate of {c.node_id!r} expired at {c.expires}")
    return c


class Authority:
    """The cluster's trust root: an Ed25519 key that signs node certificates."""

    __slots__ = ("signing_key",)

    def __init__(self, signing_key: SigningKey) -> None:
        self.signing_key = signing_key

    @classmethod
    def generate(cls) -> Authority:
        """A fresh authority with a random key (in memory only)."""
        return cls(SigningKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Authority:
        """Load the authority key stored at ``path``, creating it (``0o600``) on first use."""
        return cls(load_or_create_key(Path(path)))

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key that nodes put in their ``trusted`` set."""
        return bytes(self.signing_key.verify_key)

    def issue(
        self,
        node_id: str,
        public_key: bytes,
        *,
        name: str = "",
        roles: Iterable[str] = (),
        ttl: float = DEFAULT_CERT_TTL,
        now: float | None = None,
    ) -> bytes:
        """Sign a certificate for the node key ``public_key``, valid ``ttl`` seconds from ``now``.

        Returns the signed certificate bytes; raises ``ValueError`` for fields a verifier would
        refuse.
        """
        not_before = int(time.time() if now is None else now)
        if ttl < 1:
            raise ValueError(f"ttl must be at least one second, got {ttl}")
        fields = {
            "node_id": node_id,
            "public_key": bytes(public_key),
            "name": name,
            "roles": tuple(roles),
            "not_before": not_before,
            "expires": not_before + int(ttl),
            "issuer": self.public_key,
        }
        problem = _field_problem(fields)
        if problem:
            raise ValueError(f"cannot issue certificate: {problem}")
        body = msgpack.packb({k: fields[k] for k in _FIELDS}, use_bin_type=True)
        signed = bytes(self.signing_key.sign(body))
        if len(signed) > MAX_CERT_SIZE:
            raise ValueError(f"certificate of {len(signed)} bytes exceeds {MAX_CERT_SIZE}")
        return signed

    def __repr__(self) -> str:
        return f"Authority(public_key={self.public_key.hex()[:16]}...)"


class NodeIdentity:
    """A node's signing key, its certificate, and the authorities (and revocations) it honours.

    Pass ``signing_key``, ``certificate`` and ``verify_peer`` to
    :class:`~trimicro.mailbox.secure.channel.SecureHandshake`; the handshake's ``peer_info`` is
    then the peer's verified :class:`Certificate`.
    """

    __slots__ = ("cert", "certificate", "revoked", "signing_key", "trusted")

    def __init__(
        self,
        signing_key: SigningKey,
        certificate: bytes,
        trusted: Iterable[bytes],
        *,
        revoked: Iterable[bytes] = (),
    ) -> None:
        self.signing_key = signing_key
        self.certificate = bytes(certificate)
        self.cert = Certificate.decode(self.certificate)
        if self.cert.public_key != bytes(signing_key.verify_key):
            raise ValueError("certificate is for another key than signing_key")
        self.trusted: frozenset[bytes] = frozenset(bytes(k) for k in trusted)
        self.revoked: set[bytes] = {bytes(k) for k in revoked}
        """Node public keys refused from now on; update it at any time."""

    @property
    def node_id(self) -> str:
        return self.cert.node_id

    @property
    def public_key(self) -> bytes:
        """This node's 32-byte Ed25519 identity key."""
        return bytes(self.signing_key.verify_key)

    def verify_peer(self, id_key: bytes, cert: bytes) -> Certificate:
        """Judge a peer's certificate against our trusted authorities, now; the ``VerifyPeer``."""
        return verify_certificate(cert, id_key, self.trusted, revoked=self.revoked)

    @classmethod
    def issue(
        cls,
        node_id: str,
        authority: Authority,
        *,
        signing_key: SigningKey | None = None,
        name: str = "",
        roles: Iterable[str] = (),
        ttl: float = DEFAULT_CERT_TTL,
        now: float | None = None,
    ) -> NodeIdentity:
        """An in-memory identity certified by ``authority`` (a fresh key unless one is given)."""
        key = SigningKey.generate() if signing_key is None else signing_key
        cert = authority.issue(node_id, bytes(key.verify_key), name=name, roles=roles, ttl=ttl, now=now)
        return cls(key, cert, [authority.public_key])

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        node_id: str,
        authority: Authority,
        *,
        name: str = "",
        roles: Iterable[str] = (),
        ttl: float = DEFAULT_CERT_TTL,
        now: float | None = None,
    ) -> NodeIdentity:
        """The identity stored in ``directory`` (``node.key``, ``node.cert``), created if missing.

        The stored certificate is reused while it is for this key, node id, name, roles and
        authority and has more than half its lifetime left; otherwise a new one is issued and
        written.
        """
        directory = Path(directory)
        roles = tuple(roles)
        key = load_or_create_key(directory / _KEY_FILE)
        at = time.time() if now is None else now
        cert_path = directory / _CERT_FILE
        stored = _read_cert(cert_path)
        if stored is not None and _reusable(stored, key, node_id, name, roles, authority, at):
            return cls(key, stored, [authority.public_key])
        cert = authority.issue(node_id, bytes(key.verify_key), name=name, roles=roles, ttl=ttl, now=at)
        write_private(cert_path, cert, overwrite=True)
        return cls(key, cert, [authority.public_key])

    def __repr__(self) -> str:
        return f"NodeIdentity(node_id={self.node_id!r}, public_key={self.public_key.hex()[:16]}...)"


def _reusable(
    cert: bytes,
    key: SigningKey,
    node_id: str,
    name: str,
    roles: tuple[str, ...],
    authority: Authority,
    now: float,
) -> bool:
    try:
        c = verify_certificate(cert, bytes(key.verify_key), [authority.public_key], now=now)
    except CertificateError:
        return False
    return c.node_id == node_id and c.name == name and c.roles == roles and c.expires - now > c.lifetime / 2


def default_home(home: Path | None = None) -> Path:
    """``home``, else ``$TRIMICRO_HOME``, else ``~/.trimicro``: where development keys live."""
    if home is not None:
        return Path(home)
    env = os.environ.get("TRIMICRO_HOME")
    return Path(env).expanduser() if env else Path.home() / ".trimicro"


def dev_authority(home: Path | None = None) -> Authority:
    """The development authority of ``home`` (see :func:`default_home`), created on first use.

    Raises :class:`IdentityError` in a joined home (one with :data:`TRUSTED_FILE` and no
    authority key): the cluster's authority lives on another host.
    """
    home = default_home(home)
    if joined(home):
        raise IdentityError(
            f"{home} joined a cluster whose authority is on another host "
            f"(it has {TRUSTED_FILE} and no {AUTHORITY_FILE})"
        )
    return Authority.load_or_create(home / AUTHORITY_FILE)


def joined(home: Path) -> bool:
    """Whether ``home`` joined a cluster (a node bundle was installed, no authority key here)."""
    return (home / TRUSTED_FILE).exists() and not (home / AUTHORITY_FILE).exists()


def read_trusted(home: Path) -> list[bytes]:
    """The authority keys of :data:`TRUSTED_FILE` in ``home`` ([] without one)."""
    try:
        with open(home / TRUSTED_FILE, encoding="ascii") as f:
            text = f.read(_MAX_TRUSTED * 66)
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read {home / TRUSTED_FILE}: {exc}") from exc
    keys = []
    for line in text.split():
        try:
            key = bytes.fromhex(line)
        except ValueError:
            key = b""
        if len(key) != _KEY_LEN:
            raise IdentityError(f"{home / TRUSTED_FILE}: {line[:70]!r} is not a 32-byte hex key")
        keys.append(key)
    return keys


def installed_identity(node_id: str, home: Path) -> NodeIdentity:
    """The identity of ``node_id`` installed in the joined ``home`` (nothing is created).

    Raises :class:`IdentityError` if no bundle for ``node_id`` was installed there.
    """
    check_node_id(node_id)
    directory = home / "nodes" / node_id
    key = load_key(directory / _KEY_FILE)
    cert = _read_cert(directory / _CERT_FILE)
    if key is None or cert is None:
        raise IdentityError(
            f"no certificate for node {node_id!r} in {home}: issue one on the authority's host "
            f"(trimicro cert issue {node_id}) and install it here (trimicro cert install FILE)"
        )
    return NodeIdentity(key, cert, read_trusted(home))


def check_node_id(node_id: str) -> None:
    """``ValueError`` unless ``node_id`` is 1-128 characters of ``[A-Za-z0-9._-]`` (it names a folder)."""
    if not isinstance(node_id, str) or not _NODE_ID_RE.fullmatch(node_id) or node_id in (".", ".."):
        raise ValueError(f"node_id must be 1-128 characters of [A-Za-z0-9._-], got {node_id!r}")


def dev_identity(node_id: str, home: Path | None = None) -> NodeIdentity:
    """The zero-setup development identity of ``node_id``.

    ``home`` defaults to ``$TRIMICRO_HOME`` or ``~/.trimicro``. The authority key is
    ``home/authority.key`` (created on first use) and the node's files live in
    ``home/nodes/<node_id>/``: nodes sharing a home trust each other, others do not. In a
    joined home (see the module docstring) the installed identity is loaded instead.
    """
    check_node_id(node_id)
    home = default_home(home)
    if joined(home):
        return installed_identity(node_id, home)
    authority = Authority.load_or_create(home / AUTHORITY_FILE)
    return NodeIdentity.load_or_create(home / "nodes" / node_id, node_id, authority)


def _read_cert(path: Path) -> bytes | None:
    """The stored certificate bytes, or None if missing or unreadable (it will be re-issued)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CERT_SIZE + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_CERT_SIZE else None
