"""A module for ``trimicro run`` in the health and log tests: a service that closes its node's
store on request (readiness must then fail on ``store``) and logs from inside its actor (the
records must name the actor), once inside an OpenTelemetry span (they must carry its ids)."""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from trimicro.actors import Actor

log = logging.getLogger("health_services")

#: The ids of the span the actor logs inside (a propagated context, as a traced call has).
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


class Breaker(Actor):
    service_name = "Breaker"

    async def started(self) -> None:
        log.info("breaker started")
        span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1)))
        with trace.use_span(span):
            log.warning("inside a traced call")

    async def close_store(self, body: Any) -> str:
        """Close the node's store (as a failing disk would leave it)."""
        await self.context.node.extensions["cluster"].store.aclose()
        return "closed"
