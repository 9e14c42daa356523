"""``Timeout``: bound a call, on either side."""

from __future__ import annotations

from typing import Any

import attrs
import trio

from trimicro.mailbox.errors import RequestTimeout

from . import Call, Kind, Next, Side, passes_through

__all__ = ["Timeout"]


@passes_through
@attrs.frozen
class Timeout:
    """At most ``seconds`` for a call.

    Client side, an ``ask`` or a stream's opening gets ``min(its timeout, seconds)`` (the
    runtime then enforces it as usual, sending CANCEL to another node on expiry); any other
    call (a ``tell`` waiting for room, a ``publish``) is cancelled after ``seconds`` with
    :class:`~trimicro.mailbox.errors.RequestTimeout` (408). Server side, the handler is
    cancelled after ``seconds`` and the caller gets 408. A call that must not wait
    (``try_tell``) passes through.
    """

    seconds: float = attrs.field(validator=attrs.validators.gt(0))

    async def __call__(self, call: Call, call_next: Next) -> Any:
        if not call.wait:
            return await call_next(call)
        if call.side is Side.CLIENT and call.kind in (Kind.ASK, Kind.STREAM):
            if call.timeout is None or call.timeout > self.seconds:
                call.timeout = self.seconds
            return await call_next(call)
        with trio.move_on_after(self.seconds):
            return await call_next(call)
        # Only the scope's own cancellation ends the block without returning.
        raise RequestTimeout(f"{call.kind.value} {call.endpoint or call.target} took over {self.seconds:g}s")
