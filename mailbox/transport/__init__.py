"""Transport interfaces: how framed bytes move between nodes, whatever carries them.

A :class:`Transport` listens on and dials string addresses and yields :class:`Connection`
objects that move whole frame payloads (section 2 of ``docs/protocol.md``). Implementations:
:class:`TcpTransport` (``"host:port"``, in :mod:`.tcp`), :class:`InprocTransport` (any string,
one process, in :mod:`.inproc`), both re-exported here, and
:class:`~trimicro.mailbox.secure.stream.SecureConnection`, which wraps any connection in the
Noise secure channel.

Errors: a peer that breaks the framing raises :class:`~trimicro.mailbox.framing.ProtocolError`
(``TruncatedFrame`` for EOF inside a frame, ``FrameTooLarge`` for an oversized header) and the
connection is closed; an I/O failure raises :class:`TransportError`; using a connection after
:meth:`Connection.aclose` raises :class:`ConnectionClosed`. All are
:class:`~trimicro.mailbox.errors.MicroError` subclasses.

**The interface.** ``Transport.listen(address)`` binds and returns a :class:`Listener`
(``address`` resolved, ``accept()`` the next connection, ``aclose()`` idempotent);
``Transport.dial(address, timeout=...)`` returns a :class:`Connection` or raises
:class:`TransportError`. A ``Connection`` is ordered and reliable: ``send_frames`` sends every
payload in order (calls from several tasks are serialised), ``receive_frame`` returns the next
payload or ``None`` at a clean end (one reader at a time), ``aclose`` is idempotent, and a
payload over ``max_frame_size`` is refused from its header, before it is buffered. A transport
plugin (group ``trimicro.transport``) keeps exactly these promises; the links above it add
nothing that would hide a reordering or a lost frame. :func:`serve` runs a handler per
accepted connection, each in its own task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import trio

from trimicro.mailbox.errors import MicroError, ServiceUnavailable

__all__ = [
    "Connection",
    "ConnectionClosed",
    "ConnectionHandler",
    "InprocTransport",
    "Listener",
    "TcpTransport",
    "Transport",
    "TransportError",
    "serve",
]


class TransportError(ServiceUnavailable):
    """The connection could not be opened or broke (refused, reset, unreachable)."""


class ConnectionClosed(TransportError):
    """The connection was already closed locally."""


@runtime_checkable
class Connection(Protocol):
    """A bidirectional, ordered stream of frame payloads.

    ``send_frames`` may be called from several tasks (calls are serialised); ``receive_frame``
    from one task at a time.
    """

    #: Largest payload :meth:`receive_frame` accepts; larger ones raise ``FrameTooLarge``
    #: and close the connection (checked from the header, before the body is buffered).
    max_frame_size: int

    @property
    def peer(self) -> object:
        """Who is on the other end (``(host, port)`` for TCP, an address string in-process)."""
        ...

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Send every payload, in order, coalesced into as few writes as possible (one on TCP)."""
        ...

    async def receive_frame(self) -> bytes | None:
        """The next payload, or ``None`` once the peer closed cleanly (between frames)."""
        ...

    async def aclose(self) -> None:
        """Close the connection; idempotent. The peer sees a clean end of stream."""
        ...


@runtime_checkable
class Listener(Protocol):
    """Accepts inbound connections on one bound address."""

    @property
    def address(self) -> str:
        """The bound address, dialable as is (a TCP port 0 is resolved to the real port)."""
        ...

    async def accept(self) -> Connection:
        """Wait for the next inbound connection."""
        ...

    async def aclose(self) -> None:
        """Stop listening; idempotent."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Opens listeners and outbound connections for one kind of address."""

    async def listen(self, address: str) -> Listener:
        """Bind ``address`` and return a listener for it."""
        ...

    async def dial(self, address: str, timeout: float = 10.0) -> Connection:
        """Connect to ``address``; raises :class:`TransportError` on failure or after ``timeout``."""
        ...


ConnectionHandler = Callable[[Connection], Awaitable[None]]


async def serve(
    listener: Listener,
    handler: ConnectionHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept forever, running ``handler(conn)`` for each connection in its own task.

    Each connection is closed when its handler returns. A :class:`MicroError` escaping a handler
    (a protocol violation, a broken connection, a failed handshake) ends only that connection;
    any other exception propagates and stops the server. Use with ``nursery.start(serve, ...)``.
    """

    async def run_one(conn: Connection) -> None:
        try:
            await handler(conn)
        except MicroError:
            pass
        finally:
            await conn.aclose()

    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            conn = await listener.accept()
            nursery.start_soon(run_one, conn)


# The implementations, beside the interface (they import the errors above).
from .inproc import InprocTransport  # noqa: E402
from .tcp import TcpTransport  # noqa: E402
