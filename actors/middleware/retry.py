"""``Retry``: try an idempotent call again when the error says a later attempt may succeed."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from typing import Any

import attrs
import trio

from trimicro.mailbox.errors import MicroError

from ..supervision import Backoff
from . import Call, Kind, Next, Side, passes_through

__all__ = ["RETRYABLE", "Retry"]

#: Codes that say "not now" rather than "no": timeout, too many requests, bad gateway,
#: unavailable, gateway timeout (Go Micro's client retries on the same kind of errors).
RETRYABLE = frozenset({408, 429, 502, 503, 504})


@passes_through
@attrs.define(eq=False)
class Retry:
    """Retry a client call up to ``attempts`` times in all while it fails with a typed error
    whose code is in ``codes``, waiting ``backoff`` between attempts (exponential, jittered).

    Install it only where a call may run twice: a request that timed out may have been handled.
    By default it retries ``ask`` only; ``kinds`` widens that, and ``when`` (a predicate on the
    call) narrows it, e.g. to endpoints known to be idempotent. Any other error, a code not in
    ``codes``, the last attempt's error, or a call that must not wait, goes to the caller as
    it is. On the server side it does nothing.
    """

    attempts: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    backoff: Backoff = attrs.field(factory=lambda: Backoff(min_delay=0.05, max_delay=1.0))
    codes: Collection[int] = RETRYABLE
    kinds: Collection[Kind] = (Kind.ASK,)
    when: Callable[[Call], bool] | None = None
    rng: random.Random = attrs.field(factory=random.Random, repr=False)

    async def __call__(self, call: Call, call_next: Next) -> Any:
        if (
            call.side is not Side.CLIENT
            or not call.wait
            or call.kind not in self.kinds
            or (self.when is not None and not self.when(call))
        ):
            return await call_next(call)
        attempt = 1
        while True:
            try:
                return await call_next(call)
            except MicroError as exc:
                if attempt >= self.attempts or exc.code not in self.codes:
                    raise
            await trio.sleep(self.backoff.delay(attempt, self.rng))
            attempt += 1
