"""The flusher: a trio instrument that sends, once per scheduler batch, what tasks queued on
links during it (see :class:`_Flusher`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sized
from typing import Protocol

import trio


class Flushable(Protocol):
    """What the flusher needs of a link (:class:`~.outbox.Outbox` is one): its queue, its
    waiters, and the call that writes what is queued."""

    _dirty: bool

    @property
    def out(self) -> Sized: ...
    @property
    def closed(self) -> bool: ...
    @property
    def _room(self) -> trio.lowlevel.ParkingLot: ...
    @property
    def _flushed(self) -> trio.Event | None: ...
    @property
    def conn(self) -> _Backlogged: ...

    def flush_now(self) -> None: ...


class _Backlogged(Protocol):
    @property
    def backlog(self) -> bool: ...


def _nothing() -> None:
    pass


#: Waits for I/O with nothing to flush after which the flusher takes itself out of the run: an
#: installed instrument costs every scheduler pass (about 4,100 instructions, an eighth of a
#: bare pass), and a lone caller's requests, a server's answers and the serving side's polling
#: never need it; a spell of queued sends installs it again (once per spell, not per send).
#: Installing costs about 150,000 instructions (trio inspects the instrument's methods), some
#: 36 passes' worth: leaving after about that many idle ones bounds what a pattern of spells
#: just long enough can cost to twice what staying installed would (the ski-rental rule).
IDLE_WAITS = 32


class _Flusher(trio.abc.Instrument):
    """Sends, just before trio waits for I/O, what tasks queued on links during the scheduler
    batch that is ending: every frame of the batch in one write per link, with no writer task
    to wake (that task's turn cost a scheduler pass on each request's path). A link whose
    socket will not take it all, or whose writer is busy, leaves the rest to its writer task.

    A trio instrument (one per node, installed while links need it: see IDLE_WAITS): its
    ``before_io_wait`` runs once per scheduler batch, outside every task.
    """

    def __init__(self) -> None:
        self.links: list[Flushable] = []
        self.installed = False
        #: Waits for I/O in a row with nothing to flush (see IDLE_WAITS).
        self._idle = 0
        self._token: trio.lowlevel.TrioToken | None = None

    def add(self, link: Flushable) -> None:
        if not self.installed:
            trio.lowlevel.add_instrument(self)
            self._token = trio.lowlevel.current_trio_token()
            self.installed = True
        self.links.append(link)

    def before_io_wait(self, timeout: float) -> None:
        links = self.links
        if not links:
            self._idle += 1
            if self._idle >= IDLE_WAITS:  # out of the run until a link needs it again
                self._idle = 0
                self.installed = False
                with contextlib.suppress(KeyError):
                    trio.lowlevel.remove_instrument(self)
            return
        self._idle = 0
        self.links = []
        woke = False
        try:
            for link in links:
                # Flushing wakes senders waiting for room and flush() callers; what the socket
                # does not take wakes the writer.
                woke = woke or bool(link._room) or link._flushed is not None
                link.flush_now()
                woke = woke or bool(link.out) or link.conn.backlog or link.closed
        finally:
            for link in links:
                link._dirty = False
        # trio chose how long to wait before calling this hook: a task woken here must not
        # wait for the next I/O event or timer, so end the wait at once. (Known from the
        # links rather than from trio's run statistics, which cost more than the flush.)
        if woke and timeout > 0 and self._token is not None:
            self._token.run_sync_soon(_nothing)

    def uninstall(self) -> None:
        if self.installed:
            self.installed = False
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(self)
            for link in self.links:  # (none are left unless the node stops mid-batch)
                link.flush_now()
            self.links = []
