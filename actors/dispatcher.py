"""Worker tasks that run actors with mail; a pool so that an idle actor owns no task.

Activating an actor hands it to a parked worker (one ``reschedule``, the cost of a channel
wake-up) or, if none is parked, starts a new worker. A worker that finishes a batch parks
itself, up to ``max_idle`` parked workers; beyond that it exits. A handler that awaits (say,
an ``ask`` to another actor) keeps its worker, so the pool grows instead of deadlocking.
"""

from __future__ import annotations

from typing import Any, Protocol

import trio
from outcome import Value
from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

from trimicro.mailbox.logs import get_logger

log = get_logger(__package__)

__all__ = ["Dispatcher", "Drainable"]


class Drainable(Protocol):
    """What a worker runs: an actor's cell (typed by this, not by the cell, which builds on
    the dispatcher's node and would close an import cycle)."""

    #: Workers running this actor now (the dispatcher counts the one it starts).
    active: int
    path: str

    async def run_batch(self, scope: trio.CancelScope) -> None:
        """Drain the mailbox; ``scope`` is the worker's, cancelled to stop the running handler."""
        ...


class Dispatcher:
    def __init__(self, nursery: trio.Nursery, max_idle: int = 64) -> None:
        self._nursery = nursery
        self._idle: list[Task] = []
        self.max_idle = max_idle
        self.workers = 0

    def activate(self, cell: Drainable) -> None:
        """Run ``cell``'s mailbox on a worker; the caller has checked ``active < max_concurrency``."""
        cell.active += 1
        if self._idle:
            reschedule(self._idle.pop(), Value(cell))
        else:
            self.workers += 1
            self._nursery.start_soon(self._work, cell, name="trimicro-worker")

    async def _work(self, cell: Drainable) -> None:
        try:
            while True:
                # One cancel scope serves many batches; it is replaced only after being cancelled
                # (an actor stopped, or a remote request ran out of time, while this worker ran it).
                with trio.CancelScope() as scope:
                    while True:
                        try:
                            await cell.run_batch(scope)
                        except Exception:  # a runtime bug must not take the node down
                            log.exception("worker crashed while running %s", cell.path)
                        if len(self._idle) >= self.max_idle:
                            return
                        cell = await self._park()
                if len(self._idle) >= self.max_idle:
                    return
                cell = await self._park()
        finally:
            self.workers -= 1

    async def _park(self) -> Drainable:
        task = current_task()
        idle = self._idle
        idle.append(task)

        def abort(_: Any) -> Abort:
            idle.remove(task)
            return Abort.SUCCEEDED

        return await wait_task_rescheduled(abort)  # type: ignore[no-any-return]
