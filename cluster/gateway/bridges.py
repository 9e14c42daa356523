"""Streams and subscriptions over HTTP: Server-Sent Events one way, a WebSocket both ways.

Flow control is end to end and nothing queues without a bound. An SSE bridge sends one event,
waits for the socket to take it (the server's ``send`` waits on the client's TCP window) and only
then takes the next item from the stream, whose credit (:mod:`trimicro.actors` streams) stops the
service after ``window`` unread items; a subscription's buffer holds ``queue`` messages, and then
its slow-subscriber policy decides, as the broker's does (:mod:`.subscriptions`: the publishers
wait, the oldest messages are dropped, or the subscription ends). A WebSocket's input
goes to ``stream.send``, which waits for the service's credit, so a slow service slows the
browser's reads too. Every bridge ends after ``max_stream`` seconds and when either side goes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from trimicro.actors import BadRequest, InternalServerError, MicroError
from trimicro.mailbox.logs import get_logger

from .access import admit_call, admit_topic
from .codec import JSON, encode_body, error_body, http_status
from .headers import call_headers
from .names import checked_pattern
from .responses import error_reply
from .subscriptions import Dropped, choose_policy, subscribed

if TYPE_CHECKING:
    from ..cluster import Cluster
    from .state import GatewayState

__all__ = ["EventStream", "sse_event", "stream_events", "subscribe_route", "websocket_route"]

log = get_logger(__package__)


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One Server-Sent Event carrying ``data`` as JSON (one ``data:`` line: JSON has no newlines)."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, default=str, separators=(',', ':'))}\n\n".encode()


class EventStream(Response):
    """An SSE response fed by ``source`` (an async context manager yielding an async iterator
    of already-encoded events). ``source`` is opened before the status line, so a refusal (404,
    401, 403) is still an ordinary error reply; a failure after that is a final ``error`` event."""

    def __init__(
        self, source: Callable[[], AbstractAsyncContextManager[AsyncIterator[bytes]]], limit: float | None
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.source = source
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False
        failed: MicroError | None = None
        try:
            with trio.move_on_after(self.limit if self.limit is not None else float("inf")):
                async with self.source() as events, trio.open_nursery() as nursery:

                    async def watch() -> None:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watch)
                    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
                    await send({"type": "http.response.start", "status": 200, "headers": headers})
                    started = True
                    try:
                        async for chunk in events:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    except MicroError as exc:  # kept: out of the nursery it would be an ExceptionGroup
                        failed = exc
                    except Exception:  # a bug still ends the stream with an event, not a cut body
                        log.exception("an event stream failed after its status line")
                        failed = InternalServerError("internal error in the gateway", id="gateway")
                    nursery.cancel_scope.cancel()
        except MicroError as exc:  # opening the source (a refusal), or closing it
            failed = exc
        if failed is not None and not started:
            err = error_body(failed)
            await send(
                {
                    "type": "http.response.start",
                    "status": http_status(err),
                    "headers": [(b"content-type", JSON.encode())],
                }
            )
            await send({"type": "http.response.body", "body": encode_body(JSON, err.to_fields())})
            return
        if failed is not None:
            last = sse_event(failed.to_fields(), "error")
            await send({"type": "http.response.body", "body": last, "more_body": True})
        if started:
            await send({"type": "http.response.body", "body": b""})


def stream_events(
    cluster: Cluster,
    state: GatewayState,
    service: str,
    endpoint: str,
    request: Any,
    headers: dict[str, str] | None,
) -> EventStream:
    """A server-to-client stream as SSE: the request opens it, the caller's side is closed at once."""

    @asynccontextmanager
    async def source() -> AsyncIterator[AsyncIterator[bytes]]:
        async with cluster.open_stream(service, endpoint, request, headers=headers) as stream:
            stream.close_send()

            async def events() -> AsyncIterator[bytes]:
                async for item in stream:
                    yield sse_event(item)
                yield sse_event(None, "end")

            yield events()

    return EventStream(source, state.options.max_stream)


def subscribe_route(cluster: Cluster, state: GatewayState) -> Callable[[Request], Awaitable[Response]]:
    """``GET /api/subscribe/{pattern}``: the topic's messages as SSE, for the token's account.

    The pattern is checked against the broker's syntax and the topic rules first (400, 401, 403
    as a reply), then each message against its own topic, as a subscribing node checks them:
    the gateway's node receives the messages, the token decides which the client sees.
    ``?queue=`` joins a queue group; ``?policy=`` is what a client that reads too slowly costs
    (:mod:`.subscriptions`: the publishers wait, the oldest messages go, or the subscription ends).
    """
    options = state.options

    async def subscribe(request: Request) -> Response:
        pattern = request.path_params["pattern"]
        token = (call_headers(request.headers.items()) or {}).get("authorization")
        try:
            checked_pattern(pattern)
            admit_topic(cluster, token, pattern, "subscribe")
            policy = choose_policy(request.query_params.get("policy"), options.subscriber_policy)
        except MicroError as exc:
            return error_reply(exc)
        group = request.query_params.get("queue") or None

        @asynccontextmanager
        async def source() -> AsyncIterator[AsyncIterator[bytes]]:
            async with subscribed(cluster, pattern, queue=group, size=options.queue, policy=policy) as buffer:

                async def events() -> AsyncIterator[bytes]:
                    async for item in buffer.events():
                        if isinstance(item, Dropped):
                            yield sse_event({"dropped": item.count}, "dropped")
                            continue
                        try:
                            admit_topic(cluster, token, item.topic, "subscribe")
                        except MicroError:
                            continue
                        yield sse_event({"topic": item.topic, "body": item.body, "publisher": item.publisher})

                yield events()

        return EventStream(source, options.max_stream)

    return subscribe


def websocket_route(
    cluster: Cluster, state: GatewayState, resolve: Callable[[str, str], Awaitable[str]]
) -> Callable[[WebSocket], Awaitable[None]]:
    """A stream endpoint over a WebSocket: each text message in is one JSON item sent to the
    service, each item out one text message; ``?request=`` (JSON) is the stream's opening
    request. An empty text message ends the caller's direction (``close_send``: a WebSocket
    has no half-close of its own); the socket closing cancels the stream; the service ending
    its side closes the socket (1000), an error is a last ``{"error": ...}``
    message and close code 1011."""
    options = state.options

    async def bridge(ws: WebSocket) -> None:
        service, endpoint = ws.path_params["service"], ws.path_params["endpoint"]
        try:
            endpoint = await resolve(service, endpoint)
            raw = ws.query_params.get("request")
            request = json.loads(raw) if raw else None
            headers = call_headers(ws.headers.items())
            admit_call(cluster, headers, service, endpoint)
        except (MicroError, ValueError) as exc:
            await ws.close(code=1008, reason=str(exc)[:120])
            return
        await ws.accept()
        # What the client sent wrong, kept here rather than raised from the reading task: out
        # of a nursery it would come wrapped in an ExceptionGroup, past ``except MicroError``.
        refused: list[MicroError] = []
        try:
            with trio.move_on_after(options.max_stream if options.max_stream is not None else float("inf")):
                async with (
                    cluster.open_stream(service, endpoint, request, headers=headers) as stream,
                    trio.open_nursery() as nursery,
                ):

                    async def inbound() -> None:
                        try:
                            while True:
                                message = await ws.receive()
                                if message["type"] == "websocket.disconnect":
                                    raise WebSocketDisconnect(message.get("code", 1000))
                                text = message.get("text")
                                if text is None:  # a binary frame: this bridge speaks JSON text
                                    raise BadRequest("send JSON in text frames, not binary", id="gateway")
                                if len(text) > options.max_body:
                                    raise BadRequest("message too large", id="gateway")
                                if not text:
                                    stream.close_send()
                                    return
                                await stream.send(json.loads(text))
                        except WebSocketDisconnect:
                            nursery.cancel_scope.cancel()
                        except MicroError as exc:
                            refused.append(exc)
                            nursery.cancel_scope.cancel()
                        except ValueError:
                            refused.append(
                                BadRequest("a WebSocket message must be one JSON value", id="gateway")
                            )
                            nursery.cancel_scope.cancel()

                    nursery.start_soon(inbound)
                    async for item in stream:
                        await ws.send_text(json.dumps(item, default=str))
                    nursery.cancel_scope.cancel()
            if refused:
                raise refused[0]
            await ws.close(code=1000)
        except MicroError as exc:
            try:
                await ws.send_text(json.dumps({"error": exc.to_fields()}))
                await ws.close(code=1011)
            except (WebSocketDisconnect, RuntimeError):
                pass
        except WebSocketDisconnect:
            pass

    return bridge
