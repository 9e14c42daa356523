"""OpenAPI 3.1 from the registry's endpoint records and the services' own descriptions, without I/O.

Full JSON Schemas (nested attrs classes with their fields) come from each service's node
(:mod:`trimicro.cluster.introspect`, fetched by :class:`~.state.GatewayState`); the type names
below are the fallback when a node does not describe itself.

A gateway knows services only through the registry: each :class:`~trimicro.cluster.registry.Endpoint`
carries the handler's request and response as ``{field: type}`` read from its annotations
(attrs fields, or ``{"": type}`` for a plain annotation; see :mod:`trimicro.cluster.service`).
:func:`type_schema` turns those type names back into JSON Schema (the built-in scalars,
``list``/``tuple``/``set``, ``dict``, ``X | None``, ``Optional``, ``Literal``; another class name
is an object), and :func:`document` builds the OpenAPI document of every service's endpoints
plus the gateway's own routes. Fields whose type admits ``None`` are optional, every other field
is required, and unknown fields are refused, as the service's strict conversion refuses them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from typing import Any

from ..broker.topics import MAX_SUBJECT_LENGTH
from ..registry import Endpoint, Service
from .codec import CBOR, JSON, MSGPACK
from .headers import TIMEOUT_PATTERN

__all__ = ["ERROR_SCHEMA", "document", "endpoint_schemas", "type_schema"]

_SCALARS: dict[str, dict[str, Any]] = {
    "int": {"type": "integer"},
    "float": {"type": ["number", "integer"]},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "bytes": {"type": "string"},
    "None": {"type": "null"},
    "NoneType": {"type": "null"},
    "null": {"type": "null"},
    "Any": {},
    "object": {},
    "dict": {"type": "object"},
    "list": {"type": "array"},
    "tuple": {"type": "array"},
    "datetime": {"type": "string", "format": "date-time"},
    "date": {"type": "string", "format": "date"},
    "UUID": {"type": "string", "format": "uuid"},
    "Decimal": {"type": "string"},
}
_ARRAYS = {"list", "List", "tuple", "Tuple", "set", "Set", "frozenset", "FrozenSet", "Sequence", "Iterable"}
_MAPS = {"dict", "Dict", "Mapping", "MutableMapping"}

#: Go Micro's error JSON, the body of every error reply.
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "code", "detail", "status"],
    "properties": {
        "id": {"type": "string"},
        "code": {"type": "integer"},
        "detail": {"type": "string"},
        "status": {"type": "string"},
    },
}


def type_schema(name: str) -> dict[str, Any]:
    """JSON Schema for a type as the registry names it (``"list[int] | None"``); ``{}`` (anything)
    for what it cannot read: a schema that accepts too much is safe, one that refuses is not."""
    try:
        tree = ast.parse(name.strip(), mode="eval").body
    except SyntaxError:
        return {}
    return _schema(tree)


def _schema(node: ast.expr) -> dict[str, Any]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_schema(node.left), _schema(node.right)])
    if isinstance(node, ast.Constant):
        return {"type": "null"} if node.value is None else {"const": node.value}
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return dict(_SCALARS.get(name, {"type": "object"} if name[:1].isupper() else {}))
    if isinstance(node, ast.Subscript):
        base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base in _ARRAYS:
            items = [a for a in args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
            if base in ("tuple", "Tuple") and len(items) == len(args) and items:
                return {"type": "array", "prefixItems": [_schema(a) for a in items], "maxItems": len(items)}
            return {"type": "array", "items": _schema(items[0])} if items else {"type": "array"}
        if base in _MAPS:
            return {"type": "object", "additionalProperties": _schema(args[-1])}
        if base == "Optional":
            return _union([_schema(args[0]), {"type": "null"}])
        if base == "Union":
            return _union([_schema(a) for a in args])
        if base == "Literal":
            return {"enum": [a.value for a in args if isinstance(a, ast.Constant)]}
    return {}


def _union(options: list[dict[str, Any]]) -> dict[str, Any]:
    flat: list[dict[str, Any]] = []
    for option in options:
        flat.extend(option["anyOf"] if set(option) == {"anyOf"} else [option])
    if any(not o for o in flat):
        return {}
    return {"anyOf": flat}


def _nullable(schema: dict[str, Any]) -> bool:
    if not schema or schema.get("type") == "null":
        return True
    return any(_nullable(o) for o in schema.get("anyOf", ()))


def _fields_schema(fields: dict[str, str]) -> dict[str, Any]:
    if not fields:
        return {}
    if set(fields) == {""}:
        return type_schema(fields[""])
    props = {name: type_schema(t) for name, t in fields.items()}
    return {
        "type": "object",
        "properties": props,
        "required": sorted(n for n, s in props.items() if not _nullable(s)),
        "additionalProperties": False,
    }


def endpoint_schemas(
    endpoint: Endpoint, full: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The request and response schemas of one endpoint (``{}``: anything): ``full``, the
    service's own description (:mod:`trimicro.cluster.introspect`), when the gateway has it,
    else what the registry's type names say."""
    if full is not None and isinstance(full.get("request"), dict) and isinstance(full.get("response"), dict):
        return full["request"], full["response"]
    return _fields_schema(endpoint.request), _fields_schema(endpoint.response)


def _error_responses(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "the body does not decode or does not fit the handler's type (the detail names the field)",
        401: "no valid token for a service that requires one",
        403: "the token's account may not call this endpoint",
        404: "no such service or endpoint",
        408: "the deadline (the Timeout header) passed",
        413: "the body is larger than the gateway accepts",
        503: "no node of the service could be reached",
    }
    out: dict[str, Any] = {
        str(c): {
            "description": reasons[c],
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }
    out["default"] = {
        "description": "an error the service raised (Go Micro's error JSON; the status is its code)",
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return out


_CALL_ERRORS = (400, 401, 403, 404, 408, 413, 503)
_TIMEOUT = {
    "name": "Timeout",
    "in": "header",
    "required": False,
    "description": "the call's deadline in seconds (capped by the gateway; empty: the default)",
    "schema": {"type": "string", "pattern": TIMEOUT_PATTERN},
}


def _operation(service: Service, endpoint: Endpoint, full: Mapping[str, Any] | None) -> dict[str, Any]:
    request, response = endpoint_schemas(endpoint, full)
    op: dict[str, Any] = {
        "operationId": f"{service.name}.{endpoint.name}",
        "tags": [service.name],
        "summary": f"{endpoint.name} of {service.name} {service.version}",
        "parameters": [_TIMEOUT],
    }
    if endpoint.stream:
        op["description"] = (
            "A stream: each item the service sends is one Server-Sent Event (Accept: text/event-stream); "
            "open a WebSocket on this path for both directions."
        )
        op["requestBody"] = {"required": False, "content": {JSON: {"schema": {}}}}
        op["responses"] = {
            "200": {
                "description": "the stream's items",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_error_responses(*_CALL_ERRORS),
        }
        return op
    body = {kind: {"schema": request} for kind in (JSON, MSGPACK, CBOR)}
    op["requestBody"] = {"required": bool(request.get("required")), "content": body}
    op["responses"] = {
        "200": {
            "description": "the handler's reply",
            "content": {kind: {"schema": response} for kind in (JSON, MSGPACK, CBOR)},
        },
        **_error_responses(*_CALL_ERRORS),
    }
    if endpoint.metadata.get("idempotent") == "true":
        op["description"] = "Idempotent: may be retried on another node."
    return op


def _gateway_paths() -> dict[str, Any]:
    # The portable form of names (every value it admits is accepted); the gateway also takes
    # any other character the broker's syntax admits, except control and format ones (.names).
    token, wildcard = r"[A-Za-z0-9_-]+", r"([A-Za-z0-9_-]+|\*)"
    topic = {
        "name": "topic",
        "in": "path",
        "required": True,
        "description": "dot-separated tokens, no wildcards",
        "schema": {"type": "string", "maxLength": MAX_SUBJECT_LENGTH, "pattern": rf"^{token}(\.{token})*$"},
    }
    pattern = dict(
        topic,
        name="pattern",
        description="dot-separated tokens; * is any one token, a last > one or more",
        schema={
            "type": "string",
            "maxLength": MAX_SUBJECT_LENGTH,
            "pattern": rf"^({wildcard}(\.{wildcard})*(\.>)?|>)$",
        },
    )
    return {
        "/api/publish/{topic}": {
            "post": {
                "operationId": "publish",
                "tags": ["pubsub"],
                "summary": "Publish the body on a topic",
                "parameters": [topic],
                "requestBody": {"required": False, "content": {JSON: {"schema": {}}}},
                "responses": {
                    "200": {
                        "description": "how many subscribers it was delivered to",
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "topic": {"type": "string"},
                                        "deliveries": {"type": "integer"},
                                    },
                                }
                            }
                        },
                    },
                    **_error_responses(400, 401, 403, 413, 503),
                },
            }
        },
        "/api/subscribe/{pattern}": {
            "get": {
                "operationId": "subscribe",
                "tags": ["pubsub"],
                "summary": "The messages of the topics matching the pattern, as Server-Sent Events",
                "parameters": [pattern],
                "responses": {
                    "200": {
                        "description": "one event per message",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_error_responses(400, 401, 403),
                },
            }
        },
        **_health_paths(),
    }


def _health_paths() -> dict[str, Any]:
    """Liveness and readiness, under both spellings (``/health/*`` and Kubernetes' ``*z``)."""
    report = {
        "type": "object",
        "required": ["status", "node", "live", "ready", "checks"],
        "properties": {
            "status": {"enum": ["ready", "starting", "not ready"]},
            "node": {"type": "string"},
            "live": {"type": "boolean"},
            "ready": {"type": "boolean"},
            "services": {"type": "integer"},
            "checks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "ok", "detail"],
                    "properties": {
                        "name": {"type": "string"},
                        "ok": {"type": "boolean"},
                        "detail": {"type": "string"},
                    },
                },
            },
        },
    }
    live = {"description": "the gateway answers", "content": {JSON: {"schema": {"type": "object"}}}}
    ready = {
        "200": {"description": "every check passes", "content": {JSON: {"schema": report}}},
        "503": {
            "description": "a check fails (each one's status and detail)",
            "content": {JSON: {"schema": report}},
        },
    }
    routes = {"/health/live": "live", "/livez": "livez", "/health/ready": "ready", "/readyz": "readyz"}
    return {
        path: {
            "get": {
                "operationId": op,
                "tags": ["health"],
                "responses": {"200": live} if op.startswith("live") else ready,
            }
        }
        for path, op in routes.items()
    }


def document(
    services: Iterable[Service],
    described: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    *,
    title: str = "trimicro gateway",
    version: str = "1",
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``services`` (both ``/api/{service}/{Endpoint.method}``
    spellings route the same call; the document lists the canonical one). ``described`` holds
    the full schemas the services gave, by ``(name, version)``, then endpoint."""
    paths = _gateway_paths()
    for service in sorted(services, key=lambda s: (s.name, s.version)):
        full = (described or {}).get((service.name, service.version)) or {}
        for endpoint in service.endpoints:
            path = f"/api/{service.name}/{endpoint.name}"
            paths.setdefault(path, {"post": _operation(service, endpoint, full.get(endpoint.name))})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Services of the cluster, through trimicro's HTTP gateway.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{}, {"bearer": []}],
    }
