"""What a cell and its :class:`~.context.Context` share without importing each other: a cell's
statuses, the results of ``Cell.offer``, and the item the current handler is serving.

Kept in a module of their own, below both, so that the context (which the user-facing
``Actor.context`` returns, and :mod:`.actor` is below the cell) reads them without an import
cycle; :mod:`.lifecycle` and :mod:`.cell` re-export them where the runtime has always found them.
"""

from __future__ import annotations

from contextvars import ContextVar

from .mail import Mail

__all__ = [
    "DEAD",
    "FULL",
    "OK",
    "RUNNING",
    "STARTING",
    "STOPPED",
    "STOPPING",
    "SUSPENDED",
    "current_item",
    "get_item",
    "reset_item",
    "set_item",
]

# Cell status, ordered: a cell accepts messages while status < STOPPING.
STARTING, RUNNING, SUSPENDED, STOPPING, STOPPED = range(5)

# Results of Cell.offer.
OK, FULL, DEAD = range(3)

#: The queued item the current handler is serving.
current_item: ContextVar[Mail | None] = ContextVar("trimicro_current_item", default=None)

# Its methods, bound once for the modules that call them per message. On CPython 3.11 a
# method call on a name bound by ``import`` compiles to LOAD_ATTR, not LOAD_METHOD, so
# ``current_item.set(x)`` in a module that imports ``current_item`` builds (and frees) a bound
# method at every call, about 150 instructions; these names are plain module globals.
get_item, set_item, reset_item = current_item.get, current_item.set, current_item.reset
