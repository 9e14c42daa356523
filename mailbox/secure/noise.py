"""Sans-I/O Noise ``XX`` handshake: ``Noise_XX_25519_ChaChaPoly_BLAKE2b``, spec revision 34.

Everything here follows https://noiseprotocol.org/noise.html (rev 34) section by section:
:class:`CipherState` (5.1), :class:`SymmetricState` (5.2), :class:`HandshakeState` (5.3) for the
one pattern trimicro uses, ``XX`` (7.5)::

    -> e
    <- e, ee, s, es
    -> s, se

The state machines take bytes and return bytes; they never touch a socket (h11 style), so the
same code serves trio streams, tests and fuzzers. The primitives are libsodium's, reached through
PyNaCl (X25519, ChaCha20-Poly1305 IETF), plus :mod:`hashlib`'s BLAKE2b and :mod:`hmac` for
``HKDF`` exactly as section 4.3 defines it. Nothing here is home-made crypto beyond the spec's own
constructions.

Every failure caused by what a peer sent (bad MAC, wrong length, invalid public key) or by using
a state out of order raises :class:`HandshakeError`; hostile input never escapes as another
exception type.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from functools import lru_cache
from typing import Any, NamedTuple

from nacl._sodium import ffi as _ffi  # type: ignore[import-not-found, unused-ignore]
from nacl._sodium import lib as _lib  # type: ignore[import-not-found, unused-ignore]
from nacl.bindings import (
    crypto_aead_chacha20poly1305_ietf_encrypt,
    crypto_scalarmult,
    crypto_scalarmult_base,
)
from nacl.exceptions import CryptoError
from nacl.utils import random as _random_bytes

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PROTOCOL_NAME",
    "TAGLEN",
    "CipherState",
    "HandshakeError",
    "HandshakeState",
    "SplitResult",
    "SymmetricState",
    "generate_private_key",
    "public_key",
]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
DHLEN = 32
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535
"""Spec section 3: every Noise message, handshake or transport, is at most 65535 bytes."""
MAX_NONCE = 2**64 - 1
"""Reserved by the spec (5.1) for ``REKEY``; a CipherState refuses to encrypt with it."""

_NONCE = struct.Struct("<4xQ")  # ChaChaPoly (12.3): 32 zero bits, then n as 64-bit little-endian
_REKEY_NONCE = _NONCE.pack(MAX_NONCE)
_ZEROS32 = bytes(32)


class HandshakeError(ValueError):
    """A Noise failure: bad MAC, wrong length, invalid key, exhausted nonce or out-of-order use.

    One type for all of them, so a caller guarding against hostile bytes needs one ``except``.
    """


# -- the spec's functions (section 4) ----------------------------------------------------------


def generate_private_key() -> bytes:
    """A fresh X25519 private key (``GENERATE_KEYPAIR``); clamping happens inside libsodium."""
    return _random_bytes(DHLEN)


def public_key(private_key: bytes) -> bytes:
    """The X25519 public key of ``private_key``."""
    if len(private_key) != DHLEN:
        raise HandshakeError(f"X25519 private key must be {DHLEN} bytes, got {len(private_key)}")
    return crypto_scalarmult_base(bytes(private_key))


def _dh(private_key: bytes, public: bytes) -> bytes:
    # libsodium refuses (rather than returning zeros) when the peer's key is a low-order point;
    # the spec (12.1) allows exactly that, and it must surface as a HandshakeError.
    try:
        return crypto_scalarmult(private_key, public)
    except CryptoError as exc:
        raise HandshakeError("invalid X25519 public key from peer (low-order point)") from exc


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """``HKDF(chaining_key, ikm, 2)`` from section 4.3 (XX never needs three outputs)."""
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    return out1, out2


# -- 5.1 CipherState ---------------------------------------------------------------------------


class CipherState:
    """Key ``k`` and nonce ``n`` (spec 5.1); without a key it passes plaintext through.

    Used both inside the handshake and, after :meth:`HandshakeState.split`, for transport
    messages, where :meth:`encrypt_with_ad` and :meth:`decrypt_with_ad` are the hot path: one
    length check, one ``struct`` pack and one libsodium call each, into an output buffer the
    state keeps (grown to the largest message it has handled, at most MAX_MESSAGE_LEN): a fresh
    cffi buffer per message cost about a third of a small message's seal.
    """

    __slots__ = ("_cap", "_k", "_out", "_view", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self.n = 0
        self._cap = 0
        self._out: Any = None
        self._view: Any = None  # cffi's buffer of _out: a slice of it is a copy, as bytes
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """Set ``k`` (32 bytes, or ``None`` for empty) and reset ``n`` to zero."""
        if key is not None and len(key) != KEYLEN:
            raise HandshakeError(f"cipher key must be {KEYLEN} bytes, got {len(key)}")
        self._k = None if key is None else bytes(key)
        self.n = 0

    def has_key(self) -> bool:
        return self._k is not None

    def set_nonce(self, nonce: int) -> None:
        """Spec ``SetNonce``; only for out-of-band nonce schemes, which trimicro does not use."""
        if not 0 <= nonce <= MAX_NONCE:
            raise HandshakeError(f"nonce out of range: {nonce}")
        self.n = nonce

    def _grow(self, size: int) -> None:
        """An output buffer of at least ``size`` bytes (a power of two from 1 KiB, at most the
        Noise maximum: every message fits)."""
        cap = max(1024, self._cap)
        while cap < size:
            cap *= 2
        cap = min(cap, MAX_MESSAGE_LEN)
        self._out = _ffi.new("unsigned char[]", cap)
        self._view = _ffi.buffer(self._out)
        self._cap = cap

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """``ENCRYPT(k, n++, ad, plaintext)``; refuses the reserved nonce ``2**64 - 1``."""
        k = self._k
        if k is None:
            return plaintext
        n = self.n
        if n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted: this CipherState must not encrypt again")
        mlen = len(plaintext)
        if mlen > MAX_MESSAGE_LEN - TAGLEN:
            raise HandshakeError(
                f"plaintext of {mlen} bytes exceeds the Noise maximum of {MAX_MESSAGE_LEN - TAGLEN}"
            )
        size = mlen + TAGLEN
        if size > self._cap:
            self._grow(size)
        _encrypt(self._out, _NULL, plaintext, mlen, ad or _NULL, len(ad), _NULL, _NONCE.pack(n), k)
        self.n = n + 1
        ciphertext: bytes = self._view[:size]
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """``DECRYPT(k, n, ad, ciphertext)``; ``n`` advances only when the MAC checks out."""
        k = self._k
        if k is None:
            return ciphertext
        n = self.n
        if n >= MAX_NONCE:
            raise HandshakeError("nonce exhausted: this CipherState must not decrypt again")
        clen = len(ciphertext)
        if not TAGLEN <= clen <= MAX_MESSAGE_LEN:
            raise HandshakeError(f"ciphertext of {clen} bytes is not between {TAGLEN} and {MAX_MESSAGE_LEN}")
        if clen > self._cap:
            self._grow(clen)
        if _decrypt(self._out, _NULL, _NULL, ciphertext, clen, ad or _NULL, len(ad), _NONCE.pack(n), k):
            raise HandshakeError("decryption failed: bad MAC (tampered, reordered or replayed)")
        self.n = n + 1
        plaintext: bytes = self._view[: clen - TAGLEN]
        return plaintext

    def rekey(self) -> None:
        """Spec ``Rekey()``: ``k`` = first 32 bytes of ``ENCRYPT(k, 2**64-1, "", zeros(32))``.

        ``n`` is deliberately left alone, as the spec says.
        """
        k = self._k
        if k is None:
            raise HandshakeError("cannot rekey a CipherState without a key")
        self._k = crypto_aead_chacha20poly1305_ietf_encrypt(_ZEROS32, None, _REKEY_NONCE, k)[:KEYLEN]


# The AEAD on the hot path. PyNaCl's binding checks its arguments, formats its error messages
# and allocates its output on every call (most of the cost for a small message); CipherState
# calls the very same libsodium functions through PyNaCl's own cffi handle (as its bindings do),
# with the checks done once (key and nonce lengths are fixed here) and its own output buffer.
_encrypt = _lib.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt = _lib.crypto_aead_chacha20poly1305_ietf_decrypt
_NULL = _ffi.NULL


# -- 5.2 SymmetricState ------------------------------------------------------------------------


def _initial_hash(protocol_name: bytes) -> bytes:
    if len(protocol_name) <= HASHLEN:
        return protocol_name.ljust(HASHLEN, b"\x00")
    return _hash(protocol_name)


_INITIAL_H = _initial_hash(PROTOCOL_NAME)  # fixed for our one protocol: computed once


@lru_cache(maxsize=32)
def _after_prologue(protocol_name: bytes, prologue: bytes) -> tuple[bytes, bytes]:
    """``(ck, h)`` after ``InitializeSymmetric`` and ``MixHash(prologue)``: shared by handshakes."""
    h = _INITIAL_H if protocol_name == PROTOCOL_NAME else _initial_hash(protocol_name)
    return h, _hash(h + prologue)


class SymmetricState:
    """Chaining key ``ck``, handshake hash ``h`` and a :class:`CipherState` (spec 5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME, prologue: bytes | None = None) -> None:
        """``InitializeSymmetric(protocol_name)``, then ``MixHash(prologue)`` when one is given."""
        if prologue is None:
            h = _INITIAL_H if protocol_name == PROTOCOL_NAME else _initial_hash(protocol_name)
            self.ck, self.h = h, h
        else:
            self.ck, self.h = _after_prologue(protocol_name, bytes(prologue))
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, input_key_material)
        self.cipher.initialize_key(temp_k[:KEYLEN])  # HASHLEN is 64: truncate to 32

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def get_handshake_hash(self) -> bytes:
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Two CipherStates: ``c1`` for initiator-to-responder, ``c2`` for the other way."""
        temp_k1, temp_k2 = _hkdf2(self.ck, b"")
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])


# -- 5.3 HandshakeState, pattern XX ------------------------------------------------------------


class SplitResult(NamedTuple):
    """The outcome of a finished handshake, oriented for the side that holds it."""

    send: CipherState
    recv: CipherState
    handshake_hash: bytes


_WRITE, _READ, _DONE, _FAILED = "write", "read", "done", "failed"


class HandshakeState:
    """The XX handshake for one side, as a state machine over whole messages.

    The initiator calls ``write_message`` / ``read_message`` / ``write_message``; the responder
    ``read_message`` / ``write_message`` / ``read_message``. Calling them in another order, or
    after a failure, raises :class:`HandshakeError`: a failed handshake is never resumed, since
    its transcript no longer matches the peer's.

    ``ephemeral`` injects the ephemeral private key (for test vectors only: reusing one breaks
    forward secrecy); by default a fresh one is generated for each handshake.
    """

    __slots__ = (
        "_e",
        "_e_pub",
        "_msg",
        "_phase",
        "_re",
        "_rs",
        "_s",
        "_s_pub",
        "_split",
        "_ss",
        "initiator",
    )

    def __init__(
        self,
        initiator: bool,
        static_private: bytes,
        *,
        prologue: bytes = b"",
        ephemeral: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self._s = bytes(static_private)
        self._s_pub = public_key(self._s)
        e = generate_private_key() if ephemeral is None else bytes(ephemeral)
        self._e = e
        self._e_pub = public_key(e)
        self._re: bytes | None = None
        self._rs: bytes | None = None
        self._ss = SymmetricState(PROTOCOL_NAME, prologue)
        self._msg = 0  # index of the next message in the pattern (0, 1, 2)
        self._phase = _WRITE if initiator else _READ
        self._split: SplitResult | None = None

    @classmethod
    def new_initiator(
        cls, static_private: bytes, *, prologue: bytes = b"", ephemeral: bytes | None = None
    ) -> HandshakeState:
        return cls(True, static_private, prologue=prologue, ephemeral=ephemeral)

    @classmethod
    def new_responder(
        cls, static_private: bytes, *, prologue: bytes = b"", ephemeral: bytes | None = None
    ) -> HandshakeState:
        return cls(False, static_private, prologue=prologue, ephemeral=ephemeral)

    # -- introspection

    @property
    def complete(self) -> bool:
        return self._phase == _DONE

    @property
    def static_public(self) -> bytes:
        return self._s_pub

    @property
    def ephemeral_public(self) -> bytes:
        return self._e_pub

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key, once its ``s`` token has been read (authenticated)."""
        return self._rs

    def get_handshake_hash(self) -> bytes:
        return self._ss.get_handshake_hash()

    @property
    def expects_write(self) -> bool:
        return self._phase == _WRITE

    # -- the two operations

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying ``payload`` (encrypted from message 2)."""
        if self._phase != _WRITE:
            raise HandshakeError(f"write_message out of order: handshake is in state {self._phase!r}")
        payload = bytes(payload)
        overhead = (DHLEN, DHLEN + DHLEN + TAGLEN + TAGLEN, DHLEN + TAGLEN + TAGLEN)[self._msg]
        if len(payload) + overhead > MAX_MESSAGE_LEN:
            raise HandshakeError(
                f"payload of {len(payload)} bytes makes handshake message {self._msg + 1} "
                f"exceed {MAX_MESSAGE_LEN} bytes"
            )
        try:
            ss = self._ss
            if self._msg == 0:  # -> e
                ss.mix_hash(self._e_pub)
                out = self._e_pub + ss.encrypt_and_hash(payload)
            elif self._msg == 1:  # <- e, ee, s, es
                assert self._re is not None
                ss.mix_hash(self._e_pub)
                ss.mix_key(_dh(self._e, self._re))
                enc_s = ss.encrypt_and_hash(self._s_pub)
                ss.mix_key(_dh(self._s, self._re))
                out = self._e_pub + enc_s + ss.encrypt_and_hash(payload)
            else:  # -> s, se
                assert self._re is not None
                enc_s = ss.encrypt_and_hash(self._s_pub)
                ss.mix_key(_dh(self._s, self._re))
                out = enc_s + ss.encrypt_and_hash(payload)
        except BaseException:
            self._phase = _FAILED
            raise
        self._advance()
        return out

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its (decrypted) payload."""
        if self._phase != _READ:
            raise HandshakeError(f"read_message out of order: handshake is in state {self._phase!r}")
        message = bytes(message)
        try:
            payload = self._read(message)
        except BaseException:
            self._phase = _FAILED
            raise
        self._advance()
        return payload

    def _read(self, message: bytes) -> bytes:
        size = len(message)
        if size > MAX_MESSAGE_LEN:
            raise HandshakeError(f"handshake message of {size} bytes exceeds {MAX_MESSAGE_LEN}")
        ss = self._ss
        if self._msg == 0:  # -> e   (responder reads)
            if size < DHLEN:
                raise HandshakeError(f"handshake message 1 too short: {size} < {DHLEN} bytes")
            re = message[:DHLEN]
            self._re = re
            ss.mix_hash(re)
            return ss.decrypt_and_hash(message[DHLEN:])
        if self._msg == 1:  # <- e, ee, s, es   (initiator reads)
            minimum = DHLEN + DHLEN + TAGLEN + TAGLEN
            if size < minimum:
                raise HandshakeError(f"handshake message 2 too short: {size} < {minimum} bytes")
            re = message[:DHLEN]
            self._re = re
            ss.mix_hash(re)
            ss.mix_key(_dh(self._e, re))
            rs = ss.decrypt_and_hash(message[DHLEN : 2 * DHLEN + TAGLEN])
            ss.mix_key(_dh(self._e, rs))
            payload = ss.decrypt_and_hash(message[2 * DHLEN + TAGLEN :])
            self._rs = rs
            return payload
        # -> s, se   (responder reads)
        minimum = DHLEN + TAGLEN + TAGLEN
        if size < minimum:
            raise HandshakeError(f"handshake message 3 too short: {size} < {minimum} bytes")
        assert self._re is not None
        rs = ss.decrypt_and_hash(message[: DHLEN + TAGLEN])
        ss.mix_key(_dh(self._e, rs))
        payload = ss.decrypt_and_hash(message[DHLEN + TAGLEN :])
        self._rs = rs
        return payload

    def _advance(self) -> None:
        self._msg += 1
        if self._msg == 3:
            c1, c2 = self._ss.split()
            h = self._ss.get_handshake_hash()
            self._split = SplitResult(c1, c2, h) if self.initiator else SplitResult(c2, c1, h)
            self._phase = _DONE
            self._e = b""  # the ephemeral private key is no longer needed: drop our reference
        else:
            self._phase = _READ if self._phase == _WRITE else _WRITE

    def split(self) -> SplitResult:
        """``(send, recv, handshake_hash)`` for this side; only once the handshake is complete.

        ``send`` is the spec's ``c1`` for the initiator and ``c2`` for the responder.
        """
        if self._split is None:
            raise HandshakeError(f"split() before the handshake completed (state {self._phase!r})")
        return self._split
