"""TCP transport on trio: ``"host:port"`` addresses, length-prefixed frames, TCP_NODELAY.

Frames are decoded with :class:`~trimicro.mailbox.framing.FrameDecoder` from 64 KiB reads; a
batch given to :meth:`TcpConnection.send_frames` is joined into one buffer and written with a
single ``send_all``, so a burst of small messages costs one system call, and Nagle's algorithm is
off so a lone message is not held back.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import trio

from trimicro.mailbox.framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, ProtocolError, encode_frames

from . import ConnectionClosed, TransportError

__all__ = ["RECEIVE_CHUNK", "TcpConnection", "TcpListener", "TcpTransport", "parse_address"]

#: ``write_now`` writes to, and reads read from, the socket's file descriptor: POSIX only (on
#: Windows a socket is not a file descriptor: sends go through the writer task, reads through
#: trio's socket stream).
_FD_WRITES = os.name == "posix"

#: Bytes asked of the socket per read.
RECEIVE_CHUNK = 64 * 1024

#: A reader that finds data at every read yields to other tasks at least this often.
YIELD_EVERY = 16

_read = os.read  # (a module global, so that tests can stand in for the socket)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``) into host and port."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"TCP address must be 'host:port', not {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TcpConnection:
    """A frame connection over one :class:`trio.SocketStream`."""

    def __init__(self, stream: trio.SocketStream, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self._stream = stream
        self._decoder = FrameDecoder(max_frame_size)
        self._send_lock = trio.Lock()
        self._closed = False
        self._eof = False
        #: Bytes :meth:`write_now` took but the socket did not; the next send writes them first.
        self._backlog = b""
        self._fd = stream.socket.fileno()
        #: Reads since the last yield to the scheduler (see ``_receive_some``).
        self._reads = 0
        #: The last read took less than it asked for: the socket had no more (a request and
        #: answer exchange usually), so the next read waits for data before trying.
        self._drained = False
        try:
            peer = stream.socket.getpeername()
        except OSError:
            peer = None
        self._peer: tuple[str, int] | None = (peer[0], peer[1]) if peer else None

    @property
    def peer(self) -> tuple[str, int] | None:
        """The remote ``(host, port)``."""
        return self._peer

    @property
    def max_frame_size(self) -> int:
        return self._decoder.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._decoder.max_frame_size = value

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if self._closed:
            raise ConnectionClosed("connection is closed")
        data = encode_frames(frames)
        async with self._send_lock:
            if self._backlog:
                data, self._backlog = self._backlog + data, b""
            try:
                await self._stream.send_all(data)
            except trio.ClosedResourceError as exc:
                raise ConnectionClosed("connection is closed") from exc
            except trio.BrokenResourceError as exc:
                raise TransportError(f"send failed: {exc.__cause__ or exc}") from exc

    def can_write_now(self) -> bool:
        """Whether :meth:`write_now` would take frames: open, no send running, no backlog."""
        return not (self._closed or self._backlog or self._send_lock.locked()) and _FD_WRITES

    def write_now(self, frames: Sequence[bytes]) -> None:
        """Write ``frames`` without waiting (call only when :meth:`can_write_now`).

        One non-blocking ``write`` to the socket, no scheduler round trip: for a task that is
        about to wait anyway (a link's reader that just queued replies). Whatever the socket
        does not take now (a full buffer, or an error the next send will report) is kept, in
        order, as :attr:`backlog` for the next :meth:`send_frames`, which the caller must run.
        """
        data = encode_frames(frames)
        try:
            sent = os.write(self._fd, data)
        except OSError:  # BlockingIOError included: nothing went out
            sent = 0
        if sent < len(data):
            self._backlog = data[sent:]

    @property
    def backlog(self) -> bool:
        """Bytes taken by :meth:`write_now` still wait for a :meth:`send_frames` (even empty)."""
        return bool(self._backlog)

    async def receive_frame(self) -> bytes | None:
        decoder = self._decoder
        try:
            while True:
                frame = decoder.next_frame()
                if frame is not None:
                    return frame
                if self._eof:
                    return None
                try:
                    data = await self._receive_some()
                except trio.ClosedResourceError as exc:
                    raise ConnectionClosed("connection is closed") from exc
                except (trio.BrokenResourceError, OSError) as exc:
                    raise TransportError(f"receive failed: {exc.__cause__ or exc}") from exc
                if not data:
                    self._eof = True
                    decoder.eof()  # raises TruncatedFrame if the stream ended inside a frame
                else:
                    decoder.feed(data)
        except ProtocolError:
            await self.aclose()
            raise

    async def _receive_some(self) -> bytes:
        """Up to RECEIVE_CHUNK bytes (``b""`` at the end of the stream).

        Reads the socket's file descriptor first and waits for it only when it has nothing
        (or when the last read emptied it: saves a read that would find nothing). trio's
        ``receive_some`` yields to the scheduler before and after a read that need not wait,
        two of the five scheduler passes a remote call cost; here such a read only checks for
        cancellation (before it takes anything: a cancelled read loses no data), and a reader
        that always finds data still yields every YIELD_EVERY reads.
        """
        if not _FD_WRITES:
            return await self._stream.receive_some(RECEIVE_CHUNK)
        if self._closed:
            raise trio.ClosedResourceError("connection is closed")
        if self._drained:  # the last read emptied the socket: a read now would find nothing
            self._drained = False
            await trio.lowlevel.wait_readable(self._fd)  # woken with an error if closed
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("connection is closed")
            try:
                data = _read(self._fd, RECEIVE_CHUNK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._fd)
                continue
            self._drained = len(data) < RECEIVE_CHUNK
            self._reads += 1
            if self._reads >= YIELD_EVERY:
                self._reads = 0
                await trio.lowlevel.cancel_shielded_checkpoint()  # the data is ours: no Cancelled
            return data

    async def aclose(self) -> None:
        self._closed = True
        await self._stream.aclose()


class TcpListener:
    """Accepts TCP connections on one bound socket."""

    def __init__(self, listener: trio.SocketListener, *, max_frame_size: int) -> None:
        self._listener = listener
        self._max_frame_size = max_frame_size
        host, port = listener.socket.getsockname()[:2]
        self._address = _format_address(host, port)

    @property
    def address(self) -> str:
        return self._address

    async def accept(self) -> TcpConnection:
        stream = await self._listener.accept()
        return TcpConnection(stream, max_frame_size=self._max_frame_size)

    async def aclose(self) -> None:
        await self._listener.aclose()


class TcpTransport:
    """Listens on and dials ``"host:port"``; ``max_frame_size`` applies to every connection."""

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size

    async def listen(self, address: str) -> TcpListener:
        host, port = parse_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: {exc}") from exc
        for extra in listeners[1:]:  # a literal host binds exactly one socket
            await extra.aclose()
        return TcpListener(listeners[0], max_frame_size=self.max_frame_size)

    async def dial(self, address: str, timeout: float = 10.0) -> TcpConnection:
        host, port = parse_address(address)
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(host, port)
        except trio.TooSlowError as exc:
            raise TransportError(f"dial {address} timed out after {timeout}s") from exc
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc}") from exc
        return TcpConnection(stream, max_frame_size=self.max_frame_size)
