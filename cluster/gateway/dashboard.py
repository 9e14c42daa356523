"""The dashboard: one static page (shipped in the package, no CDN, no build step) and the two
routes it reads, a JSON snapshot and the same snapshot pushed over Server-Sent Events whenever
something changes (a member's state, the services, an error, a dead letter), at most every
``PUSH_EVERY`` seconds and at least every ``IDLE_PUSH`` (for the request rates)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import trio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .bridges import EventStream, sse_event
from .codec import JSON, encode_body
from .state import GatewayState

__all__ = ["IDLE_PUSH", "PUSH_EVERY", "routes"]

PUSH_EVERY = 0.25
IDLE_PUSH = 2.0


def routes(state: GatewayState) -> list[BaseRoute]:
    async def page(request: Request) -> Response:
        html = resources.files(__package__).joinpath("static/dashboard.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8")

    async def snapshot(request: Request) -> Response:
        return Response(encode_body(JSON, state.snapshot()), media_type=JSON)

    async def events(request: Request) -> Response:
        @asynccontextmanager
        async def source() -> AsyncIterator[AsyncIterator[bytes]]:
            async def pushes() -> AsyncIterator[bytes]:
                while True:
                    yield sse_event(state.snapshot(), "state")
                    with trio.move_on_after(IDLE_PUSH):
                        await state.wait_changed()
                    await trio.sleep(PUSH_EVERY)  # coalesce a burst of changes into one push

            yield pushes()

        return EventStream(source, state.options.max_stream)

    return [
        Route("/dashboard", page, methods=["GET"]),
        Route("/dashboard/state", snapshot, methods=["GET"]),
        Route("/dashboard/events", events, methods=["GET"]),
    ]
