"""Which HTTP request headers become the call's metadata, and the call's deadline.

The gateway is the first hop of a call, so the metadata rule of :mod:`trimicro.actors` applies
to what it forwards as to any onward call: hop-by-hop keys (``content-type``, ``timeout``,
``connection``...) stay behind, ``authorization`` always travels (the service's node judges the
caller's token), and at most as many keys and bytes as the rule lets propagate. Headers that
only describe the browser (cookies, ``user-agent``, ``sec-*``) are not the service's business:
a cookie forwarded to every service would hand the user's session to each of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from trimicro.actors import BadRequest
from trimicro.actors.lowlevel import AUTHORIZATION, MAX_PROPAGATED, MAX_PROPAGATED_BYTES, header_rule

__all__ = ["BROWSER_HEADERS", "TIMEOUT_PATTERN", "call_headers", "deadline"]

#: Request headers that describe the HTTP client, never forwarded.
BROWSER_HEADERS = frozenset(
    {
        "cookie",
        "user-agent",
        "origin",
        "referer",
        "accept-language",
        "cache-control",
        "pragma",
        "dnt",
        "priority",
        "x-forwarded-for",
        "forwarded",
    }
)
_FORWARDS = header_rule(None)


def call_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str] | None:
    """The metadata a call made for this HTTP request carries (``None`` if none)."""
    out: dict[str, str] = {}
    count = size = 0
    for raw_key, value in pairs:
        key = raw_key.lower()
        if key == AUTHORIZATION:
            out[key] = value
            continue
        if key in BROWSER_HEADERS or key.startswith("sec-") or not _FORWARDS(key):
            continue
        count += 1
        size += len(key) + len(value)
        if count > MAX_PROPAGATED or size > MAX_PROPAGATED_BYTES:
            continue
        out[key] = value
    return out or None


#: A ``Timeout`` header: a positive decimal number of seconds (``"0"`` is refused like any
#: deadline already passed), or empty for the default. The OpenAPI document states this pattern,
#: so what it promises and what the gateway takes are one thing.
TIMEOUT_PATTERN = r"^(|[0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]*\.[0-9]*[1-9][0-9]*)$"
_TIMEOUT = re.compile(TIMEOUT_PATTERN.removesuffix("$") + r"\Z")


def deadline(header: str | None, default: float, longest: float) -> float:
    """The call's timeout from a ``Timeout`` header (seconds, as Go Micro's), capped at ``longest``."""
    if header is None or not header.strip():
        return min(default, longest)
    header = header.strip()
    if not _TIMEOUT.match(header):
        raise BadRequest(f"Timeout must be a positive number of seconds, got {header!r}", id="gateway")
    return min(float(header), longest)
