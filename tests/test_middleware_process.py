"""Middleware between two OS processes: client middleware here, server middleware in the peer
(tests/middleware_peer.py): header and body rewrites, a typed refusal, retries on 503."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from procs import python_process

from trimicro.actors import Call, Forbidden, Next, ask, start_node
from trimicro.actors.middleware import Retry
from trimicro.actors.supervision import Backoff

PEER = Path(__file__).resolve().parent / "middleware_peer.py"


async def test_middleware_on_both_sides_of_a_process_boundary(tmp_path: Path) -> None:
    async def client_tag(call: Call, call_next: Next) -> Any:
        call.headers["x-client"] = "here"
        return await call_next(call)

    async with (
        python_process(str(PEER), str(tmp_path), "svc") as peer,
        start_node("client", home=tmp_path, middleware=[client_tag]) as node,
    ):
        with trio.fail_after(30):
            first = await peer.line()
        assert first.startswith("address "), first
        await node.connect(first.split(" ", 1)[1])
        svc = node.remote_ref("svc", "svc")
        reply_headers: dict[str, str] = {}
        reply = await ask(
            svc, {"text": "hi"}, endpoint="echo", headers={"x-shout": "1"}, reply_headers=reply_headers
        )
        assert reply == {"text": "HI", "seen": "here"}  # the client's header, the server's rewrite
        assert reply_headers == {"x-served-by": "svc"}  # the class middleware, inside the node's
        with pytest.raises(Forbidden, match="denied by the peer's middleware"):
            await ask(svc, {"text": "x"}, endpoint="echo", headers={"x-deny": "1"})
        retry = Retry(attempts=3, backoff=Backoff(min_delay=0.001, max_delay=0.002))
        flaky = {"x-flaky": "1"}
        assert await ask(svc, {"text": "ok"}, endpoint="echo", headers=flaky, middleware=[retry]) == {
            "text": "ok",
            "seen": "here",
        }
