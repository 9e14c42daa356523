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
import math
import re
import types
import typing
import uuid
from collections.abc import Collection
from typing import Any

import attrs

from trimicro.actors import Actor

from .service import endpoint_annotations, inspect_empty

__all__ = ["DESCRIBE_NAME", "DESCRIBE_PATH", "Describe", "constrained", "endpoint_schemas", "json_schema"]

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
        if a.validator is not None and a.converter is None:  # a converter's input is not checked
            properties[key] = constrained(properties[key], a.validator)
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


# attrs' validator classes are private: their types are taken from the public factories.
def _noop(inst: Any, attribute: Any, value: Any) -> None:
    """A validator that accepts anything (only its type's validators' types are wanted)."""


_NUMBER: type[Any] = type(attrs.validators.gt(0))
_MIN_LEN: type[Any] = type(attrs.validators.min_len(0))
_MAX_LEN: type[Any] = type(attrs.validators.max_len(0))
_IN: type[Any] = type(attrs.validators.in_(()))
_MATCHES: type[Any] = type(attrs.validators.matches_re(""))
_AND: type[Any] = type(attrs.validators.and_())
_OPTIONAL: type[Any] = type(attrs.validators.optional(_noop))
_DEEP_ITERABLE: type[Any] = type(attrs.validators.deep_iterable(_noop))
_DEEP_MAPPING: type[Any] = type(attrs.validators.deep_mapping(_noop, _noop))
_BOUNDS = {">": "exclusiveMinimum", ">=": "minimum", "<": "exclusiveMaximum", "<=": "maximum"}
_LENGTHS = {"string": "Length", "array": "Items", "object": "Properties"}
#: Two validators bounding the same way: the stricter holds.
_TIGHTER: dict[str, Any] = {
    **{k: max for k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")},
    **{k: min for k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")},
}
_JSON_SCALARS = (str, int, float, bool, type(None))
#: Longest ``in_`` that becomes an ``enum`` (the document stays small).
MAX_ENUM = 256


def constrained(schema: dict[str, Any], validator: Any) -> dict[str, Any]:
    """``schema`` with the keywords that say what attrs' ``validator`` checks, where JSON Schema
    can say it: ``gt``/``ge``/``lt``/``le`` as ``exclusiveMinimum``/``minimum``/...,
    ``min_len``/``max_len`` as ``minLength``/``minItems``/``minProperties`` (by the schema's
    type), ``in_`` as ``enum``, ``matches_re`` as ``pattern``, through ``and_``, ``optional``,
    ``deep_iterable`` (``items``) and ``deep_mapping`` (``propertyNames``,
    ``additionalProperties``).

    Why: a client (or a fuzzer) reading the document learns the service's limits before it
    calls; without them it finds them one 400 at a time. A validator JSON Schema cannot state
    (a function of the handler's, ``or_``, ``not_``, a regex with flags) adds nothing: the schema
    may accept too much, which is safe, but must never refuse what the service accepts.
    """
    out = dict(schema)
    for keyword, value in _keywords(validator, out).items():
        old = out.get(keyword)
        if keyword == "enum" and old is not None:  # both hold: what both admit
            value = [v for v in old if v in value]
        elif keyword in _TIGHTER and old is not None:
            value = _TIGHTER[keyword](old, value)
        out[keyword] = value
    return out


def _keywords(v: Any, schema: dict[str, Any]) -> dict[str, Any]:
    if isinstance(v, _AND):
        out = schema
        for inner in attrs.astuple(v, recurse=False)[0]:
            out = constrained(out, inner)
        return {k: val for k, val in out.items() if schema.get(k) != val}
    if isinstance(v, _OPTIONAL):
        found = _keywords(v.validator, schema)
        if "enum" in found:
            found["enum"] = [*found["enum"], None]
        return found
    if isinstance(v, _NUMBER):
        bound = v.bound
        ok = isinstance(bound, int | float) and not isinstance(bound, bool) and math.isfinite(bound)
        return {_BOUNDS[v.compare_op]: bound} if ok and v.compare_op in _BOUNDS else {}
    if isinstance(v, _MIN_LEN | _MAX_LEN):
        edge, n = ("min", v.min_length) if isinstance(v, _MIN_LEN) else ("max", v.max_length)
        return {f"{edge}{_LENGTHS[t]}": n for t in _types(schema) if t in _LENGTHS}
    if isinstance(v, _IN):
        return _enum(attrs.astuple(v, recurse=False)[-1])  # the options as given (attrs >= 24 keeps them)
    if isinstance(v, _MATCHES):
        return _pattern(v.pattern, getattr(v.match_func, "__name__", ""))
    if isinstance(v, _DEEP_ITERABLE):
        found = _keywords(v.iterable_validator, schema) if v.iterable_validator else {}
        if isinstance(schema.get("items"), dict):
            found["items"] = constrained(schema["items"], v.member_validator)
        if isinstance(schema.get("prefixItems"), list):
            found["prefixItems"] = [constrained(s, v.member_validator) for s in schema["prefixItems"]]
        return found
    if isinstance(v, _DEEP_MAPPING):
        found = _keywords(v.mapping_validator, schema) if v.mapping_validator else {}
        if v.key_validator is not None:
            names = constrained({"type": "string"}, v.key_validator)
            if len(names) > 1:
                found["propertyNames"] = names
        if v.value_validator is not None and isinstance(schema.get("additionalProperties"), dict):
            found["additionalProperties"] = constrained(schema["additionalProperties"], v.value_validator)
        return found
    return {}


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema admits (every one, for a schema that says nothing)."""
    if "anyOf" in schema:
        return set().union(*(_types(s) for s in schema["anyOf"]))
    declared = schema.get("type")
    if declared is None:
        return set(_LENGTHS) if "enum" not in schema else set()
    return {declared} if isinstance(declared, str) else set(declared)


def _enum(options: Any) -> dict[str, Any]:
    if isinstance(options, str | bytes):  # ``in_("abc")``: a substring test, not a choice
        return {}
    if isinstance(options, range) and options.step == 1:
        return {"minimum": options.start, "maximum": options.stop - 1} if len(options) else {}
    if not isinstance(options, Collection) or len(options) > MAX_ENUM:
        return {}
    try:
        values = [o.value if isinstance(o, enum.Enum) else o for o in options]
    except TypeError:
        return {}
    if not all(isinstance(o, _JSON_SCALARS) for o in values):
        return {}
    return {"enum": values}


def _pattern(pattern: Any, how: str) -> dict[str, Any]:
    # Only a pattern without flags (str patterns carry re.UNICODE implicitly): JSON Schema has
    # none, and its ``pattern`` searches, so ``fullmatch`` and ``match`` are anchored here. The
    # syntax stays Python's, as Python's JSON Schema tools read it (an ECMA-262 engine may read
    # a class such as \d more narrowly).
    if not isinstance(pattern, re.Pattern) or not isinstance(pattern.pattern, str):
        return {}
    if pattern.flags & ~re.UNICODE:
        return {}
    source = pattern.pattern
    if how == "fullmatch":
        return {"pattern": f"^(?:{source})$"}
    if how == "match":
        return {"pattern": f"^(?:{source})"}
    return {"pattern": source} if how == "search" else {}


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
