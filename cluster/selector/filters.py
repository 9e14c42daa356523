"""Go Micro's selector filters: which registered nodes may serve a call at all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trimicro.cluster.registry import NodeInfo, Service

__all__ = ["filter_nodes"]


def filter_nodes(
    services: Sequence[Service],
    *,
    version: str | None = None,
    metadata: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> list[NodeInfo]:
    """The nodes of ``services`` that match (Go Micro's ``FilterVersion/FilterLabel/FilterEndpoint``).

    * ``version``: the record's version must equal it (``None``: any version).
    * ``metadata``: every pair must match the node's metadata, where a key the node does not
      set falls back to the service record's metadata (the node's own value wins).
    * ``endpoint``: the record must list an endpoint of that name (a record listing no
      endpoints does not match).

    Nodes keep their registry order; a node id listed by several records appears once (first wins).
    """
    wanted = dict(metadata or {})
    seen: set[str] = set()
    found: list[NodeInfo] = []
    for service in services:
        if version is not None and service.version != version:
            continue
        if endpoint is not None and all(ep.name != endpoint for ep in service.endpoints):
            continue
        for node in service.nodes:
            if node.id in seen:
                continue
            effective = {**service.metadata, **node.metadata}
            if all(effective.get(k) == v for k, v in wanted.items()):
                seen.add(node.id)
                found.append(node)
    return found
