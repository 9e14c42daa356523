"""Suite-wide guard: a dispatcher worker or a runtime task that crashes is a runtime bug, even
when the node survives it (it is logged and the node carries on), so any test during which one
crashed fails."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _Crashes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(("worker crashed", "runtime task")):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_worker_crashes() -> Iterator[None]:
    handler = _Crashes()
    logger = logging.getLogger("trimicro")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.records, f"the runtime crashed: {handler.records[0].getMessage()}"


@pytest.fixture(autouse=True)
def fresh_rate_limit() -> Iterator[None]:
    """Each test starts with the library loggers' rate limit empty: what earlier tests warned
    about must not hold back a warning a test waits for."""
    from trimicro.mailbox.logs import RATE_LIMIT

    RATE_LIMIT.reset()
    yield
