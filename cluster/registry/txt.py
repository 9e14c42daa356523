"""The mDNS registry's records as DNS-SD names and TXT strings, both ways (sans-I/O).

**Record layout** (also in docs/protocol.md, section 7). Each (service name, version, node id,
cluster) is one DNS-SD instance of type ``_trimicro._tcp.local.``, named
``"{name}-{version}-{node_id}"`` reduced to ``[A-Za-z0-9_-]``, cut to 50 characters and suffixed
with ``-`` and 12 hex digits of a SHA-256 over the exact name, version, node id and (when the node
names one) cluster, joined by NUL (so the label is at most 63 bytes, and distinct nodes never share
an instance, even two clusters' nodes with the same id: they would overwrite each other's records
in every cache). The SRV record carries the port of ``NodeInfo.address`` (``"host:port"``) and
points at ``"{label}.local."``, whose A record is the address's host if it is an IP literal, else
the bound interface address. The TXT record carries the whole record; every TXT string is
``key=value`` of at most 255 bytes:

* ``n`` service name, ``v`` version, ``id`` node id, ``a`` node address (UTF-8 text);
* ``c`` the node's cluster: the fingerprint of its authority's public key (32 lowercase hex
  digits, :func:`~trimicro.cluster.registry.cluster_fingerprint`); left out when the node names
  none. A client skips other clusters' nodes before dialing them;
* ``md`` (continued in ``md1``, ``md2``, ... when longer than one string) compact JSON
  ``{"s": service metadata, "n": node metadata}``;
* ``e0``, ``e1``, ... the chunks, in order, of the compact JSON list of endpoints, each
  ``{"n": name, "q": request, "r": response, "m": metadata, "s": true}`` (empty maps and a false
  ``s`` are left out). Chunks are cut on bytes and joined before decoding.

The whole TXT record is capped at :data:`MAX_TXT_BYTES` (8 KiB, below the 9 000-byte mDNS packet
limit); :meth:`MdnsRegistry.register` raises :class:`ValueError` beyond it. TXT data from the network
is untrusted: an instance with missing keys, wrong types, bad UTF-8 or JSON, a gap in its chunks, an
oversize record, a ``c`` that is not 32 lowercase hex digits, or a label that does not match its
``n``/``v``/``id``/``c`` is skipped (logged at debug).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from . import Endpoint, NodeInfo, Service

__all__ = [
    "DEFAULT_SERVICE_TYPE",
    "MAX_TXT_BYTES",
    "MAX_TXT_STRING",
    "decode_txt",
    "encode_txt",
    "instance_label",
]

#: The DNS-SD service type every instance is announced under.
DEFAULT_SERVICE_TYPE = "_trimicro._tcp.local."
#: Longest TXT string (``key=value``) DNS allows: one length byte.
MAX_TXT_STRING = 255
#: Cap on a whole TXT record (sum of strings plus their length bytes).
MAX_TXT_BYTES = 8192
_LABEL_PREFIX = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")


class _Malformed(ValueError):
    """A TXT record from the network that does not decode to a record."""


# --------------------------------------------------------------------------- encoding


def instance_label(name: str, version: str, node_id: str, cluster: str = "") -> str:
    """The DNS-SD instance label of one (service, version, node, cluster): readable, unique, <= 63 bytes."""
    exact = (name, version, node_id, cluster) if cluster else (name, version, node_id)
    digest = hashlib.sha256("\0".join(exact).encode("utf-8")).hexdigest()[:12]
    readable = _UNSAFE.sub("-", f"{name}-{version}-{node_id}").strip("-")[:_LABEL_PREFIX].strip("-")
    return f"{readable}-{digest}" if readable else digest


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")


def _endpoint_json(endpoint: Endpoint) -> dict[str, object]:
    out: dict[str, object] = {"n": endpoint.name}
    if endpoint.request:
        out["q"] = endpoint.request
    if endpoint.response:
        out["r"] = endpoint.response
    if endpoint.metadata:
        out["m"] = endpoint.metadata
    if endpoint.stream:
        out["s"] = True
    return out


def _chunks(blob: bytes, key_for: Any) -> list[tuple[bytes, bytes]]:
    """Cut ``blob`` into TXT strings ``key_for(i)=chunk`` of at most 255 bytes each."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    index = 0
    while pos < len(blob) or index == 0:
        key: bytes = key_for(index)
        room = MAX_TXT_STRING - len(key) - 1
        out.append((key, blob[pos : pos + room]))
        pos += room
        index += 1
    return out


def encode_txt(service: Service, node: NodeInfo) -> dict[bytes, bytes]:
    """The TXT properties announcing ``node`` of ``service`` (see the module docstring).

    Raises :class:`ValueError` if a single field does not fit in one TXT string or the record
    exceeds :data:`MAX_TXT_BYTES`.
    """
    props: dict[bytes, bytes] = {}
    for key, text in ((b"n", service.name), (b"v", service.version), (b"id", node.id), (b"a", node.address)):
        value = text.encode("utf-8")
        if len(key) + 1 + len(value) > MAX_TXT_STRING:
            raise ValueError(
                f"mdns: {key.decode()}={text[:40]!r}... is longer than one TXT string "
                f"({MAX_TXT_STRING - len(key) - 1} bytes)"
            )
        props[key] = value
    if not service.name or not node.id:
        raise ValueError("mdns: service name and node id must not be empty")
    if node.cluster:
        if not _FINGERPRINT.fullmatch(node.cluster):
            raise ValueError(f"mdns: cluster {node.cluster[:40]!r} is not 32 lowercase hex digits")
        props[b"c"] = node.cluster.encode("ascii")
    metadata = _json({"s": dict(service.metadata), "n": dict(node.metadata)})
    props.update(_chunks(metadata, lambda i: b"md" if i == 0 else b"md%d" % i))
    endpoints = _json([_endpoint_json(e) for e in service.endpoints])
    props.update(_chunks(endpoints, lambda i: b"e%d" % i))
    total = sum(1 + len(k) + 1 + len(v) for k, v in props.items())
    if total > MAX_TXT_BYTES:
        raise ValueError(
            f"mdns: record for {service.name!r} node {node.id!r} needs {total} TXT bytes, "
            f"more than the {MAX_TXT_BYTES}-byte cap (too many or too large endpoints/metadata)"
        )
    return props


# --------------------------------------------------------------------------- decoding (untrusted)


def _text(props: Mapping[bytes, bytes | None], key: bytes, *, empty_ok: bool = False) -> str:
    value = props.get(key)
    if not isinstance(value, bytes):
        raise _Malformed(f"missing or valueless key {key!r}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Malformed(f"key {key!r} is not UTF-8") from exc
    if not text and not empty_ok:
        raise _Malformed(f"key {key!r} is empty")
    return text


def _joined(props: Mapping[bytes, bytes | None], first: bytes, key_for: Any) -> Any:
    parts: list[bytes] = []
    index = 0
    while True:
        key: bytes = first if index == 0 else key_for(index)
        value = props.get(key)
        if value is None:
            break
        parts.append(value)
        index += 1
    if not parts:
        raise _Malformed(f"missing key {first!r}")
    try:
        return json.loads(b"".join(parts).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _Malformed(f"bad JSON under {first!r}: {exc}") from exc


def _str_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _Malformed(f"{what} is not a map of strings")
    return dict(value)


def _endpoint(value: object) -> Endpoint:
    if not isinstance(value, dict):
        raise _Malformed("endpoint is not an object")
    name = value.get("n")
    stream = value.get("s", False)
    if not isinstance(name, str) or not name:
        raise _Malformed("endpoint name is not a non-empty string")
    if not isinstance(stream, bool):
        raise _Malformed("endpoint stream flag is not a boolean")
    return Endpoint(
        name=name,
        request=_str_map(value.get("q"), "endpoint request"),
        response=_str_map(value.get("r"), "endpoint response"),
        metadata=_str_map(value.get("m"), "endpoint metadata"),
        stream=stream,
    )


def decode_txt(
    props: Mapping[bytes, bytes | None],
    instance_name: str | None = None,
    service_type: str = DEFAULT_SERVICE_TYPE,
) -> Service:
    """Decode TXT properties (from the network: untrusted) into a one-node :class:`Service`.

    With ``instance_name`` (the full DNS-SD name), also check that it is the instance the record's
    ``n``/``v``/``id`` map to. Raises :class:`ValueError` on anything malformed.
    """
    if sum(1 + len(k) + 1 + len(v or b"") for k, v in props.items()) > MAX_TXT_BYTES:
        raise _Malformed("TXT record is over the size cap")
    name = _text(props, b"n")
    version = _text(props, b"v", empty_ok=True)
    node_id = _text(props, b"id")
    address = _text(props, b"a", empty_ok=True)
    cluster = _text(props, b"c") if b"c" in props else ""
    if cluster and not _FINGERPRINT.fullmatch(cluster):
        raise _Malformed(f"cluster {cluster[:40]!r} is not 32 lowercase hex digits")
    if instance_name is not None:
        expected = f"{instance_label(name, version, node_id, cluster)}.{service_type}"
        if instance_name.lower() != expected.lower():
            raise _Malformed(f"instance name {instance_name!r} does not match its record ({expected!r})")
    metadata = _joined(props, b"md", lambda i: b"md%d" % i)
    if not isinstance(metadata, dict):
        raise _Malformed("md is not an object")
    endpoints = _joined(props, b"e0", lambda i: b"e%d" % i)
    if not isinstance(endpoints, list):
        raise _Malformed("endpoints are not a list")
    node = NodeInfo(
        id=node_id, address=address, metadata=_str_map(metadata.get("n"), "node metadata"), cluster=cluster
    )
    return Service(
        name=name,
        version=version,
        metadata=_str_map(metadata.get("s"), "service metadata"),
        endpoints=tuple(_endpoint(e) for e in endpoints),
        nodes=(node,),
    )
