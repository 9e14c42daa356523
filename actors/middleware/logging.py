"""``Logging``: one log record per call, with its kind, side, target, endpoint, time and outcome."""

from __future__ import annotations

import logging
import time
from typing import Any

import attrs

from trimicro.mailbox.errors import MicroError

from . import Call, Next, passes_through

__all__ = ["Logging"]


@passes_through
@attrs.frozen
class Logging:
    """Log each call when it ends: ``"ask client /user/x Counter.add 0.153ms ok"``.

    Successful calls at ``level``, calls ending in a typed error at ``level`` too with its
    code (an answer, not a fault), anything else at ``WARNING``. Timing uses a monotonic
    clock, so it is the wall time the call took on this side.
    """

    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("trimicro.calls"))
    level: int = logging.DEBUG

    async def __call__(self, call: Call, call_next: Next) -> Any:
        logger = self.logger
        if not logger.isEnabledFor(min(self.level, logging.WARNING)):  # nothing would be logged
            return await call_next(call)
        started = time.perf_counter()
        outcome = "ok"
        level = self.level
        try:
            return await call_next(call)
        except MicroError as exc:
            outcome = f"{exc.code} {exc.status}"
            raise
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
            level = max(level, logging.WARNING)
            raise
        finally:
            if logger.isEnabledFor(level):
                logger.log(
                    level,
                    "%s %s %s %s %.3fms %s",
                    call.kind.value,
                    call.side.value,
                    call.target,
                    call.endpoint or type(call.message).__name__,
                    (time.perf_counter() - started) * 1000,
                    outcome,
                )
