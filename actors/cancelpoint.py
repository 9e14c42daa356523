"""A cancellation check without a coroutine, for the calls made once per message.

``tell`` and ``ask`` are cancellation points: a call made inside a cancelled scope raises
:class:`trio.Cancelled` instead of delivering. ``await trio.lowlevel.checkpoint_if_cancelled()``
says that, but it is a coroutine: creating, running and finishing one costs about 2,900
instructions on CPython 3.11, a sixth of a whole local tell. :func:`cancel_pending` asks the same
question of the current task with a plain call (about 1,500), and the caller awaits a real
checkpoint only when the answer is yes, which then raises. Measured with
``benchmarks/count_instructions.py`` (see :mod:`.mail`, whose typed item this pays for).

It reads the two private attributes of trio's ``Task`` that ``checkpoint_if_cancelled`` reads
(trio 0.35), with two differences: it does not count a cancel point (``Task._cancel_points``,
trio's own bookkeeping, which trimicro does not read), and its fallback ignores a pending
KeyboardInterrupt. Should a trio release rename those attributes, the ``AttributeError`` makes
it fall back to the public ``trio.current_effective_deadline()``: slower, and blind to a pending
KeyboardInterrupt until the next real checkpoint; ``tests/test_cancelpoint.py`` pins both
answers against trio's own.
"""

from __future__ import annotations

import math

import trio
from trio.lowlevel import current_task

__all__ = ["cancel_pending"]


def cancel_pending() -> bool:
    """Whether the calling task must checkpoint now: its scope is cancelled, or a
    KeyboardInterrupt waits for the main task. Then ``await trio.lowlevel.checkpoint()`` raises."""
    task = current_task()
    try:
        if task._cancel_status.effectively_cancelled:
            return True
        runner = task._runner
        return task is runner.main_task and runner.ki_pending
    except AttributeError:  # pragma: no cover - a trio without these attributes
        return trio.current_effective_deadline() == -math.inf
