"""What a service announces about itself: its endpoints, their message schemas, idempotency.

An endpoint's request and response schemas are read from the handler's annotations (attrs
classes give ``{field: type}``), so ``trimicro describe`` can show a caller what to send.
Handlers marked :func:`idempotent` may be retried on another node even when the first attempt
may have been delivered (Go Micro leaves that choice to the endpoint too).
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from typing import Any, TypeVar

import attrs

from trimicro.actors import Actor
from trimicro.actors.lowlevel import handler_table

from .registry import Endpoint

__all__ = ["IDEMPOTENT", "describe_endpoints", "endpoint_annotations", "idempotent", "inspect_empty"]

F = TypeVar("F")

#: Endpoint metadata key (and value) that marks an endpoint as safe to retry after delivery.
IDEMPOTENT = "idempotent"


def idempotent(fn: F) -> F:
    """Mark a handler as idempotent: calling it twice does no more than once."""
    fn.__trimicro_idempotent__ = True  # type: ignore[attr-defined]
    return fn


def _type_name(t: Any) -> str:
    if t is None or t is type(None):
        return "null"
    if isinstance(t, type):
        return t.__name__
    return str(t).replace("typing.", "")


def _schema(t: Any) -> dict[str, str]:
    if isinstance(t, type) and attrs.has(t):
        try:
            hints = typing.get_type_hints(t)
        except Exception:
            hints = {}
        return {a.alias or a.name: _type_name(hints.get(a.name, a.type)) for a in attrs.fields(t) if a.init}
    if t is None or t is inspect_empty:
        return {}
    return {"": _type_name(t)}


inspect_empty = object()


def endpoint_annotations(cls: type[Actor]) -> Iterator[tuple[str, Any, Any, Any]]:
    """``(Service.method, handler, request type, return type)`` of each request-reply endpoint
    of an actor class (:data:`inspect_empty` where a handler has no such annotation)."""
    for name, (fn, _) in handler_table(cls).by_endpoint.items():
        if "." not in name:
            continue
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}
        params = [p for p in hints if p != "return"]
        yield name, fn, hints[params[0]] if params else inspect_empty, hints.get("return", inspect_empty)


def describe_endpoints(cls: type[Actor]) -> tuple[Endpoint, ...]:
    """The endpoints of an actor class as registry records (``Service.method`` names only)."""
    endpoints: list[Endpoint] = []
    for name, fn, request, returned in endpoint_annotations(cls):
        meta = {IDEMPOTENT: "true"} if getattr(fn, "__trimicro_idempotent__", False) else {}
        endpoints.append(Endpoint(name, _schema(request), _schema(returned), meta))
    for name in handler_table(cls).by_stream:
        if "." in name:
            endpoints.append(Endpoint(name, stream=True))
    return tuple(sorted(endpoints, key=lambda e: e.name))
