"""A span for each HTTP request the gateway serves, after OpenTelemetry's HTTP server conventions.

The gateway is where a trace enters the cluster from the web: a ``SERVER`` span named
``POST /api/{service}/{endpoint:path}`` (method and route template, low cardinality) whose
parent is the context the request's own headers carry (W3C ``traceparent``, or whatever the
node's propagator reads), current while the route runs, so the cluster call it makes is its
child and carries the trace on to the service. A response of 500 or more is an error (a 4xx
is the client's, as the conventions say of server spans). Attributes: ``http.request.method``,
``http.route``, ``url.path``, ``url.scheme``, ``server.address``/``server.port``,
``client.address``, ``user_agent.original``, ``http.response.status_code``, ``error.type``.

Only when the gateway's node traces (:attr:`trimicro.actors.Node.tracing`): otherwise
:func:`traced` returns the route's function as it is.

**Whose sampling decision.** By default the client's ``traceparent`` is the span's parent and
a parent-based sampler (the SDK's default) follows its sampled flag: OpenTelemetry's default,
what a gateway behind a traced front end (a load balancer, a web app) wants. A gateway open
to clients it does not trust can set ``TRIMICRO_GATEWAY_TRACEPARENT=link`` (read when the
routes are built): each request then starts a trace of its own, so the gateway's sampler
decides as for any root and the client can neither force a trace to be recorded nor choose
its trace id; the client's context, when it sent one, is a *link* of the span (the
conventions' way to relate a trace to one that is not its parent).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

if TYPE_CHECKING:
    from trimicro.actors import Node

__all__ = ["PARENT_POLICY", "traced"]

#: The environment variable that says what a client's ``traceparent`` is: ``trust`` (the
#: default: the parent) or ``link`` (a link of a new trace).
PARENT_POLICY = "TRIMICRO_GATEWAY_TRACEPARENT"

Endpoint = Callable[[Request], Awaitable[Response]]


def traced(endpoint: Endpoint, method: str, route: str, node: Node) -> Endpoint:
    """``endpoint`` inside a span per request when ``node`` traces; ``endpoint`` itself if not."""
    tracing = node.tracing
    if tracing is None:
        return endpoint
    from opentelemetry import context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    tracer, propagator = tracing.tracer, tracing.propagator
    name = f"{method} {route}"
    empty = Context()
    policy = os.environ.get(PARENT_POLICY, "trust").strip().lower() or "trust"
    if policy not in ("trust", "link"):
        raise ValueError(f"{PARENT_POLICY} is 'trust' or 'link', not {policy!r}")
    linking = policy == "link"

    async def with_span(request: Request) -> Response:
        parent = propagator.extract(request.headers, empty)
        if linking:  # a trace of its own: the client's context is only a link
            sent = trace.get_current_span(parent).get_span_context()
            links = [Link(sent)] if sent.is_valid else None
            span = tracer.start_span(name, empty, SpanKind.SERVER, links=links)
        else:
            span = tracer.start_span(name, parent, SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(_request_attributes(request, method, route))
        # Linking: nothing of the untrusted client's context (its baggage) goes on downstream.
        token = context.attach(trace.set_span_in_context(span, empty if linking else parent))
        try:
            response = await endpoint(request)
        except BaseException as exc:  # the routes answer errors themselves: a bug, or a cancel
            if span.is_recording():
                span.record_exception(exc)
                span.set_attribute("error.type", f"{type(exc).__module__}.{type(exc).__qualname__}")
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            context.detach(token)
            span.end()
            raise
        context.detach(token)
        if span.is_recording():
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
        span.end()
        return response

    return with_span


def _request_attributes(request: Request, method: str, route: str) -> dict[str, Any]:
    url = request.url
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "http.route": route,
        "url.path": url.path,
        "url.scheme": url.scheme,
    }
    if url.hostname:
        attributes["server.address"] = url.hostname
    if url.port:
        attributes["server.port"] = url.port
    if request.client is not None:
        attributes["client.address"] = request.client.host
    agent = request.headers.get("user-agent")
    if agent:
        attributes["user_agent.original"] = agent
    return attributes
