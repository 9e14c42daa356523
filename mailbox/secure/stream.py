"""The secure channel over any :class:`~trimicro.mailbox.transport.Connection` (protocol §6).

:func:`secure_client` (the dialing side, Noise initiator) and :func:`secure_server` (the
accepting side, responder) run :class:`~trimicro.mailbox.secure.channel.SecureHandshake`, one
handshake message per frame, under a deadline, and return a :class:`SecureConnection`.

After the handshake every outer frame is one Noise transport message. A batch given to
:meth:`SecureConnection.send_frames` is framed as plaintext (section 2), sealed as chunks of at
most ``MAX_PLAINTEXT`` bytes and sent in one coalesced write; the receiver opens each outer frame
and feeds the plaintext to an inner :class:`~trimicro.mailbox.framing.FrameDecoder`, so a frame
may span several transport messages. Outer frames are capped at 65,535 bytes on the wrapped
connection before anything is buffered. Any failure to authenticate closes the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from nacl.signing import SigningKey

from trimicro.mailbox.errors import RequestTimeout, Unauthorized
from trimicro.mailbox.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, ProtocolError, encode_frames
from trimicro.mailbox.secure.channel import (
    DEFAULT_PROLOGUE,
    SecureChannelError,
    SecureHandshake,
    SecureSession,
    VerifyPeer,
)
from trimicro.mailbox.secure.noise import MAX_MESSAGE_LEN, HandshakeError
from trimicro.mailbox.transport import Connection

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "HandshakeFailed",
    "HandshakeTimeout",
    "SecureConnection",
    "SecureStreamError",
    "secure_client",
    "secure_server",
]

DEFAULT_HANDSHAKE_TIMEOUT = 5.0


class HandshakeFailed(Unauthorized):
    """The secure handshake failed: bad message, refused identity, or the peer left."""


class HandshakeTimeout(RequestTimeout):
    """The peer did not finish the handshake before the deadline; the connection was dropped."""


class SecureStreamError(ProtocolError):
    """A transport message failed to authenticate (tampered, replayed, reordered)."""


class SecureConnection:
    """A :class:`~trimicro.mailbox.transport.Connection` whose frames travel encrypted."""

    def __init__(
        self, inner: Connection, session: SecureSession, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        self.inner = inner
        self.session = session
        self._decoder = FrameDecoder(max_frame_size)
        self._send_lock = trio.Lock()
        self._eof = False

    @property
    def peer(self) -> object:
        return self.inner.peer

    @property
    def peer_id_key(self) -> bytes:
        """The peer's authenticated Ed25519 public key."""
        return self.session.peer_id_key

    @property
    def peer_info(self) -> Any:
        """What ``verify_peer`` returned for the peer."""
        return self.session.peer_info

    @property
    def max_frame_size(self) -> int:
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._decoder.max_frame_size = value

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        plaintext = encode_frames(frames)
        # Seal and write under one lock: nonces must reach the wire in the order they were used.
        # An uncontended lock is taken without a schedule point (the usual case: one writer task).
        lock = self._send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            # Nothing to seal (a flush of what write_now left behind): no empty message.
            await self.inner.send_frames(self.session.seal_chunks(plaintext) if plaintext else [])
        finally:
            lock.release()

    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` would take frames (the wrapped connection supports it and
        no send is running on either layer)."""
        can = getattr(self.inner, "can_write_now", None)
        return can is not None and not self._send_lock.locked() and bool(can())

    def write_now(self, frames: Sequence[bytes]) -> None:
        """Seal and write ``frames`` without waiting (call only when :meth:`can_write_now`); see
        :meth:`TcpConnection.write_now <trimicro.mailbox.transport.tcp.TcpConnection.write_now>`."""
        self.inner.write_now(self.session.seal_chunks(encode_frames(frames)))  # type: ignore[attr-defined]

    @property
    def backlog(self) -> bool:
        return bool(getattr(self.inner, "backlog", False))

    def next_frame_nowait(self) -> bytes | None:
        """The next complete frame if one is decrypted and buffered, else ``None`` (then
        :meth:`receive_frame` reads): a burst's frames without a coroutine each."""
        return self._decoder.next_frame()

    async def receive_frame(self) -> bytes | None:
        decoder = self._decoder
        try:
            while True:
                frame = decoder.next_frame()
                if frame is not None:
                    return frame
                if self._eof:
                    return None
                message = await self.inner.receive_frame()
                if message is None:
                    self._eof = True
                    decoder.eof()  # TruncatedFrame if the peer stopped inside a frame
                    continue
                try:
                    plaintext = self.session.open(message)
                except SecureChannelError as exc:
                    raise SecureStreamError(str(exc)) from exc
                decoder.feed(plaintext)
        except ProtocolError:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _handshake(
    conn: Connection,
    hs: SecureHandshake,
    handshake_timeout: float,
    max_frame_size: int,
) -> SecureConnection:
    conn.max_frame_size = min(conn.max_frame_size, MAX_MESSAGE_LEN)
    try:
        with trio.fail_after(handshake_timeout):
            if hs.is_initiator:
                await conn.send_frames([hs.start()])
            while not hs.done:
                message = await conn.receive_frame()
                if message is None:
                    raise HandshakeFailed("peer closed the connection during the handshake")
                out, _ = hs.receive(message)
                if out:
                    await conn.send_frames([out])
    except trio.TooSlowError as exc:
        await conn.aclose()
        raise HandshakeTimeout(f"secure handshake not finished within {handshake_timeout}s") from exc
    except HandshakeError as exc:
        await conn.aclose()
        raise HandshakeFailed(str(exc)) from exc
    except HandshakeFailed:
        await conn.aclose()
        raise
    except ProtocolError as exc:  # e.g. an oversized handshake frame (connection already closed)
        await conn.aclose()
        raise HandshakeFailed(f"handshake framing error: {exc.detail}") from exc
    except BaseException:
        with trio.CancelScope(shield=True):
            await conn.aclose()
        raise
    return SecureConnection(conn, hs.result(), max_frame_size=max_frame_size)


async def secure_client(
    conn: Connection,
    signing_key: SigningKey,
    cert: bytes,
    verify_peer: VerifyPeer,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    prologue: bytes = DEFAULT_PROLOGUE,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> SecureConnection:
    """Run the handshake as initiator on a dialed connection; close it and raise on failure."""
    hs = SecureHandshake.initiator(signing_key, cert, verify_peer, prologue=prologue)
    return await _handshake(conn, hs, handshake_timeout, max_frame_size)


async def secure_server(
    conn: Connection,
    signing_key: SigningKey,
    cert: bytes,
    verify_peer: VerifyPeer,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    *,
    prologue: bytes = DEFAULT_PROLOGUE,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> SecureConnection:
    """Run the handshake as responder on an accepted connection; close it and raise on failure."""
    hs = SecureHandshake.responder(signing_key, cert, verify_peer, prologue=prologue)
    return await _handshake(conn, hs, handshake_timeout, max_frame_size)
