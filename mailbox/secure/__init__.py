"""The secure channel: who is on the other end of a connection, and nobody else reads it.

Three layers, each usable alone, all built on PyNaCl (libsodium); nothing here is home-made crypto:

* :mod:`.noise`: the sans-I/O Noise ``XX`` handshake and cipher states (spec revision 34);
* :mod:`.channel`: Noise plus node identities, still sans-I/O: :class:`SecureHandshake` binds
  each side's long-term Ed25519 key to the handshake and asks ``verify_peer`` about the peer's
  certificate; :class:`SecureSession` seals and opens transport messages;
* :mod:`.stream`: the channel over any :class:`~trimicro.mailbox.transport.Connection`
  (protocol §6): :func:`secure_client` and :func:`secure_server` return a
  :class:`SecureConnection`, itself a ``Connection``;
* :mod:`.identity`: the cluster's trust root: an :class:`Authority` signs a :class:`Certificate`
  per node, a :class:`NodeIdentity` holds a node's key and judges its peers' certificates.

The names below are the public API; the constants and primitives stay in their modules.

**The API.** ``await secure_client(conn, signing_key, cert, verify_peer)`` and ``secure_server`` run the
handshake over any ``Connection`` and return a :class:`SecureConnection`, or close the
connection and raise if the handshake fails or ``verify_peer(id_key, cert)`` (the caller's
judge of the peer's certificate, usually :meth:`NodeIdentity.verify_peer`) raises: nothing of
the application is read from a peer that was not accepted. Afterwards every frame is sealed
(ChaChaPoly) and a frame that fails to open closes the connection. There is one
implementation; it is not a plugin point (the transport under it is).
"""

from __future__ import annotations

from .channel import SecureChannelError, SecureHandshake, SecureSession, VerifyPeer
from .identity import (
    Authority,
    Certificate,
    CertificateError,
    IdentityError,
    NodeIdentity,
    dev_authority,
    dev_identity,
)
from .noise import HandshakeError
from .stream import (
    HandshakeFailed,
    HandshakeTimeout,
    SecureConnection,
    SecureStreamError,
    secure_client,
    secure_server,
)

__all__ = [
    "Authority",
    "Certificate",
    "CertificateError",
    "HandshakeError",
    "HandshakeFailed",
    "HandshakeTimeout",
    "IdentityError",
    "NodeIdentity",
    "SecureChannelError",
    "SecureConnection",
    "SecureHandshake",
    "SecureSession",
    "SecureStreamError",
    "VerifyPeer",
    "dev_authority",
    "dev_identity",
    "secure_client",
    "secure_server",
]
