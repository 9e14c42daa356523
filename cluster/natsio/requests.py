"""Request/reply from trio with no asyncio task per request: the NATS plugins' hot path.

``Bridge.call`` runs a coroutine of nats-py as a task of the loop; nats-py's own ``request``
then adds a future, a second timer and two more turns of the loop before the answer is seen.
For the round trips that every store write, store read and acknowledged publish makes, this
module does what nats-py's request does, with its public calls, and nothing more: one
subscription per connection on ``<inbox>.*`` takes the answers; a request publishes with a
reply subject of its own (the publish runs at once in the trio task, on the loop's behalf: it
only appends to the client's buffer, which the loop writes before trio waits for I/O), and the
answer, parsed as nats-py parses it, finishes the waiting trio task (:class:`~.hosted.Waiter`).
Measured (``benchmarks/bench_nats.py``, CPU per operation): see ``docs/performance.md``, "NATS".
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import outcome
import trio

from trimicro.mailbox.errors import RequestTimeout, ServiceUnavailable

from .hosted import Waiter

if TYPE_CHECKING:
    from . import NatsConnection

__all__ = ["Requests"]


class Requests:
    """Requests over one :class:`~trimicro.cluster.natsio.NatsConnection` (module docstring)."""

    def __init__(self, conn: NatsConnection) -> None:
        self.conn = conn
        self._prefix = ""
        self._waiting: dict[str, Waiter] = {}
        self._sequence = 0
        self._lock = trio.Lock()

    async def _start(self) -> None:
        async with self._lock:
            if self._prefix:
                return
            nc = self.conn.nc
            prefix = f"{nc.new_inbox()}."

            async def subscribe() -> None:
                await nc.subscribe(f"{prefix}*", cb=self._answered)

            await self.conn.run(subscribe, "subscribe")
            self._prefix = prefix

    async def _answered(self, msg: Any) -> None:  # on the loop
        waiter = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if waiter is not None:
            waiter.finish(outcome.Value(msg))

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None, what: str = "request"
    ) -> Any:
        """The answer (a nats-py ``Msg``) to ``payload`` sent on ``subject``, within the
        connection's deadline; :class:`RequestTimeout` past it."""
        conn = self.conn
        if conn.nc is None:
            await conn.connect()
        if not self._prefix:
            await self._start()
        hosted = conn.bridge.hosted
        if conn.bridge.closed:
            raise ServiceUnavailable(f"{conn.purpose} is closed", id="nats")
        self._sequence += 1
        token = str(self._sequence)
        timeout = conn.options.timeout
        waiting = self._waiting

        def abort() -> None:
            waiting.pop(token, None)

        def expire() -> None:
            if waiting.pop(token, None) is not None:
                error = RequestTimeout(f"{conn.purpose}: {what}: no answer in {timeout:g} s", id="nats")
                waiter.finish(outcome.Error(error))

        waiter = Waiter(hosted, abort, expire)
        waiting[token] = waiter
        try:
            hosted.run_now(conn.nc.publish(subject, payload, reply=self._prefix + token, headers=headers))
        except BaseException:
            waiting.pop(token, None)
            raise
        hosted.add_deadline(waiter, timeout)
        hosted.mark()
        msg = await waiter.wait()
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            raise ServiceUnavailable(f"{conn.purpose}: {what}: no responders on {subject}", id="nats")
        return msg

    async def js_publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> Any:
        """``js.publish``: the server's ``PubAck``, or nats-py's ``APIError`` it answered."""
        from nats.js.api import PubAck
        from nats.js.errors import APIError

        msg = await self.request(subject, payload, headers, "publish")
        answer = json.loads(msg.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        return PubAck.from_response(answer)

    async def last_of(self, stream: str, subject: str) -> Any:
        """The last message of ``subject`` in ``stream`` (a ``RawStreamMsg``, headers parsed),
        as ``JetStreamManager.get_msg(stream, subject=...)`` reads it (not the direct form);
        ``nats.js.errors.NotFoundError`` if there is none."""
        from nats.aio.client import _CRLF_LEN_, NATS_HDR_LINE_SIZE
        from nats.js.api import RawStreamMsg
        from nats.js.errors import APIError

        request = json.dumps({"last_by_subj": subject}).encode()
        msg = await self.request(f"$JS.API.STREAM.MSG.GET.{stream}", request, None, "read")
        answer = json.loads(msg.data)
        if "error" in answer:
            raise APIError.from_error(answer["error"])
        raw = RawStreamMsg.from_response(answer["message"])
        if raw.hdrs:
            parsed = self.conn.js._hdr_parser.parsebytes(
                base64.b64decode(raw.hdrs)[NATS_HDR_LINE_SIZE + _CRLF_LEN_ :]
            )
            raw.headers = dict(parsed.items()) or None
        raw.data = base64.b64decode(raw.data) if raw.data else None
        return raw
