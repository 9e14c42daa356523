"""Schemathesis hooks for the gateway's fuzz test: read msgpack and CBOR replies as the gateway's
clients do, so that those replies are checked against the document too (without them,
schemathesis skips their schemas with a warning)."""

from __future__ import annotations

from typing import Any

import cbor2
import msgpack
import schemathesis


@schemathesis.deserializer("application/msgpack")
def from_msgpack(ctx: Any, response: Any) -> Any:
    return msgpack.unpackb(response.content, raw=False)


@schemathesis.deserializer("application/cbor")
def from_cbor(ctx: Any, response: Any) -> Any:
    return cbor2.loads(response.content)
