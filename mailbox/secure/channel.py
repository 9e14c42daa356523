"""trimicro's secure channel: Noise XX plus node identities, still sans-I/O.

:mod:`trimicro.mailbox.secure.noise` proves that each side holds *some* X25519 static key. This layer
says *whose* key it is, the way libp2p-noise does: each side's handshake payload carries

    msgpack {"id_key": Ed25519 public key,
             "sig": Ed25519 signature over b"trimicro-noise-static-key:" + Noise static key,
             "cert": opaque node certificate}

The signature binds the long-term identity to this handshake's Noise static key; the certificate
is judged by a caller-supplied ``verify_peer(id_key, cert)``, which returns whatever the caller
wants to remember about the peer (``peer_info``) or raises to refuse it. The responder sends its
proof in message 2; the initiator checks it before revealing its own in message 3, so an active
attacker learns nothing about the initiator without first passing as a trusted responder.

No sockets here: :class:`SecureHandshake` turns received handshake messages into messages to
send, and :class:`SecureSession` turns plaintext into Noise transport messages and back. Framing
(a length prefix per message) is the framer's job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped, unused-ignore]
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from trimicro.mailbox.secure.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    TAGLEN,
    CipherState,
    HandshakeError,
    HandshakeState,
    generate_private_key,
)

__all__ = [
    "DEFAULT_PROLOGUE",
    "DEFAULT_REKEY_INTERVAL",
    "MAX_PLAINTEXT",
    "SIGNATURE_PREFIX",
    "HandshakeError",
    "SecureChannelError",
    "SecureHandshake",
    "SecureSession",
    "VerifyPeer",
]

SIGNATURE_PREFIX = b"trimicro-noise-static-key:"
DEFAULT_PROLOGUE = b"trimicro/1"
MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAGLEN
"""Largest plaintext one transport message can carry (65535 - 16 bytes of MAC)."""
DEFAULT_REKEY_INTERVAL = 1 << 20
"""Messages per direction between two ``Rekey()`` calls (both sides count in lockstep)."""

# Handshake message 2 is the fuller one: e (32) + encrypted s (32 + 16) + payload MAC (16).
_MAX_IDENTITY_PAYLOAD = MAX_MESSAGE_LEN - (DHLEN + DHLEN + TAGLEN + TAGLEN)
_PAYLOAD_KEYS = frozenset(("id_key", "sig", "cert"))
_ED25519_KEYLEN = 32
_ED25519_SIGLEN = 64

VerifyPeer = Callable[[bytes, bytes], Any]
"""``verify_peer(id_key, cert) -> peer_info``; raise (any Exception) to refuse the peer."""


class SecureChannelError(ValueError):
    """A transport message could not be sealed or opened: tampered, reordered, replayed, too big.

    After one failed :meth:`SecureSession.open` the receiving direction stays closed: the stream
    is no longer trustworthy and the connection should be dropped.
    """


class SecureSession:
    """The two transport CipherStates of a finished handshake, plus who is on the other end.

    Transport messages carry an implicit nonce, so they must be opened in the order they were
    sealed (a reliable, ordered stream). Every ``rekey_interval`` messages in a direction, both
    ends apply the spec's ``Rekey()`` to that direction's key at the same message boundary:
    compromising a later key then reveals nothing sealed before the boundary. Both ends must use
    the same interval; a mismatch shows up as a :class:`SecureChannelError` at the first
    boundary, never as silent corruption.

    One message carries at most :data:`MAX_PLAINTEXT` bytes. Larger data goes through
    :meth:`seal_chunks`; the receiver opens each chunk and appends it to a byte stream. As in
    libp2p, the channel carries bytes, and message boundaries inside them belong to the layer
    above (the framer).
    """

    __slots__ = (
        "_recv_broken",
        "_recv_left",
        "_send_left",
        "handshake_hash",
        "peer_id_key",
        "peer_info",
        "recv",
        "rekey_interval",
        "send",
    )

    def __init__(
        self,
        send: CipherState,
        recv: CipherState,
        peer_id_key: bytes,
        peer_info: Any,
        handshake_hash: bytes,
        *,
        rekey_interval: int = DEFAULT_REKEY_INTERVAL,
    ) -> None:
        if rekey_interval < 1:
            raise ValueError(f"rekey_interval must be at least 1, got {rekey_interval}")
        self.send = send
        self.recv = recv
        self.peer_id_key = peer_id_key
        self.peer_info = peer_info
        self.handshake_hash = handshake_hash
        self.rekey_interval = rekey_interval
        # Countdowns rather than ``n % interval``: one decrement per message on the hot path.
        self._send_left = rekey_interval - send.n % rekey_interval
        self._recv_left = rekey_interval - recv.n % rekey_interval
        self._recv_broken = False

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt one transport message (at most :data:`MAX_PLAINTEXT` bytes of plaintext)."""
        if type(plaintext) is not bytes:
            plaintext = bytes(plaintext)
        if len(plaintext) > MAX_PLAINTEXT:
            raise SecureChannelError(
                f"plaintext of {len(plaintext)} bytes exceeds {MAX_PLAINTEXT}; split it with seal_chunks()"
            )
        send = self.send
        try:
            ciphertext = send.encrypt_with_ad(b"", plaintext)
        except HandshakeError as exc:
            raise SecureChannelError(f"cannot seal: {exc}") from exc
        self._send_left -= 1
        if not self._send_left:
            send.rekey()
            self._send_left = self.rekey_interval
        return ciphertext

    def open(self, ciphertext: bytes) -> bytes:
        """Decrypt and authenticate the next transport message from the peer."""
        if self._recv_broken:
            raise SecureChannelError("receive direction closed after an earlier failure")
        if type(ciphertext) is not bytes:
            ciphertext = bytes(ciphertext)
        recv = self.recv
        try:
            plaintext = recv.decrypt_with_ad(b"", ciphertext)
        except HandshakeError as exc:
            self._recv_broken = True
            raise SecureChannelError(f"cannot open transport message: {exc}") from exc
        self._recv_left -= 1
        if not self._recv_left:
            recv.rekey()
            self._recv_left = self.rekey_interval
        return plaintext

    def seal_chunks(self, data: bytes) -> list[bytes]:
        """Seal ``data`` of any size as consecutive messages of at most MAX_PLAINTEXT bytes.

        Empty ``data`` yields no message at all.
        """
        if len(data) <= MAX_PLAINTEXT:  # the usual case: one message
            return [self.seal(data)] if data else []
        data = bytes(data)
        return [self.seal(data[i : i + MAX_PLAINTEXT]) for i in range(0, len(data), MAX_PLAINTEXT)]


class SecureHandshake:
    """One side of the authenticated XX handshake, as a sans-I/O state machine.

    Initiator: ``out = hs.start()``, send it; for the reply ``out, done = hs.receive(reply)``,
    send ``out`` (message 3) and ``done`` is True. Responder: ``out, done = hs.receive(m1)``,
    send ``out`` (message 2, ``done`` False); then ``out, done = hs.receive(m3)`` gives
    ``(b"", True)``. Then :meth:`result` returns the :class:`SecureSession`.

    Each ``data`` must be exactly one handshake message, as delimited by the framer. Any
    problem (bad MAC, wrong length, bad signature, refused certificate, a replayed or
    out-of-order message) raises :class:`HandshakeError` and leaves the handshake failed for
    good: a new connection starts a new handshake.

    ``noise_static`` is this side's X25519 static private key; by default a fresh one per
    handshake, which costs nothing since the Ed25519 signature is what carries identity.
    """

    __slots__ = (
        "_failed",
        "_noise",
        "_payload",
        "_rekey_interval",
        "_result",
        "_started",
        "_verify_peer",
        "id_key",
    )

    def __init__(
        self,
        initiator: bool,
        signing_key: SigningKey,
        cert: bytes,
        verify_peer: VerifyPeer,
        *,
        prologue: bytes = DEFAULT_PROLOGUE,
        noise_static: bytes | None = None,
        rekey_interval: int = DEFAULT_REKEY_INTERVAL,
    ) -> None:
        if rekey_interval < 1:
            raise ValueError(f"rekey_interval must be at least 1, got {rekey_interval}")
        static = generate_private_key() if noise_static is None else noise_static
        self._noise = HandshakeState(initiator, static, prologue=prologue)
        self.id_key: bytes = bytes(signing_key.verify_key)
        signature = signing_key.sign(SIGNATURE_PREFIX + self._noise.static_public).signature
        # Built once, up front: it depends only on our keys and certificate.
        self._payload: bytes = msgpack.packb(
            {"id_key": self.id_key, "sig": signature, "cert": bytes(cert)}, use_bin_type=True
        )
        if len(self._payload) > _MAX_IDENTITY_PAYLOAD:
            raise ValueError(
                f"identity payload of {len(self._payload)} bytes exceeds "
                f"{_MAX_IDENTITY_PAYLOAD}: the certificate is too large for one Noise message"
            )
        self._verify_peer = verify_peer
        self._rekey_interval = rekey_interval
        self._started = False
        self._failed = False
        self._result: SecureSession | None = None

    @classmethod
    def initiator(
        cls,
        signing_key: SigningKey,
        cert: bytes,
        verify_peer: VerifyPeer,
        *,
        prologue: bytes = DEFAULT_PROLOGUE,
        noise_static: bytes | None = None,
        rekey_interval: int = DEFAULT_REKEY_INTERVAL,
    ) -> SecureHandshake:
        return cls(
            True,
            signing_key,
            cert,
            verify_peer,
            prologue=prologue,
            noise_static=noise_static,
            rekey_interval=rekey_interval,
        )

    @classmethod
    def responder(
        cls,
        signing_key: SigningKey,
        cert: bytes,
        verify_peer: VerifyPeer,
        *,
        prologue: bytes = DEFAULT_PROLOGUE,
        noise_static: bytes | None = None,
        rekey_interval: int = DEFAULT_REKEY_INTERVAL,
    ) -> SecureHandshake:
        return cls(
            False,
            signing_key,
            cert,
            verify_peer,
            prologue=prologue,
            noise_static=noise_static,
            rekey_interval=rekey_interval,
        )

    @property
    def is_initiator(self) -> bool:
        return self._noise.initiator

    @property
    def done(self) -> bool:
        return self._result is not None

    def start(self) -> bytes:
        """The initiator's first message (``-> e``, empty payload)."""
        self._check_usable()
        if not self._noise.initiator:
            raise HandshakeError("start() is for the initiator; a responder begins with receive()")
        if self._started:
            raise HandshakeError("start() called twice")
        self._started = True
        return self._guarded(self._noise.write_message, b"")

    def receive(self, data: bytes) -> tuple[bytes, bool]:
        """Consume one handshake message; return ``(bytes to send, handshake done)``."""
        self._check_usable()
        if self._noise.initiator and not self._started:
            raise HandshakeError("initiator must call start() before receive()")
        data = bytes(data)
        noise = self._noise
        try:
            payload = noise.read_message(data)
            if noise.initiator:  # got message 2: check the responder, then prove ourselves
                peer_id_key, peer_info = self._verify_identity(payload)
                out = noise.write_message(self._payload)
            elif not noise.complete:  # got message 1: -> e carries no payload in trimicro
                if payload:
                    raise HandshakeError(
                        f"handshake message 1 must carry an empty payload, got {len(payload)} bytes"
                    )
                return noise.write_message(self._payload), False
            else:  # got message 3: check the initiator
                peer_id_key, peer_info = self._verify_identity(payload)
                out = b""
        except BaseException:
            self._failed = True
            raise
        send, recv, handshake_hash = noise.split()
        self._result = SecureSession(
            send,
            recv,
            peer_id_key,
            peer_info,
            handshake_hash,
            rekey_interval=self._rekey_interval,
        )
        return out, True

    def result(self) -> SecureSession:
        """The authenticated session; only once :attr:`done`."""
        if self._result is None:
            raise HandshakeError("handshake not complete: no session yet")
        return self._result

    # -- internals

    def _check_usable(self) -> None:
        if self._failed:
            raise HandshakeError("handshake already failed; start a new one")
        if self._result is not None:
            raise HandshakeError("handshake already complete: unexpected extra handshake message")

    def _guarded(self, fn: Callable[[bytes], bytes], arg: bytes) -> bytes:
        try:
            return fn(arg)
        except BaseException:
            self._failed = True
            raise

    def _verify_identity(self, payload: bytes) -> tuple[bytes, Any]:
        """Check the peer's signed identity payload, then ask ``verify_peer`` about it."""
        try:
            fields = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=False)
        except Exception as exc:  # msgpack raises several types on malformed input
            raise HandshakeError(f"peer identity payload is not valid msgpack: {exc}") from exc
        if not isinstance(fields, dict) or fields.keys() != _PAYLOAD_KEYS:
            raise HandshakeError("peer identity payload must be a map with exactly id_key, sig and cert")
        id_key, sig, cert = fields["id_key"], fields["sig"], fields["cert"]
        if not (isinstance(id_key, bytes) and isinstance(sig, bytes) and isinstance(cert, bytes)):
            raise HandshakeError("peer identity payload fields must all be binary")
        if len(id_key) != _ED25519_KEYLEN or len(sig) != _ED25519_SIGLEN:
            raise HandshakeError(
                f"peer id_key must be {_ED25519_KEYLEN} bytes and sig {_ED25519_SIGLEN} bytes"
            )
        remote_static = self._noise.remote_static
        assert remote_static is not None  # read_message just authenticated it
        try:
            VerifyKey(id_key).verify(SIGNATURE_PREFIX + remote_static, sig)
        except (CryptoError, ValueError, TypeError) as exc:
            raise HandshakeError(
                "peer signature does not bind its identity key to its Noise static key"
            ) from exc
        try:
            peer_info = self._verify_peer(id_key, cert)
        except Exception as exc:
            raise HandshakeError(f"peer certificate refused: {exc!r}") from exc
        return id_key, peer_info
