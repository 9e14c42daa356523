"""Metadata propagation: which headers of the request being served travel on the calls its handler makes.

Go Micro copies a request's incoming metadata into the outgoing context of the calls its handler
makes, so a trace id, a tenant or a caller's token follows a request down a chain of services.
This module is that rule for trimicro (docs/protocol.md §3.5 states it for the wire):

- While an actor handles a message that carried headers, every ``tell``, ``try_tell``, ``ask``,
  stream and ``publish`` it makes carries those headers onwards, local or remote alike (so a
  local hop in the middle of a chain loses nothing).
- Except the *hop-by-hop* ones, which describe one exchange and would be wrong on the next
  (:data:`HOP_HEADERS`, and any key starting with one of :data:`RESERVED_PREFIXES`).
- Headers the caller passes explicitly win over propagated ones of the same key.
- A node may restrict the rest (``start_node(propagate_headers=...)``: an allow-list of keys, or a
  predicate on the key); ``authorization`` always travels, as the auth model needs (the next
  service judges the original caller, docs/auth.md), and so does the W3C trace context
  (:data:`TRACE_CONTEXT`: ``traceparent``, ``tracestate``), so a trace goes on through a node
  whatever its rule, and through one that traces nothing itself (no OpenTelemetry SDK): its
  calls carry the context it received. A node that traces replaces it with its own span's
  (:mod:`trimicro.actors.tracing`).
- At most :data:`MAX_PROPAGATED` headers and :data:`MAX_PROPAGATED_BYTES` bytes propagate, half of
  what a receiver accepts in one envelope, so that the caller's own headers still fit.

The check costs one context-variable read when the message being handled had no headers.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TypeAlias

from .lifecycle import get_cell
from .status import get_item

__all__ = [
    "AUTHORIZATION",
    "HOP_HEADERS",
    "MAX_PROPAGATED",
    "MAX_PROPAGATED_BYTES",
    "RESERVED_PREFIXES",
    "TRACE_CONTEXT",
    "HeaderRule",
    "forward_auth",
    "header_rule",
]

#: The metadata key carrying the caller's bearer token; always forwarded on calls made while serving.
AUTHORIZATION = "authorization"

#: Keys that describe one exchange (flow control, deadline, encoding, the connection), never
#: carried onwards: a stream's ``credit`` or an HTTP gateway's ``content-length`` on a nested
#: call would be wrong there.
HOP_HEADERS = frozenset(
    {
        "credit",
        "timeout",
        "deadline",
        "content-type",
        "content-length",
        "content-encoding",
        "accept",
        "accept-encoding",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

#: Key prefixes that are hop-by-hop too: HTTP/2 pseudo-headers (``:path``) and keys this
#: protocol reserves for per-hop use (``trimicro-``).
RESERVED_PREFIXES = (":", "trimicro-")

#: The W3C Trace Context keys, which every rule lets travel (still within the bounds below).
TRACE_CONTEXT = frozenset({"traceparent", "tracestate"})

#: What always travels, whatever the rule. Alone (a traced request), they are copied as they
#: are when they are as short as W3C makes them (a traceparent is 55 characters; a tracestate
#: is recommended to stay within 512); longer ones take the general path, and its bounds.
_ALWAYS = TRACE_CONTEXT | {AUTHORIZATION}
_MAX_TRACESTATE = 512
_MAX_TRACEPARENT = 64

#: At most this many headers propagate (a receiver accepts 64 in one envelope).
MAX_PROPAGATED = 32
#: At most this many bytes of keys and values propagate (a receiver accepts 8 KiB).
MAX_PROPAGATED_BYTES = 4 * 1024

#: What ``start_node(propagate_headers=)`` takes: ``None`` for the default rule, a collection of
#: keys (an allow-list; empty: only ``authorization`` and the trace context), or a predicate on the key.
HeaderRule: TypeAlias = "Collection[str] | Callable[[str], bool] | None"


def _default(key: str) -> bool:
    return key not in HOP_HEADERS and not key.startswith(RESERVED_PREFIXES)


def header_rule(rule: HeaderRule) -> Callable[[str], bool]:
    """The predicate a node applies to each inbound key (hop-by-hop keys are always refused)."""
    if rule is None:
        return _default
    if callable(rule):
        check = rule
        return lambda key: key in TRACE_CONTEXT or (_default(key) and bool(check(key)))
    if isinstance(rule, str):
        raise TypeError("propagate_headers takes a collection of keys, not one string")
    if not all(isinstance(k, str) for k in rule):
        raise TypeError("propagate_headers keys are strings")
    allowed = frozenset(k for k in rule if _default(k)) | TRACE_CONTEXT
    return allowed.__contains__


def forward_auth(headers: dict[str, str] | None) -> dict[str, str] | None:
    """The headers a call made now carries: ``headers`` plus what propagates from the message
    being handled (see the module docstring). Returns ``headers`` itself when nothing does."""
    item = get_item()
    if item is None:
        return headers
    inbound = item.headers
    if not inbound:
        return headers
    return propagate(inbound, headers)


def propagate(inbound: dict[str, str], headers: dict[str, str] | None) -> dict[str, str] | None:
    """``headers`` plus the keys of ``inbound`` the current node's rule lets through."""
    if len(inbound) == 1 and AUTHORIZATION in inbound:  # the common case with auth on
        if headers and AUTHORIZATION in headers:
            return headers
        out = dict(headers) if headers else {}
        out[AUTHORIZATION] = inbound[AUTHORIZATION]
        return out
    if (
        inbound.keys() <= _ALWAYS
        and len(inbound.get("tracestate", "")) <= _MAX_TRACESTATE
        and len(inbound.get("traceparent", "")) <= _MAX_TRACEPARENT
    ):
        # Only keys every rule lets travel (a traced request, with auth on or off): all go.
        out = dict(inbound)
        if headers:
            out.update(headers)
        return out
    cell = get_cell()
    rule: Callable[[str], bool] = _default if cell is None else cell.node.propagate
    out = {}
    count = size = 0
    for key, value in inbound.items():
        if key == AUTHORIZATION:
            out[key] = value  # always, and outside the bound: auth depends on it
            continue
        if not rule(key) or (headers and key in headers):
            continue  # refused by the rule, or the caller's own value wins
        count += 1
        size += len(key.encode()) + len(value.encode())
        if count > MAX_PROPAGATED or size > MAX_PROPAGATED_BYTES:
            continue  # bounded: what is left would not fit beside the caller's own headers
        out[key] = value
    if not out:
        return headers
    if headers:
        out.update(headers)
    return out
