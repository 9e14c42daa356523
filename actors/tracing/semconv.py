"""Span names and attributes, after OpenTelemetry's semantic conventions for RPC and messaging.

Kept apart from the middleware so the vocabulary can be read (and checked against the
conventions) in one place, and so these dicts are built only for spans that record: a span
that is not sampled gets none.

RPC (``ask``, ``tell``, streams): the span is named ``{rpc.service}/{rpc.method}``. An
endpoint ``"Greeter.hello"`` is service ``Greeter``, method ``hello``. A message chosen by its
type has the type's name as its method; the handler's side knows the actor too, and names
its service (the class's ``service_name``, else the class name); the caller's side does not,
and names the span after the method alone. ``rpc.trimicro.actor`` and ``rpc.trimicro.node``
say which actor on which node; ``server.address``/``server.port`` where the other node listens,
when the call went to another node.

Messaging (``publish``, deliveries): ``publish {topic}`` and ``process {topic}``, with
``messaging.system``, ``messaging.destination.name``, ``messaging.operation.type`` and
``.name``; a delivery adds its number (``messaging.trimicro.delivery``, above 1 for a
redelivery) and the publishing node (``messaging.trimicro.publisher``).

Errors: ``rpc.trimicro.error_code`` is the Go Micro code (an int), ``error.type`` the same
code as a string (low cardinality, as the conventions ask), or ``cancelled``, or the
exception's qualified class name for anything that is not a typed error.
"""

from __future__ import annotations

from typing import Any

from ..middleware import Call

__all__ = [
    "ERROR_CODE",
    "ERROR_TYPE",
    "SYSTEM",
    "client_attributes",
    "client_name",
    "delivery_attributes",
    "publish_attributes",
    "server_attributes",
    "server_name",
    "split_endpoint",
]

#: ``rpc.system`` and ``messaging.system``.
SYSTEM = "trimicro"
ERROR_CODE = "rpc.trimicro.error_code"
ERROR_TYPE = "error.type"


def split_endpoint(endpoint: str) -> tuple[str | None, str]:
    """``"Greeter.hello"`` -> ``("Greeter", "hello")``; a name without a dot is a method alone."""
    service, dot, method = endpoint.partition(".")
    return (service, method) if dot else (None, endpoint)


def client_name(call: Call) -> str:
    """The caller's span name: ``Greeter/hello``, or the message type's name."""
    endpoint = call.endpoint
    if endpoint is not None:
        return endpoint.replace(".", "/", 1)
    return type(call.message).__name__


def _service_of(actor: Any) -> str:
    cls = type(actor)
    return getattr(cls, "service_name", None) or cls.__name__


def server_name(call: Call) -> str:
    """The handler's span name: ``Greeter/hello``, or ``{service}/{message type}``."""
    endpoint = call.endpoint
    if endpoint is not None:
        return endpoint.replace(".", "/", 1)
    return f"{_service_of(call.actor)}/{type(call.message).__name__}"


def _rpc(call: Call, service: str | None) -> dict[str, Any]:
    endpoint = call.endpoint
    if endpoint is not None:
        named, method = split_endpoint(endpoint)
        service = named or service
    else:
        method = type(call.message).__name__
    attributes: dict[str, Any] = {"rpc.system": SYSTEM, "rpc.method": method}
    if service is not None:
        attributes["rpc.service"] = service
    target = call.target
    path = getattr(target, "path", None)
    if path is not None:
        attributes["rpc.trimicro.actor"] = path
    return attributes


def client_attributes(call: Call) -> dict[str, Any]:
    """A caller's ``ask``/``tell``/stream span: what was called, where."""
    attributes = _rpc(call, None)
    node = getattr(call.target, "node", None)
    if node is not None:
        attributes["rpc.trimicro.node"] = node
    peer = getattr(call.via, "peer", None)  # a ref bound to another node: its Peer
    address = getattr(peer, "address", None)
    if isinstance(address, str) and address:
        host, colon, port = address.rpartition(":")
        if colon and port.isdigit():
            attributes["server.address"] = host.strip("[]")
            attributes["server.port"] = int(port)
        else:
            attributes["server.address"] = address
    return attributes


def server_attributes(call: Call, node_id: str) -> dict[str, Any]:
    """A handler's span: which actor of which service on this node, and who called."""
    attributes = _rpc(call, _service_of(call.actor))
    attributes["rpc.trimicro.node"] = node_id
    if call.sender is not None:
        attributes["rpc.trimicro.caller"] = str(call.sender)
    return attributes


def publish_attributes(topic: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": topic,
        "messaging.operation.type": "publish",
        "messaging.operation.name": "publish",
    }


def delivery_attributes(call: Call, node_id: str) -> dict[str, Any]:
    """One delivery to a subscribing actor (``call.message`` is the broker's message)."""
    message = call.message
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.destination.name": str(call.target),
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.trimicro.delivery": int(getattr(message, "delivery", 1)),
        "rpc.trimicro.node": node_id,
    }
    publisher = getattr(message, "publisher", "")
    if publisher:
        attributes["messaging.trimicro.publisher"] = publisher
    actor = call.actor
    cell = getattr(actor, "_trimicro_cell", None)
    if cell is not None:
        attributes["rpc.trimicro.actor"] = cell.ref.path
    return attributes
