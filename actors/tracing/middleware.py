"""The tracing middleware: one span per call in the caller, one around each handler.

Imported only when a node traces (see :func:`trimicro.actors.tracing.node_tracing`), so a
process without an OpenTelemetry SDK never loads it. The node installs one :class:`Tracing`
per node and places it itself: innermost on the client side (after the node's own client
middleware, so each retry is its own span) and outermost on the server side (before the
node's and the class's middleware, so the handler's span covers them). It awaits nothing
but the rest of the chain, so handlers that never suspend keep running inline.

Written for its cost, since it runs on every call once an SDK is configured: the span's
attributes are built only when the span records (with 1% sampling, 99 calls in 100 build
none), there is no ``with`` block, and the decisions that depend on a message's class are
remembered per class.

**Unsampled requests pass through.** With a parent-based sampler (the SDK's default, and
``parentbased_traceidratio``), a request whose W3C ``traceparent`` says "not sampled" gets no
span: the sampler would make a non-recording one, and that costs as much as a recording span
to start (the SDK's ``start_span``, an ``extract`` and an ``inject``: some 110,000
instructions a call together, against 600,000 for a whole remote ask). Instead the handler
runs with the caller's context as its current span (:class:`Passed`: the same trace id for
logs), and the calls it makes carry the ``traceparent`` they received, which the metadata
rule propagates anyway. Nobody records either span, and every later hop makes the same "not
sampled" decision, so what a collector sees is the same. As every hop of such a request
carries the same ``traceparent``, a node remembers the contexts of the last
:data:`MAX_PASSED` it passed: a handler's nested calls and the next hops on the same node
find theirs with one dict lookup, instead of parsing it again (some 15,000 instructions, most
of them in building the span context). Checked once per node
(:func:`drops_unsampled`): the sampler is the SDK's ``ParentBased`` and drops a span whose
parent is not sampled, local or remote; and the propagator reads only W3C fields. Otherwise
every request takes the general path.

**Roots the sampler drops** (a call that starts a trace, at 1%: 99 in 100) are made without the
SDK's ``start_span`` when the sampler's root decision is a function of the trace id we can
evaluate as the SDK does (:mod:`.roots`); the SDK still makes every span it records.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping
from typing import Any

import trio
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagate import get_global_textmap
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    NoOpTracer,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from trimicro.mailbox.errors import MicroError

from ..middleware import Call, Kind, Next, Side, passes_through
from .roots import Roots, roots_of
from .semconv import (
    ERROR_CODE,
    ERROR_TYPE,
    client_attributes,
    client_name,
    delivery_attributes,
    publish_attributes,
    server_attributes,
    server_name,
)

__all__ = ["Passed", "Tracing", "drops_unsampled", "tracer_of"]

#: The instrumentation scope's name, as a collector shows it.
SCOPE = "trimicro"
#: Paths of the runtime's own actors contain this (membership, introspection, relays).
_RUNTIME = "/trimicro-"
#: Message classes whose "declares a kind" answer one Tracing remembers.
_MAX_TYPES = 64
#: Unsampled ``traceparent`` values (and the handler context of each) one Tracing remembers.
MAX_PASSED = 256

# Module globals, not attribute lookups, on every call's path.
_CLIENT = Side.CLIENT
_ASK, _TELL, _STREAM, _PUBLISH, _SUBSCRIBE = Kind.ASK, Kind.TELL, Kind.STREAM, Kind.PUBLISH, Kind.SUBSCRIBE
_SPAN_CLIENT, _SPAN_SERVER = SpanKind.CLIENT, SpanKind.SERVER
_SPAN_PRODUCER, _SPAN_CONSUMER = SpanKind.PRODUCER, SpanKind.CONSUMER
_attach, _detach = otel_context.attach, otel_context.detach
_set_span = trace.set_span_in_context
_current_span = trace.get_current_span
_baggage = baggage.get_all
_EMPTY = Context()
#: A version-00 W3C ``traceparent``: trace id, parent span id, flags.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
#: The propagator fields that are W3C's (Trace Context and Baggage).
_W3C = frozenset({"traceparent", "tracestate", "baggage"})


def tracer_of(provider: Any) -> trace.Tracer | None:
    """``provider``'s tracer for trimicro, or ``None`` if it would record nothing (a no-op or
    proxy provider: the API without an SDK; an SDK turned off by ``OTEL_SDK_DISABLED``)."""
    if provider is None or isinstance(provider, ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    try:
        from importlib.metadata import version

        release: str | None = version("trimicro")
    except Exception:  # not installed as a distribution (a checkout on sys.path)
        release = None
    tracer = provider.get_tracer(SCOPE, release)
    return None if isinstance(tracer, NoOpTracer) else tracer


def drops_unsampled(tracer: Any) -> bool:
    """Whether ``tracer``'s sampler makes no recording span under a parent that is not sampled,
    local or remote: the SDK's ``ParentBased`` with its default delegates for such parents.
    Asked of the sampler itself (a ``ParentBased`` given other delegates answers otherwise)."""
    try:
        from opentelemetry.sdk.trace.sampling import Decision, ParentBased
    except ImportError:  # a provider that is not the SDK's
        return False
    sampler = getattr(tracer, "sampler", None)
    if not isinstance(sampler, ParentBased):
        return False
    for remote in (True, False):
        for trace_id in (1, 2**127 - 1, 2**128 - 1):
            parent = NonRecordingSpan(SpanContext(trace_id, 1, remote, TraceFlags(TraceFlags.DEFAULT)))
            decision = sampler.should_sample(_set_span(parent, _EMPTY), trace_id, "probe").decision
            if decision is not Decision.DROP:
                return False
    return True


class Passed(NonRecordingSpan):
    """The current span of a handler serving an unsampled request: the caller's context, as
    received in ``traceparent`` (kept, so the handler's own calls pass it on unchanged)."""

    __slots__ = ("traceparent",)

    def __init__(self, context: SpanContext, traceparent: str) -> None:
        super().__init__(context)
        self.traceparent = traceparent


def _unsampled(traceparent: str) -> Context | None:
    """The handler's context for a request whose ``traceparent`` says "not sampled", or ``None``
    to take the general path (sampled, or malformed: the propagator then makes a new root)."""
    found = _TRACEPARENT.fullmatch(traceparent)
    if found is None:
        return None
    trace_id, span_id, flags = int(found[1], 16), int(found[2], 16), int(found[3], 16)
    if flags & 1 or not trace_id or not span_id:
        return None
    span = Passed(SpanContext(trace_id, span_id, True, TraceFlags(flags)), traceparent)
    return _set_span(span, _EMPTY)


@passes_through
class Tracing:
    """Middleware making a span of each call (client side) and each handling (server side).

    ``tracer`` makes the spans; the node's id goes into the handler's spans. The propagator
    is the global one at construction (``OTEL_PROPAGATORS``, or what the application set
    before starting the node).
    """

    __slots__ = ("_declared", "_passed", "fields", "node_id", "passing", "propagator", "roots", "tracer")

    def __init__(self, tracer: trace.Tracer, node_id: str) -> None:
        self.tracer = tracer
        self.node_id = node_id
        self.propagator = get_global_textmap()
        #: The header keys the propagator reads and writes (``traceparent``, ``tracestate``...).
        self.fields = frozenset(self.propagator.fields)
        #: Whether unsampled requests pass through without spans (see the module docstring).
        self.passing = "traceparent" in self.fields and self.fields <= _W3C and drops_unsampled(tracer)
        self._declared: dict[type, bool] = {}
        #: ``traceparent`` -> handler context, for the unsampled requests passed last (FIFO).
        self._passed: dict[str, Context] = {}
        #: Roots the sampler drops, made without the SDK's ``start_span`` (:mod:`.roots`).
        self.roots: Roots | None = roots_of(tracer) if self.passing else None

    def _start(self, name: str, parent: Context | None, kind: SpanKind) -> Span:
        """A span from the tracer; a root through :attr:`roots` when there are cheap ones."""
        roots = self.roots
        if roots is not None and not _current_span(parent).get_span_context().is_valid:
            return roots.start(name, parent, kind)
        return self.tracer.start_span(name, parent, kind)

    def __call__(self, call: Call, call_next: Next) -> Awaitable[Any]:
        if call.side is _CLIENT:
            if self.passing and call.headers.get("traceparent") in self._passed:
                return call_next(call)  # an unsampled request's: it passes on as it came
            return self._client(call, call_next)
        return self._server(call, call_next)

    # ---- the caller's side -------------------------------------------------------------------

    def _relayed(self, message: Any) -> bool:
        """A broker relaying a delivery (its message class declares a kind): not a call of its own."""
        t = type(message)
        declared = self._declared.get(t)
        if declared is None:
            declared = getattr(t, "__trimicro_kind__", None) is not None
            if len(self._declared) < _MAX_TYPES:
                self._declared[t] = declared
        return declared

    async def _client(self, call: Call, call_next: Next) -> Any:
        kind = call.kind
        headers = call.headers
        parent = None
        if (
            headers
            and not self.fields.isdisjoint(headers)
            and not _current_span().get_span_context().is_valid
        ):
            # Outside any span, a context in the call's headers is the parent: a caller
            # passing on one it received some other way (an HTTP request's, say).
            if self.passing and self._pass(headers) is not None:
                return await call_next(call)
            parent = self.propagator.extract(headers, _EMPTY)
        span_kind = _SPAN_CLIENT
        if kind is _PUBLISH:
            topic = str(call.target)
            span = self._start("publish " + topic, parent, _SPAN_PRODUCER)
            if span.is_recording():
                span.set_attributes(publish_attributes(topic))
        else:
            if self._relayed(call.message):
                return await call_next(call)
            if (
                _RUNTIME in getattr(call.target, "path", "")
                and parent is None
                and not _current_span().get_span_context().is_valid
            ):
                return await call_next(call)  # the runtime's own chatter starts no trace
            if kind is _TELL:
                span_kind = _SPAN_PRODUCER
            span = self._start(client_name(call), parent, span_kind)
            if span.is_recording():
                span.set_attributes(client_attributes(call))
        if "tracestate" in headers:  # propagated from the request being handled: replaced below
            del headers["tracestate"]
        made = span.get_span_context()
        if self.passing and not made.trace_flags.sampled and not made.trace_state and not _baggage(parent):
            # A root the sampler said no to: what the (W3C, checked) propagator would write,
            # without the 25,000 instructions of going through it; the next hops pass it on.
            # (%-formatting: a third less time than an f-string's format specs, per root.)
            ids = (made.trace_id, made.span_id, made.trace_flags)
            headers["traceparent"] = "00-%032x-%016x-%02x" % ids  # noqa: UP031
        else:
            self.propagator.inject(headers, _set_span(span, parent))
        try:
            result = await call_next(call)
        except BaseException as exc:
            _failed(span, exc, False)
            span.end()
            raise
        if kind is _STREAM:
            _end_with_stream(span, result)
        else:
            span.end()
        return result

    # ---- the handler's side ------------------------------------------------------------------

    def _pass(self, headers: Mapping[str, str]) -> Context | None:
        """The handler's context if the request is an unsampled one to pass through; ``None``
        for the general path (sampled, no ``traceparent``, or with baggage or a tracestate,
        which only the propagator's own parsing turns into context)."""
        traceparent = headers.get("traceparent")
        if traceparent is None or "baggage" in headers or "tracestate" in headers:
            return None
        passed = self._passed.get(traceparent)
        if passed is None:
            passed = _unsampled(traceparent)
            if passed is not None:
                if len(self._passed) >= MAX_PASSED:
                    del self._passed[next(iter(self._passed))]
                self._passed[traceparent] = passed
        return passed

    async def _server(self, call: Call, call_next: Next) -> Any:
        kind = call.kind
        links: tuple[Link, ...] = ()
        # A delivery's publisher context is in the message's own headers (a broker relaying it,
        # or NATS, may deliver it with none of its own).
        carrier = getattr(call.message, "headers", None) if kind is _SUBSCRIBE else call.headers
        if self.passing and carrier:
            passed = self._pass(carrier)
            if passed is not None:
                token = _attach(passed)
                try:
                    return await call_next(call)
                finally:
                    _detach(token)
        if kind is _SUBSCRIBE:
            parent = self.propagator.extract(carrier, _EMPTY) if carrier else _EMPTY
            created = _current_span(parent).get_span_context()
            if created.is_valid:
                links = (Link(created),)
            span = self.tracer.start_span("process " + str(call.target), parent, _SPAN_CONSUMER, links=links)
            if span.is_recording():
                span.set_attributes(delivery_attributes(call, self.node_id))
        else:
            parent = self.propagator.extract(carrier, _EMPTY) if carrier else _EMPTY
            if (
                _RUNTIME in getattr(call.target, "path", "")
                and not _current_span(parent).get_span_context().is_valid
            ):
                return await call_next(call)
            span_kind = _SPAN_CONSUMER if kind is _TELL else _SPAN_SERVER
            span = self._start(server_name(call), parent, span_kind)
            if span.is_recording():
                span.set_attributes(server_attributes(call, self.node_id))
        token = _attach(_set_span(span, parent))
        try:
            return await call_next(call)
        except BaseException as exc:
            _failed(span, exc, True)
            raise
        finally:
            _detach(token)
            span.end()


def _failed(span: Span, exc: BaseException, server: bool) -> None:
    """Mark ``span`` with the error a call ended in (see :mod:`.semconv`)."""
    if not span.is_recording():
        return
    if isinstance(exc, MicroError):
        code = exc.code
        span.set_attribute(ERROR_CODE, code)
        span.set_attribute(ERROR_TYPE, str(code))
        if not server or code >= 500:
            span.set_status(Status(StatusCode.ERROR, f"{code} {exc.status}: {exc.detail}"))
    elif isinstance(exc, trio.Cancelled):
        span.set_attribute(ERROR_TYPE, "cancelled")
        if not server:
            span.set_status(Status(StatusCode.ERROR, "cancelled"))
    else:
        cls = type(exc)
        span.record_exception(exc)
        span.set_attribute(ERROR_TYPE, f"{cls.__module__}.{cls.__qualname__}")
        if server:
            span.set_attribute(ERROR_CODE, 500)  # what the asker gets for it
        span.set_status(Status(StatusCode.ERROR, f"{cls.__name__}: {exc}"))


def _end_with_stream(span: Span, stream: Any) -> None:
    """A stream's caller span lasts until the stream is over (both directions ended, failed,
    or left), so that it contains the handler's span, which covers the handler's whole run."""
    if stream is None or stream.finished:
        span.end()
        return
    before = stream.on_done

    def done(s: Any) -> None:
        span.end()
        if before is not None:
            before(s)

    stream.on_done = done
