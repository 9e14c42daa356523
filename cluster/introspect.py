"""Full JSON Schemas of a node's endpoints, asked for over the wire (not carried in the registry).

The registry's endpoint records carry type *names* (``{"order": "Order"}``), which keeps a
service's record small enough for mDNS TXT records (each string at most 255 bytes, the whole
record a few KB). A nested attrs class needs its fields, and their fields, which does not fit.
So every cluster node runs a small system actor, :data:`DESCRIBE_PATH`, that answers
``describe {"service": name}`` with ``{endpoint: {"request": schema, "response": schema}}``
for the services it serves, built from the handlers' annotations when they are served; a
gateway asks one node of a service once per change of the service's record and falls back to
the type names if the node does not answer (an older node, or rules that refuse it).

:func:`json_schema` is the conversion: built-in scalars, ``list``/``tuple``/``set``,
``dict``, unions and ``Optional``, ``Literal``, and attrs classes as objects with their
fields (inlined; a class that contains itself is an ``object`` the second time), a field
with a default being optional. Unknown fields are refused (``additionalProperties: false``)
as the service's strict conversion refuses them.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import types
import typing
import uuid
from typing import Any

import attrs

from trimicro.actors import Actor

from .service import endpoint_annotations, inspect_empty

__all__ = ["DESCRIBE_NAME", "DESCRIBE_PATH", "Describe", "endpoint_schemas", "json_schema"]

#: The system actor every cluster node runs for :func:`endpoint_schemas` of what it serves.
DESCRIBE_NAME = "trimicro-describe"
DESCRIBE_PATH = f"/user/{DESCRIBE_NAME}"

_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": ["number", "integer"]},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    bytes: {"type": "string"},
    type(None): {"type": "null"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
    uuid.UUID: {"type": "string", "format": "uuid"},
    decimal.Decimal: {"type": "string"},
    dict: {"type": "object"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    set: {"type": "array"},
    frozenset: {"type": "array"},
}
_ARRAYS = {list, tuple, set, frozenset}


def json_schema(t: Any, seen: frozenset[type] = frozenset()) -> dict[str, Any]:
    """JSON Schema of a Python type; ``{}`` (anything) for what it cannot read: a schema that
    accepts too much is safe, one that refuses good input is not."""
    if t is None or t is type(None):
        return {"type": "null"}
    if t in _SCALARS:
        return dict(_SCALARS[t])
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Union or origin is types.UnionType:
        options = [json_schema(a, seen) for a in args]
        return {"anyOf": options} if all(options) else {}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in _ARRAYS or (isinstance(origin, type) and origin.__name__ in ("Sequence", "Iterable")):
        item = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is ...)) else None
        if origin is tuple and args and args[-1] is not ...:
            return {"type": "array", "prefixItems": [json_schema(a, seen) for a in args], "items": False}
        return {"type": "array", **({"items": json_schema(item, seen)} if item is not None else {})}
    if origin is dict or (isinstance(origin, type) and origin.__name__ in ("Mapping", "MutableMapping")):
        return {"type": "object", **({"additionalProperties": json_schema(args[1], seen)} if args else {})}
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return {"enum": [m.value for m in t]}
    if isinstance(t, type) and attrs.has(t):
        if t in seen:
            return {"type": "object"}
        return _attrs_schema(t, seen | {t})
    return {}


def _attrs_schema(cls: type, seen: frozenset[type]) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: say only that it is an object
        return {"type": "object"}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for a in attrs.fields(cls):
        if not a.init:
            continue
        key = a.alias or a.name
        properties[key] = json_schema(hints.get(a.name, a.type), seen)
        if a.default is attrs.NOTHING:
            required.append(key)
    schema: dict[str, Any] = {
        "type": "object",
        "title": cls.__name__,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def endpoint_schemas(cls: type[Actor]) -> dict[str, dict[str, Any]]:
    """``{Service.method: {"request": schema, "response": schema}}`` of an actor class's
    request-reply endpoints (``{}``: anything, where a handler has no annotation)."""
    return {
        name: {
            "request": {} if request is inspect_empty else json_schema(request),
            "response": {} if returned is inspect_empty else json_schema(returned),
        }
        for name, _, request, returned in endpoint_annotations(cls)
    }


class Describe(Actor):
    """The node's endpoint describer (at :data:`DESCRIBE_PATH`): the full schemas of the
    services this node serves, from ``schemas`` (the cluster fills it as it serves them)."""

    def __init__(self, schemas: dict[str, dict[str, dict[str, Any]]]) -> None:
        self.schemas = schemas

    async def describe(self, body: Any) -> dict[str, Any]:
        service = body.get("service") if isinstance(body, dict) else None
        return self.schemas.get(str(service), {})
