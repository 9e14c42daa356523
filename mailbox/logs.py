"""The library's loggers, and the filter that keeps a warning that repeats from flooding them.

Every package logs through one logger named after it (``get_logger(__package__)``:
``trimicro.actors.remote``, ``trimicro.cluster.membership``, ...), so the hierarchy under
``trimicro`` follows the folders and one ``logging.getLogger("trimicro.cluster")`` setting
reaches every cluster package.

Warnings come from what peers and the outside world do (a record without a cluster on a shared
registry, a peer refused, a registry that stopped answering), so the same one can come every
second for hours. :class:`RateLimit` lets each (logger, message template) through as a token
bucket does: a burst, then one every ``interval`` seconds; the first record that passes after
some were dropped says how many (``"... (suppressed 12 similar)"``, and ``record.suppressed``).
Records below WARNING pass untouched (DEBUG and INFO are asked for). Its memory is bounded: at
most ``max_keys`` templates are tracked, the least recently seen forgotten first.

It lives in the lowest layer because every layer logs through it; it imports nothing of
trimicro. The filter sits on the library's own loggers (a logger's filters see the records
logged on it), so it works whatever handlers the application configures, ``caplog`` included.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["RATE_LIMIT", "RateLimit", "get_logger"]


class _Bucket:
    __slots__ = ("at", "suppressed", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.suppressed = 0


class RateLimit(logging.Filter):
    """Pass at most ``burst`` records of one (logger, template) at once, then one every
    ``interval`` seconds; records below ``level`` always pass.

    Thread-safe (the store and zeroconf log from worker threads). ``clock`` is injectable so a
    test need not sleep. :attr:`suppressed` counts every record dropped since the start.
    """

    def __init__(
        self,
        burst: int = 5,
        interval: float = 30.0,
        *,
        max_keys: int = 512,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or interval <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be at least 1, interval positive")
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self.level = level
        self.clock = clock
        self.suppressed = 0
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        template = record.msg if isinstance(record.msg, str) else type(record.msg).__name__
        key = (record.name, template)
        with self._lock:
            now = self.clock()
            buckets = self._buckets
            bucket = buckets.get(key)
            if bucket is None:
                if len(buckets) >= self.max_keys:
                    buckets.popitem(last=False)
                bucket = buckets[key] = _Bucket(float(self.burst), now)
            else:
                buckets.move_to_end(key)
                bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.interval)
                bucket.at = now
            if bucket.tokens < 1.0:
                bucket.suppressed += 1
                self.suppressed += 1
                return False
            bucket.tokens -= 1.0
            dropped, bucket.suppressed = bucket.suppressed, 0
        if dropped:
            # Formatted here, once: the note must not be read as a %-template by the handler.
            record.msg = f"{record.getMessage()} (suppressed {dropped} similar)"
            record.args = None
            record.suppressed = dropped
        return True

    def reset(self) -> None:
        """Forget every bucket (tests start from a clean slate)."""
        with self._lock:
            self._buckets.clear()
            self.suppressed = 0

    def __len__(self) -> int:
        return len(self._buckets)


#: The filter on every trimicro package logger: 5 at once, then one every 30 s per template.
RATE_LIMIT = RateLimit()


def get_logger(name: str | None) -> logging.Logger:
    """The logger ``name`` (a package's ``__package__``) with :data:`RATE_LIMIT` on it."""
    if not name:
        raise ValueError("a trimicro logger is named after its package")
    logger = logging.getLogger(name)
    logger.addFilter(RATE_LIMIT)  # (a no-op when it is there already)
    return logger
