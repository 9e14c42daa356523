"""Scripted failures for the demo: server middleware that fails the next calls of one endpoint.

The payment service's code knows nothing of this: the app installs :class:`Chaos` as the
payments node's middleware (``start_cluster(middleware=[chaos])``), and the demo queues the
faults it wants the next ``Payments.charge`` requests to meet. The two faults are the two
cases a caller cannot tell apart, both a 503 to it:

* ``BUSY``: refused before the handler ran (nothing was charged);
* ``LOST_REPLY``: the handler ran (the charge is in the ledger), then the answer was lost.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Any

import attrs

from trimicro.actors import Call, Next, ServiceUnavailable
from trimicro.actors.middleware import Side


class Fault(enum.Enum):
    BUSY = "busy"
    LOST_REPLY = "lost reply"


@attrs.define
class Chaos:
    endpoint: str
    plan: deque[Fault] = attrs.field(factory=deque)
    #: The faults injected so far, in order.
    injected: list[Fault] = attrs.field(factory=list)

    async def __call__(self, call: Call, call_next: Next) -> Any:
        if call.side is not Side.SERVER or call.endpoint != self.endpoint or not self.plan:
            return await call_next(call)
        fault = self.plan.popleft()
        self.injected.append(fault)
        if fault is Fault.BUSY:
            raise ServiceUnavailable(f"{self.endpoint}: node busy (injected)")
        await call_next(call)
        raise ServiceUnavailable(f"{self.endpoint}: the reply was lost (injected)")
