"""Streams: bidirectional, flow-controlled sessions between a caller and an actor's stream handler.

``async with open_stream(ref, "Chat.talk", request) as stream:`` opens a session with the
actor's handler ``async def talk(self, stream: Stream) -> None``, which runs in a task of its
own beside the actor's mailbox (as Go Micro runs each stream in its own goroutine). Both ends
have the same :class:`Stream` API: ``send``, ``receive`` (or ``async for``), ``close_send`` and
``aclose``.

Flow control is by credit (docs/protocol.md §4.3): a receiver grants the sender ``window`` items
at first and more as its application consumes them, so a slow reader slows the writer and at
most ``window`` items wait in any buffer. The ends are linked: one failing, going away, or
losing its node ends the other with an error, while end-of-stream is explicit (``close_send``,
seen by the other side as the end of ``async for``).

Each end talks to the other through four operations (:class:`StreamOps`): in one process they
are direct calls (:class:`LocalOps`); across nodes they are envelopes on the link
(``trimicro.actors.remote``). ``open_stream`` itself lives in :mod:`.api`, beside ``ask`` and
``tell``, whose helpers (binding, sender, metadata, middleware) it shares.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import trio
from trio.lowlevel import ParkingLot

from trimicro.mailbox.errors import BadRequest, MicroError, ServiceUnavailable
from trimicro.mailbox.refs import ActorRef

__all__ = ["DEFAULT_WINDOW", "LocalOps", "Stream", "StreamClosed", "StreamOps"]

#: Items a receiver accepts before it has consumed any (the protocol's default initial credit).
DEFAULT_WINDOW = 256


class StreamClosed(ServiceUnavailable):
    """The stream ended by failure or cancellation on the other side (or its node was lost)."""


class StreamOps(Protocol):
    """How one end reaches the other: items, credit, the end of its direction, abort."""

    async def data(self, item: Any) -> None: ...

    def credit(self, n: int) -> None: ...

    def close(self, error: MicroError | None) -> None: ...

    def cancel(self) -> None: ...


class Stream:
    """One end of a stream. ``request`` is what the opener sent with the open (may be ``None``)."""

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        *,
        request: Any = None,
        headers: dict[str, str] | None = None,
        peer: ActorRef | None = None,
        on_done: Callable[[Stream], object] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"a stream window is at least 1, got {window}")
        self.request = request
        self.headers = headers or {}
        #: The other end's actor when known (the handler's actor, or the opener's).
        self.peer = peer
        self.ops: StreamOps | None = None
        self._window = window
        self._items: deque[Any] = deque()
        self._consumed = 0
        self._send_credit = 0
        self._send_closed = False
        self._recv_closed = False
        self._error: MicroError | None = None
        self._send_error: MicroError | None = None
        self._recv_lot = ParkingLot()
        self._send_lot = ParkingLot()
        self.on_done = on_done
        self._done = False
        self._budget = 64
        self._opened: trio.Event | None = None
        #: The cancel scope of the stream handler serving this end, cancelled when the stream
        #: fails, so a handler waiting on something else does not outlive its stream.
        self.handler_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<Stream peer={self.peer} credit={self._send_credit} buffered={len(self._items)}>"

    @property
    def window(self) -> int:
        return self._window

    @property
    def finished(self) -> bool:
        return self._done

    # ---- application side --------------------------------------------------------------------

    async def send(self, item: Any) -> None:
        """Send one item, waiting while the other side has granted no credit."""
        while True:
            error = self._error or self._send_error
            if error is not None:
                await trio.lowlevel.checkpoint()
                raise error
            if self._send_closed:
                await trio.lowlevel.checkpoint()
                raise BadRequest("send() after close_send()")
            if self._send_credit > 0:
                break
            await self._send_lot.park()
        self._send_credit -= 1
        self._budget -= 1
        if self._budget <= 0:  # sending on credit never blocks: still let others run now and then
            self._budget = 64
            await trio.lowlevel.cancel_shielded_checkpoint()
        await trio.lowlevel.checkpoint_if_cancelled()
        assert self.ops is not None
        await self.ops.data(item)

    async def wait_credit(self) -> None:
        """Wait until there is credit to send, or the stream is over (then :meth:`take_credit`
        says which), without taking it: for a sender that queues synchronously right after."""
        while self._send_credit <= 0 and not (self._done or self._send_closed or self._error):
            await self._send_lot.park()

    def take_credit(self) -> bool:
        """Use one credit without waiting, for a sender that may not wait (``try_tell`` on a
        held actor); ``False`` when there is none, or the stream is over."""
        if self._send_credit <= 0 or self._done:
            return False
        self._send_credit -= 1
        return True

    async def receive(self) -> Any:
        """The next item; ``trio.EndOfChannel`` after the other side's ``close_send``."""
        items = self._items
        while not items:
            if self._error is not None:
                raise self._error
            if self._recv_closed:
                raise trio.EndOfChannel
            await self._recv_lot.park()
        item = items.popleft()
        self._consumed += 1
        if self._consumed * 2 >= self._window and not self._recv_closed and self._error is None:
            assert self.ops is not None
            self.ops.credit(self._consumed)
            self._consumed = 0
        return item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                item = await self.receive()
            except trio.EndOfChannel:
                return
            yield item

    def close_send(self) -> None:
        """End this side's direction; the other side's ``async for`` ends after the last item."""
        if self._send_closed or self._error is not None:
            return
        self._send_closed = True
        assert self.ops is not None
        self.ops.close(None)
        self._maybe_done()

    def fail(self, error: MicroError) -> None:
        """End the whole stream with ``error``, which the other side raises."""
        if self._done:
            return
        if not self._send_closed:
            self._send_closed = True
            assert self.ops is not None
            self.ops.close(error)
        self._set_error(error)

    async def aclose(self) -> None:
        """Leave the stream. If it is not over, the other side sees it cancelled."""
        if not self._done:
            if self._send_closed and self._recv_closed:
                self._finish()
            else:
                self._send_closed = True
                assert self.ops is not None
                self.ops.cancel()
                self._set_error(StreamClosed("stream closed locally"))
        await trio.lowlevel.checkpoint()

    # ---- the other end's events --------------------------------------------------------------

    def on_data(self, item: Any) -> None:
        if self._done or self._recv_closed:
            return
        if len(self._items) >= self._window:
            # More than was granted: a broken peer; end the stream rather than buffer without bound.
            self.fail(BadRequest("stream peer sent more items than its credit"))
            return
        self._items.append(item)
        if self._recv_lot:  # (cheaper than unpark() with nobody to wake, once per item)
            self._recv_lot.unpark()

    def on_credit(self, n: int) -> None:
        if n < 1 or self._done:
            return
        self._send_credit += n
        self._send_lot.unpark_all()
        if self._opened is not None:
            self._opened.set()

    async def wait_accepted(self) -> None:
        """Wait for the handler's first credit (it accepted) or its refusal (raised here)."""
        if self._send_credit == 0 and self._error is None:
            if self._opened is None:
                self._opened = trio.Event()
            await self._opened.wait()
        if self._error is not None:
            raise self._error

    def on_close(self, error: MicroError | None) -> None:
        if self._done:
            return
        if error is not None:
            self._send_closed = True
            self._set_error(error)
            return
        self._recv_closed = True
        self._recv_lot.unpark_all()
        self._maybe_done()

    def on_cancel(self) -> None:
        if self._done:
            return
        if self._recv_closed:
            # The other side finished cleanly and wants no more items: only sending ends.
            self._send_error = StreamClosed("the other side has finished the stream")
            self._send_closed = True
            if self.handler_scope is not None and not self._send_lot:
                # A handler waiting on something else (a feed waiting for news) would learn only
                # at its next send, maybe never: cancel it, as when the stream fails.
                self.handler_scope.cancel()
            self._send_lot.unpark_all()
            self._maybe_done()
            return
        self._send_closed = True
        self._set_error(StreamClosed("stream cancelled by the other side"))

    # ---- internals ---------------------------------------------------------------------------

    def _set_error(self, error: MicroError) -> None:
        if self._error is None:
            self._error = error
        if self.handler_scope is not None and not (self._recv_lot or self._send_lot):
            # The handler is not waiting on this stream (which would wake it with the error):
            # cancel it, so that it does not outlive its stream.
            self.handler_scope.cancel()
        if self._opened is not None:
            self._opened.set()
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()
        self._finish()

    def _maybe_done(self) -> None:
        if self._send_closed and self._recv_closed:
            self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.on_done is not None:
            self.on_done(self)


class LocalOps:
    """Stream operations between two ends in one process: direct calls on the other end."""

    __slots__ = ("other",)

    def __init__(self, other: Stream) -> None:
        self.other = other

    async def data(self, item: Any) -> None:
        self.other.on_data(item)

    def credit(self, n: int) -> None:
        self.other.on_credit(n)

    def close(self, error: MicroError | None) -> None:
        self.other.on_close(error)

    def cancel(self) -> None:
        self.other.on_cancel()


def local_pair(
    window: int, peer_window: int, request: Any, headers: dict[str, str] | None
) -> tuple[Stream, Stream]:
    """Two linked ends in one process: (the opener's, the handler's)."""
    opener = Stream(window, request=request, headers=headers)
    handler = Stream(peer_window, request=request, headers=headers)
    opener.ops = LocalOps(handler)
    handler.ops = LocalOps(opener)
    return opener, handler
