"""The gateway's HTTP routes (a Starlette app; any ASGI server on trio runs it).

- ``POST /api/{service}/{endpoint}``: a call; ``endpoint`` is ``Endpoint.method``, the method alone,
  or Go Micro's ``Endpoint/method``. The body is JSON, msgpack or CBOR (``Content-Type``), the
  reply the same or what ``Accept`` asks for; errors are Go Micro's error JSON with their code as
  the HTTP status. A stream endpoint answers Server-Sent Events (:mod:`.bridges`).
- ``POST /api/publish/{topic}``, ``GET /api/subscribe/{pattern}`` (SSE): pub/sub.
- ``/health/live``, ``/health/ready`` (also ``/livez``, ``/readyz``: :mod:`.health`),
  ``/openapi.json``, ``/docs``, and the dashboard.

The client going away cancels its call once the call has lasted long enough to be worth
watching (:mod:`.disconnect`); the watching runs in the app's lifespan.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from trimicro.actors import BadRequest, InternalServerError, MicroError, NotFound, TooManyRequests
from trimicro.actors.lowlevel import AUTHORIZATION
from trimicro.mailbox.logs import get_logger

from . import bridges
from .access import admit_call, admit_topic
from .codec import JSON, decode_body
from .disconnect import DisconnectWatch
from .headers import call_headers, deadline
from .health import Readiness
from .names import checked_topic
from .openapi import document
from .responses import error_reply, reply
from .state import GatewayState
from .tracing import traced

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..registry import Endpoint

__all__ = ["PayloadTooLarge", "build_app", "discard_body", "read_body", "whole_paths"]

log = get_logger(__package__)


class PayloadTooLarge(MicroError):
    """413: the request body is larger than the gateway accepts."""

    default_code = 413


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` (before it is all read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is larger than {limit} bytes", id="gateway")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is larger than {limit} bytes", id="gateway")
        chunks.append(chunk)
    return b"".join(chunks)


async def discard_body(request: Request, limit: int, timeout: float) -> None:
    """Read and drop the unread body of a request refused on its headers, so that the refusal
    reaches the client: a server that closes a connection with request bytes still unread makes
    the kernel reset it, and the client loses the reply with them. Nothing is kept or decoded;
    at most ``limit`` bytes for at most ``timeout`` seconds, after which the connection is left
    to close (the body is past what the gateway would take anyway)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return
    size = 0
    with trio.move_on_after(timeout):
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return
        except ClientDisconnect:
            return


def build_app(cluster: Cluster, state: GatewayState) -> Starlette:
    """The gateway's ASGI app for ``cluster`` (routes above; :mod:`.dashboard` adds its own)."""
    from .dashboard import routes as dashboard_routes

    options = state.options
    watch = DisconnectWatch()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            yield
            nursery.cancel_scope.cancel()

    async def resolve(service: str, name: str) -> str:
        """The canonical ``Endpoint.method``; 404 for an unknown service or endpoint."""
        return (await lookup(service, name)).name

    async def lookup(service: str, name: str) -> Endpoint:
        """The endpoint a route names; 404 for an unknown service or endpoint."""
        name = name.replace("/", ".")
        if not state.knows(service):
            await state.refresh()  # a service started since the last read
            if not state.knows(service):
                raise NotFound(f"service {service} not found", id="gateway")
        endpoint = state.endpoint(service, name)
        if endpoint is None:
            raise NotFound(f"service {service} has no endpoint {name}", id="gateway")
        return endpoint

    async def refuse(request: Request, exc: MicroError) -> Response:
        """The error reply to a request refused on its path and headers, its body unread."""
        await discard_body(request, options.max_body, options.default_timeout)
        return error_reply(exc)

    async def call(request: Request) -> Response:
        service = request.path_params["service"]
        started = trio.current_time()
        endpoint = request.path_params["endpoint"]
        # What the path and headers decide comes before the body is read: an anonymous client
        # is refused without the gateway decoding, or even keeping, what it sent.
        try:
            found = await lookup(service, endpoint)
            endpoint, stream = found.name, found.stream
            headers = call_headers(request.headers.items())
            admit_call(cluster, headers, service, endpoint)
            timeout = deadline(request.headers.get("timeout"), options.default_timeout, options.max_timeout)
            if stream and "text/event-stream" not in request.headers.get("accept", ""):
                raise BadRequest(
                    f"{endpoint} is a stream: ask for text/event-stream or open a WebSocket", id="gateway"
                )
        except MicroError as exc:
            state.record(service, endpoint, started, exc)
            return await refuse(request, exc)
        try:
            body = decode_body(
                request.headers.get("content-type"), await read_body(request, options.max_body)
            )
            if stream:
                return bridges.stream_events(cluster, state, service, endpoint, body, headers)
            result = await watch.call(
                request, lambda: cluster.call(service, endpoint, body, timeout=timeout, headers=headers)
            )
        except MicroError as exc:
            state.record(service, endpoint, started, exc)
            return error_reply(exc)
        state.record(service, endpoint, started, None)
        return reply(request, result)

    async def publish(request: Request) -> Response:
        topic = request.path_params["topic"]
        try:
            checked_topic(topic)  # the broker's syntax and no control characters, before anything else
            headers = call_headers(request.headers.items())
            admit_topic(cluster, (headers or {}).get(AUTHORIZATION), topic, "publish")
        except MicroError as exc:
            return await refuse(request, exc)
        try:
            body = decode_body(
                request.headers.get("content-type"), await read_body(request, options.max_body)
            )
            with trio.fail_after(options.default_timeout):
                n = await cluster.publish(topic, body, headers=headers)
        except ValueError as exc:  # a topic the broker refuses by rules of its own
            return error_reply(BadRequest(str(exc), id="gateway"))
        except trio.TooSlowError:
            return error_reply(TooManyRequests(f"publishing on {topic} did not finish in time", id="gateway"))
        except MicroError as exc:
            state.record("publish", topic, trio.current_time(), exc)
            return error_reply(exc)
        return reply(request, {"topic": topic, "deliveries": n})

    readiness = Readiness(cluster, state)

    async def live(request: Request) -> Response:
        return reply(request, {"status": "live", "node": cluster.id}, kind=JSON)

    async def ready(request: Request) -> Response:
        body, status = await readiness.body()
        return reply(request, body, status=status, kind=JSON)

    async def openapi(request: Request) -> Response:
        try:
            with trio.move_on_after(options.default_timeout):
                await state.refresh()
                await state.describe()
        except MicroError:
            pass  # the last answer will do
        return reply(request, document(state.services, state.described), kind=JSON)

    async def docs(request: Request) -> Response:
        page = resources.files(__package__).joinpath("static/docs.html").read_bytes()
        return Response(page, media_type="text/html; charset=utf-8")

    async def guarded(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
        try:
            return await handler(request)
        except MicroError as exc:
            return error_reply(exc)
        except Exception:  # a bug here is still the error JSON, and logged, never a bare 500
            log.exception("gateway route %s failed", request.url.path)
            return error_reply(InternalServerError("internal error in the gateway", id="gateway"))

    def route(path: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(handler, request)

        return Route(path, traced(endpoint, method, path, cluster.node), methods=[method])

    async def no_route(request: Request, exc: Exception) -> Response:
        # Starlette's own answers (no route matched, a method the route lacks) in the same error
        # JSON as every other reply: a client never has to parse a second error format.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return error_reply(MicroError(f"{request.method} {request.url.path}", id="gateway", code=status))

    app = Starlette(
        lifespan=lifespan,
        exception_handlers={HTTPException: no_route},
        routes=[
            route("/health/live", live, "GET"),
            route("/health/ready", ready, "GET"),
            route("/livez", live, "GET"),
            route("/readyz", ready, "GET"),
            route("/openapi.json", openapi, "GET"),
            route("/docs", docs, "GET"),
            route("/api/publish/{topic:path}", publish, "POST"),
            route("/api/subscribe/{pattern:path}", bridges.subscribe_route(cluster, state), "GET"),
            route("/api/{service}/{endpoint:path}", call, "POST"),
            WebSocketRoute(
                "/api/{service}/{endpoint:path}", bridges.websocket_route(cluster, state, resolve)
            ),
            *dashboard_routes(state),
        ],
    )
    whole_paths(app.routes)
    return app


def whole_paths(routes: Iterable[BaseRoute]) -> None:
    r"""Make each route match the whole path or nothing.

    Starlette compiles ``/api/publish/{topic:path}`` to ``^/api/publish/(?P<topic>.*)$``, and in
    Python's ``re`` a ``$`` also matches before a final newline while ``.`` stops at one: the
    path ``/api/publish/orders.new\n`` published on ``orders.new`` (what the client sent was
    silently cut), and ``a\nb`` never reached the broker's subject check (a 404 instead of its
    400). ``\Z`` and ``DOTALL`` hand every character of the path to the handler, which judges it.
    """
    for route in routes:
        if isinstance(route, Route | WebSocketRoute):
            route.path_regex = re.compile(route.path_regex.pattern.removesuffix("$") + r"\Z", re.DOTALL)
