"""Roots the sampler drops, made without the SDK's ``start_span``.

A span that starts a trace (no span is current, no ``traceparent`` came with the request) goes
through the SDK's ``start_span`` even when the sampler drops it: the SDK draws a trace id, asks
the sampler, and then makes a ``NonRecordingSpan``, some 40,000 instructions a call that a
trace sampled at 1% pays 99 times in 100 for nothing recorded. This makes the same span for
less when the decision is one we can make exactly as the SDK does:

- the tracer is the SDK's own ``Tracer``;
- its sampler is the SDK's ``ParentBased`` (``parentbased_traceidratio`` and
  ``parentbased_always_off`` in ``OTEL_TRACES_SAMPLER``; ``should_sample`` not overridden),
  which for a root asks its root sampler;
- the root sampler is the SDK's ``TraceIdRatioBased`` (or ``ALWAYS_OFF``), whose decision is
  a function of the trace id alone: its low 64 bits below the ratio's ``bound``.

:class:`Roots` then draws the trace id with the tracer's own id generator and decides as that
sampler does. A dropped root is the ``NonRecordingSpan`` the SDK would make: that trace id, a
new span id from the same generator, the ``RANDOM_TRACE_ID`` flag when the generator's ids are
random, not sampled, no trace state. A sampled root is made by the SDK itself, with the trace
id already drawn (the tracer's id generator hands it out next: :class:`DrawnIds`), and the SDK
runs the sampler on it again, which samples it again: the spans recorded, their ids and their
sampling are the SDK's. What the SDK does not see is the dropped roots: its own span metrics,
when it has them, do not count them. Any other tracer or sampler: ``Roots`` is not used, and
every root goes through ``start_span``.

Measured with ``benchmarks/bench_tracing.py --instructions`` (1% sampling, a local ask that
starts a trace): figures in docs/observability.md.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags

__all__ = ["DrawnIds", "Roots", "roots_of"]

#: The bits of a trace id that ``TraceIdRatioBased`` compares with its bound.
_LOW_64 = (1 << 64) - 1


def roots_of(tracer: Any) -> Roots | None:
    """The cheap roots of ``tracer`` when its sampler is one whose root decision we can make
    (see the module docstring); ``None`` otherwise."""
    try:
        from opentelemetry.sdk.trace import Tracer as SdkTracer
        from opentelemetry.sdk.trace.id_generator import IdGenerator
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
    except ImportError:  # not the SDK
        return None
    if type(tracer) is not SdkTracer:
        return None
    sampler = tracer.sampler
    if not isinstance(sampler, ParentBased) or type(sampler).should_sample is not ParentBased.should_sample:
        return None
    root = getattr(sampler, "_root", None)
    if root is ALWAYS_OFF:
        bound = 0
    elif isinstance(root, TraceIdRatioBased) and type(root).should_sample is TraceIdRatioBased.should_sample:
        bound = root.bound
    else:
        return None
    shared: Any = tracer  # the provider's, shared by every node of the process tracing with it
    current = shared.id_generator
    if isinstance(current, DrawnIds):
        drawn = current
    elif isinstance(current, IdGenerator):
        # One wrapper per tracer, whose next trace id the SDK takes only right after a draw.
        drawn = shared.id_generator = DrawnIds(current)
    else:
        return None
    return Roots(tracer, drawn, bound)


class DrawnIds:
    """The tracer's id generator, which hands out a trace id drawn already (once) before its
    own: how a sampled root reaches the SDK with the trace id it was sampled for."""

    __slots__ = ("inner", "pending")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        #: The trace id the next ``generate_trace_id`` returns (0: none).
        self.pending = 0

    def generate_trace_id(self) -> int:
        pending = self.pending
        if pending:
            self.pending = 0
            return pending
        trace_id: int = self.inner.generate_trace_id()
        return trace_id

    def draw(self) -> int:
        """A new trace id from the wrapped generator (not handed out)."""
        trace_id: int = self.inner.generate_trace_id()
        return trace_id

    def generate_span_id(self) -> int:
        span_id: int = self.inner.generate_span_id()
        return span_id

    def is_trace_id_random(self) -> bool:
        return bool(self.inner.is_trace_id_random())


class Roots:
    """Starts root spans: the SDK's for a sampled one, a ``NonRecordingSpan`` of our own for
    a dropped one (see the module docstring)."""

    __slots__ = ("bound", "enabled", "flags", "ids", "tracer")

    def __init__(self, tracer: Any, ids: DrawnIds, bound: int) -> None:
        self.tracer = tracer
        self.ids = ids
        #: Whether the SDK's tracer configuration has it on (an SDK without one: always).
        self.enabled: Any = getattr(tracer, "_is_enabled", None) or (lambda: True)
        #: A root is sampled when its trace id's low 64 bits are below this.
        self.bound = bound
        random = ids.is_trace_id_random()
        self.flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if random else TraceFlags.DEFAULT)

    def start(self, name: str, parent: Context | None, kind: SpanKind) -> Span:
        """A root span ``name`` (``parent`` holds no valid span, or is ``None`` with none
        current)."""
        tracer = self.tracer
        trace_id = self.ids.draw()
        if trace_id & _LOW_64 < self.bound or not self.enabled():
            self.ids.pending = trace_id  # sampled: the SDK makes it, with this trace id
            try:
                span: Span = tracer.start_span(name, parent, kind)
            finally:  # (a disabled tracer draws none; a failing span processor must not
                self.ids.pending = 0  # leave this id to the next root)
            return span
        return NonRecordingSpan(SpanContext(trace_id, self.ids.generate_span_id(), False, self.flags))
