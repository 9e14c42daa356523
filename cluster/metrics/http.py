"""A tiny HTTP/1.1 responder on trio for ``GET /metrics``: h11 parses, trio moves the bytes.

A scrape endpoint needs one route, so this is not the gateway's ASGI stack: each connection gets
one response and is closed (scrapers reconnect every 15 s or so anyway), which keeps the state
per connection to one h11 state machine. Everything is bounded: at most
:data:`MAX_CONNECTIONS` at once (more are closed at once, unanswered), a request head of at
most :data:`MAX_HEAD` bytes, :data:`DEADLINE` seconds per connection, and no request body read.
The address is the user's choice (``trimicro run --metrics``); one without a host binds to
127.0.0.1, so nothing is exposed off the machine unless asked for.

A document is rendered at most once per :data:`MAX_AGE` seconds per format (:class:`RenderCache`):
a render walks every actor's mailbox, so a storm of scrapes (several Prometheus servers, a
script in a loop) costs the node one render a second, not one each. A render that fails is
answered 500 and logged (rate-limited); it never reaches the node's nursery.
"""

from __future__ import annotations

from collections.abc import Callable

import h11
import trio

from trimicro.mailbox.logs import get_logger

__all__ = [
    "DEADLINE",
    "MAX_AGE",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "RenderCache",
    "parse_address",
    "serve_metrics",
]

log = get_logger(__package__)

#: Connections served at once; a scraper needs one.
MAX_CONNECTIONS = 8
#: Largest request head (request line and headers) read.
MAX_HEAD = 16 * 1024
#: Seconds one connection may take, from accept to the last byte of the response.
DEADLINE = 10.0

#: Seconds a rendered document answers later scrapes in the same format.
MAX_AGE = 1.0
#: Accept headers whose documents are kept (scrapers send one or two; more clear the cache).
MAX_FORMATS = 4

Render = Callable[[str], tuple[bytes, str]]


class RenderCache:
    """``render`` called at most once per ``max_age`` seconds (trio's clock) per ``Accept``
    header; at most :data:`MAX_FORMATS` documents are kept."""

    def __init__(self, render: Render, max_age: float = MAX_AGE) -> None:
        self.render = render
        self.max_age = max_age
        self._documents: dict[str, tuple[float, bytes, str]] = {}

    def __call__(self, accept: str) -> tuple[bytes, str]:
        now = trio.current_time()
        kept = self._documents.get(accept)
        if kept is not None and now - kept[0] < self.max_age:
            return kept[1], kept[2]
        body, content_type = self.render(accept)
        if accept not in self._documents and len(self._documents) >= MAX_FORMATS:
            self._documents.clear()
        self._documents[accept] = (now, body, content_type)
        return body, content_type


def parse_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``":9464"`` or ``"9464"`` (these two on
    127.0.0.1) as (host, port); :class:`ValueError` for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep:
        host, port = "", address
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"a metrics address is HOST:PORT (e.g. 127.0.0.1:9464), not {address!r}")
    return host or "127.0.0.1", int(port)


def _response(status: int, body: bytes, content_type: str, head_only: bool = False) -> list[h11.Event]:
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
        ("cache-control", "no-store"),
    ]
    events: list[h11.Event] = [h11.Response(status_code=status, headers=headers)]
    if not head_only:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    return events


async def _request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The request head, or ``None`` (the client closed, or sent too much)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
            continue
        return event if isinstance(event, h11.Request) else None


def _answer(request: h11.Request, render: Render) -> list[h11.Event]:
    path = request.target.split(b"?", 1)[0]
    if path != b"/metrics":
        return _response(404, b"not found: metrics are at /metrics\n", "text/plain; charset=utf-8")
    if request.method not in (b"GET", b"HEAD"):
        return _response(405, b"GET or HEAD\n", "text/plain; charset=utf-8")
    accept = ", ".join(v.decode("latin-1") for k, v in request.headers if k == b"accept")
    try:
        body, content_type = render(accept)
    except Exception:  # a bug in a snapshot must not take the node down with the scrape
        log.exception("rendering /metrics failed")
        return _response(500, b"metrics unavailable: see the node's log\n", "text/plain; charset=utf-8")
    return _response(200, body, content_type, head_only=request.method == b"HEAD")


async def _serve_one(stream: trio.SocketStream, render: Render, limiter: trio.CapacityLimiter) -> None:
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:  # too many at once: close, unanswered
        await stream.aclose()
        return
    try:
        with trio.move_on_after(DEADLINE):
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
            try:
                request = await _request(stream, conn)
                events = _answer(request, render) if request is not None else None
            except h11.RemoteProtocolError as exc:
                events = _response(exc.error_status_hint, b"bad request\n", "text/plain; charset=utf-8")
            if events is not None:
                await stream.send_all(b"".join(conn.send(e) or b"" for e in events))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass  # the scraper went away
    finally:
        limiter.release()
        await stream.aclose()


async def serve_metrics(
    address: str,
    render: Render,
    *,
    max_age: float = MAX_AGE,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``render``'s document at ``http://ADDRESS/metrics`` until cancelled, rendered at
    most once per ``max_age`` seconds (:class:`RenderCache`); tells ``task_status`` the address
    it bound (``host:port``, with the port chosen for port 0)."""
    host, port = parse_address(address)
    render = RenderCache(render, max_age)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    shown = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handler(stream: trio.SocketStream) -> None:
        await _serve_one(stream, render, limiter)

    async with trio.open_nursery() as nursery:
        task_status.started(shown)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
