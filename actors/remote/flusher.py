"""The flusher: a trio instrument that sends, once per scheduler batch, what tasks queued on
links during it (see :class:`_Flusher`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from .link import Link


def _nothing() -> None:
    pass


class _Flusher(trio.abc.Instrument):
    """Sends, just before trio waits for I/O, what tasks queued on links during the scheduler
    batch that is ending: every frame of the batch in one write per link, with no writer task
    to wake (that task's turn cost a scheduler pass on each request's path). A link whose
    socket will not take it all, or whose writer is busy, leaves the rest to its writer task.

    A trio instrument (one per node, installed by the first link that needs it): its
    ``before_io_wait`` runs once per scheduler batch, outside every task.
    """

    def __init__(self) -> None:
        self.links: list[Link] = []
        self.installed = False
        self._token: trio.lowlevel.TrioToken | None = None

    def add(self, link: Link) -> None:
        if not self.installed:
            trio.lowlevel.add_instrument(self)
            self._token = trio.lowlevel.current_trio_token()
            self.installed = True
        self.links.append(link)

    def before_io_wait(self, timeout: float) -> None:
        links = self.links
        if not links:
            return
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
