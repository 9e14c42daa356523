"""Traces: OpenTelemetry spans around every call, in the caller and around the handler.

A node whose process has an OpenTelemetry SDK configured (a real ``TracerProvider``) traces
every call it makes and every message its actors handle, locally and across nodes:

======================  =====================  ===================================================
call                    caller's span          handler's span
======================  =====================  ===================================================
``ask``                 ``CLIENT``             ``SERVER``
``open_stream``         ``CLIENT``             ``SERVER`` (the handler's whole run)
``tell``/``try_tell``   ``PRODUCER``           ``CONSUMER``
``publish``             ``PRODUCER``           ``CONSUMER`` per delivery to a subscribing actor
======================  =====================  ===================================================

Names and attributes follow OpenTelemetry's RPC and messaging semantic conventions
(:mod:`.semconv`): ``Greeter/hello`` with ``rpc.system="trimicro"``, ``rpc.service``,
``rpc.method``; ``publish orders`` and ``process orders`` with ``messaging.*``. A call that
fails carries its Go Micro code as ``rpc.trimicro.error_code`` and ``error.type``; its span's
status is ERROR on the caller's side for any error and on the handler's side for 5xx (a 4xx
is the caller's mistake, as HTTP's conventions say of a server span).

**Propagation.** The caller injects its span's context into the call's metadata with the
global OpenTelemetry propagator (W3C ``traceparent``/``tracestate`` and ``baggage`` by
default; ``OTEL_PROPAGATORS`` changes it), so it crosses nodes in the envelope's headers like
any metadata, and a local call carries it the same way (a ``tell`` is handled later, in
another task: the headers are what reach it). The handler's side extracts it from the
request's headers alone, never from the task it happens to run in, and runs the handler with
its span as the current one (``opentelemetry.trace.get_current_span()`` inside a handler is
the handler's span: logs and the handler's own spans find it). A call made while handling
is then a child of the handler's span; the metadata rule (:mod:`trimicro.actors.metadata`)
always lets the trace context travel, so a node without the SDK passes it on unchanged.

**Pub/sub.** Each delivery of a published message is a ``process`` span that is a *child*
of the ``publish`` span and also *links* to it. The messaging conventions ask for the link
(a consumer handling a batch could have no single parent); a delivery here is always one
message to one handler, which the conventions allow to be a child as well, and that keeps a
publisher and its subscribers in one trace, which is what someone following a request wants
to see. The context travels in the message's own headers (:attr:`Message.headers`), so a
redelivery (acknowledged mode) is a new ``process`` span under the same ``publish``.

**Retries.** The caller's span is the innermost client middleware: each attempt that
:class:`~trimicro.actors.middleware.Retry` or the cluster's selector makes is a span of its
own, siblings under the span that made the call. On the handler's side the span is the
outermost server middleware, so it covers the node's and the class's middleware too.

**What starts no trace.** Calls to the runtime's own actors (names starting ``trimicro-``:
membership, introspection, the pub/sub relays) are traced when they belong to a trace and
otherwise not, so the cluster's background chatter (a seed asked for its members every few
seconds) does not fill a collector with one-span traces. A broker's relay of a delivery (a
message that declares its kind, such as the broker's ``Message``) gets no caller span: the
subscriber's ``process`` span is the delivery's.

**Cost.** None without an SDK: :func:`node_tracing` finds no provider (it does not even
import OpenTelemetry unless the process already has) and the node installs nothing, so the
calls' fast paths are untouched. With an SDK every call pays for two spans and a header
(figures in docs/observability.md).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from .middleware import Tracing

__all__ = ["TracingSetting", "node_tracing"]

#: What ``start_node(tracing=)`` takes: ``None`` (trace when the process has an SDK provider
#: set globally), ``False`` (never), or a ``TracerProvider`` to use instead of the global one.
TracingSetting: TypeAlias = "TracerProvider | bool | None"


def node_tracing(setting: TracingSetting, node_id: str) -> Tracing | None:
    """The tracing middleware of node ``node_id``, or ``None`` when nothing would be recorded.

    ``None`` and ``True`` use the global provider; ``False`` turns tracing off. A no-op or
    proxy provider (OpenTelemetry's API without an SDK, or an SDK disabled by
    ``OTEL_SDK_DISABLED``) means no tracing. When the process has not imported OpenTelemetry
    at all, and no ``OTEL_PYTHON_TRACER_PROVIDER`` names a provider, no provider can be set:
    nothing is imported.
    """
    if setting is False:
        return None
    if setting is None or setting is True:
        if "opentelemetry.trace" not in sys.modules and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ:
            return None
        from opentelemetry import trace

        provider: Any = trace.get_tracer_provider()
    else:
        provider = setting
    from .middleware import Tracing, tracer_of

    tracer = tracer_of(provider)
    return None if tracer is None else Tracing(tracer, node_id)
