"""In-process transport: several nodes in one trio run, no sockets.

Addresses are arbitrary strings, registered per :class:`InprocTransport` instance (nodes that
should reach each other share one instance). A connection is a pair of bounded trio memory
channels carrying whole frame payloads, so a slow reader applies back-pressure exactly as a
full socket buffer would.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import trio

from trimicro.mailbox.framing import DEFAULT_MAX_FRAME_SIZE, FrameTooLarge

from . import ConnectionClosed, TransportError

__all__ = ["InprocConnection", "InprocListener", "InprocTransport"]


class InprocConnection:
    """One end of an in-process connection."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes],
        receive: trio.MemoryReceiveChannel[bytes],
        peer: str,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._send = send
        self._receive = receive
        self._peer = peer
        self.max_frame_size = max_frame_size
        self._closed = False

    @property
    def peer(self) -> str:
        """The address this connection leads to (or the dialer's label on accepted ones)."""
        return self._peer

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if self._closed:
            raise ConnectionClosed("connection is closed")
        try:
            for frame in frames:
                await self._send.send(bytes(frame))
        except trio.ClosedResourceError as exc:
            raise ConnectionClosed("connection is closed") from exc
        except trio.BrokenResourceError as exc:
            raise TransportError("peer closed the connection") from exc

    async def receive_frame(self) -> bytes | None:
        try:
            frame = await self._receive.receive()
        except trio.EndOfChannel:
            return None
        except trio.ClosedResourceError as exc:
            raise ConnectionClosed("connection is closed") from exc
        if len(frame) > self.max_frame_size:
            await self.aclose()
            raise FrameTooLarge(
                f"frame of {len(frame)} bytes exceeds the limit of {self.max_frame_size} bytes"
            )
        return frame

    async def aclose(self) -> None:
        self._closed = True
        await self._send.aclose()
        await self._receive.aclose()


class InprocListener:
    """Accepts in-process connections for one registered address."""

    def __init__(self, transport: InprocTransport, address: str, backlog: int) -> None:
        self._transport = transport
        self._address = address
        self._incoming_send, self._incoming = trio.open_memory_channel[InprocConnection](backlog)

    @property
    def address(self) -> str:
        return self._address

    async def accept(self) -> InprocConnection:
        try:
            return await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise ConnectionClosed(f"listener {self._address} is closed") from exc

    async def aclose(self) -> None:
        self._transport._unregister(self._address, self)
        await self._incoming_send.aclose()
        # Refuse connections that were queued but never accepted.
        while True:
            try:
                conn = self._incoming.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            await conn.aclose()
        await self._incoming.aclose()


class InprocTransport:
    """A registry of in-process listeners; ``dial`` pairs channels with the listener's accept.

    ``buffer_frames`` bounds each direction's channel; ``backlog`` bounds connections waiting
    for ``accept``. ``listen("")`` picks a fresh unique address.
    """

    def __init__(
        self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, buffer_frames: int = 64, backlog: int = 16
    ) -> None:
        self.max_frame_size = max_frame_size
        self.buffer_frames = buffer_frames
        self.backlog = backlog
        self._listeners: dict[str, InprocListener] = {}
        self._counter = itertools.count(1)

    async def listen(self, address: str) -> InprocListener:
        await trio.lowlevel.checkpoint()
        if not address:
            address = f"inproc-{next(self._counter)}"
        if address in self._listeners:
            raise TransportError(f"address {address!r} is already in use")
        listener = InprocListener(self, address, self.backlog)
        self._listeners[address] = listener
        return listener

    async def dial(self, address: str, timeout: float = 10.0) -> InprocConnection:
        listener = self._listeners.get(address)
        if listener is None:
            await trio.lowlevel.checkpoint()
            raise TransportError(f"connection refused: nothing listens on {address!r}")
        a_send, b_receive = trio.open_memory_channel[bytes](self.buffer_frames)
        b_send, a_receive = trio.open_memory_channel[bytes](self.buffer_frames)
        client = InprocConnection(a_send, a_receive, address, max_frame_size=self.max_frame_size)
        label = f"{address}#{next(self._counter)}"
        server = InprocConnection(b_send, b_receive, label, max_frame_size=self.max_frame_size)
        try:
            with trio.fail_after(timeout):
                await listener._incoming_send.send(server)
        except (trio.TooSlowError, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            await client.aclose()
            await server.aclose()
            raise TransportError(f"connection refused by {address!r}") from exc
        return client

    def _unregister(self, address: str, listener: InprocListener) -> None:
        if self._listeners.get(address) is listener:
            del self._listeners[address]
