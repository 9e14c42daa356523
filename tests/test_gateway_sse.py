"""An SSE response that fails after its 200 went out ends with an ``error`` event and a proper
end of the body, whatever the failure (the service's error in tests/test_gateway.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from trimicro.actors import NotFound
from trimicro.cluster.gateway.bridges import EventStream, sse_event


async def run(stream: EventStream) -> list[dict[str, Any]]:
    """What ``stream`` sends to a client that stays."""
    sent: list[dict[str, Any]] = []
    stay = trio.Event()

    async def receive() -> dict[str, Any]:
        await stay.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with trio.fail_after(10):
        await stream({"type": "http"}, receive, send)
    return sent


def failing_after_one(error: Exception) -> EventStream:
    @asynccontextmanager
    async def source() -> AsyncIterator[AsyncIterator[bytes]]:
        async def events() -> AsyncIterator[bytes]:
            yield sse_event({"n": 1})
            raise error

        yield events()

    return EventStream(source, None)


async def test_a_failure_after_the_status_line_is_an_error_event_then_the_end_of_the_body() -> None:
    for error, code in ((NotFound("gone", id="svc"), 404), (RuntimeError("a bug"), 500)):
        sent = await run(failing_after_one(error))
        assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 3
        assert sent[0]["status"] == 200
        assert sent[1]["body"] == sse_event({"n": 1})
        head, data = sent[2]["body"].decode().split("\n", 1)
        assert head == "event: error" and data.endswith("\n\n")
        fields = json.loads(data.removeprefix("data: "))
        assert set(fields) == {"id", "code", "detail", "status"} and fields["code"] == code
        assert sent[3] == {"type": "http.response.body", "body": b""}  # the chunked body's end
        assert all(m.get("more_body") for m in sent[1:3])
