"""A node with server middleware in its own OS process, for tests/test_middleware_process.py.

Usage: ``python tests/middleware_peer.py HOME NAME``. Listens on 127.0.0.1 (a free port), spawns
``svc``, prints ``address <host:port>`` and serves until killed. Its node middleware (server
side) refuses calls carrying ``x-deny`` with 403, answers the first two calls carrying
``x-flaky`` with 503, and upper-cases the ``text`` of a body carrying ``x-shout``; the actor's
class middleware then tags the answer's metadata.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from trimicro.actors import Actor, Call, Forbidden, Next, ServiceUnavailable, start_node
from trimicro.actors.middleware import Side


def node_middleware() -> Any:
    flaky = [0]

    async def guard(call: Call, call_next: Next) -> Any:
        if call.side is Side.SERVER:
            if "x-deny" in call.headers:
                raise Forbidden("denied by the peer's middleware")
            if "x-flaky" in call.headers and flaky[0] < 2:
                flaky[0] += 1
                raise ServiceUnavailable(f"flaky {flaky[0]}")
            if "x-shout" in call.headers:
                call.message = {**call.message, "text": call.message["text"].upper()}
        return await call_next(call)

    return guard


async def tag(call: Call, call_next: Next) -> Any:
    result = await call_next(call)
    call.actor.context.reply_headers["x-served-by"] = "svc"
    return result


class Svc(Actor):
    middleware = (tag,)

    async def echo(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"text": body["text"], "seen": self.context.headers.get("x-client", "")}


async def main(home: str, name: str) -> None:
    async with start_node(
        name, listen="127.0.0.1:0", home=Path(home), middleware=[node_middleware()]
    ) as node:
        await node.spawn(Svc, name="svc")
        print(f"address {node.address}", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
