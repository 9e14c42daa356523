"""Every metric a node exports, once: its names, kind, unit, labels, help, and how to read it.

The Prometheus exposition (:mod:`.prometheus`) and the OpenTelemetry instruments (:mod:`.otel`)
are both built from this table, so a metric is named and explained in one place (and
docs/observability.md lists the same). Each entry reads its samples from a snapshot
(:func:`~.snapshot.cluster_snapshot`): ``(labels, value)`` pairs, or for the histogram
``(labels, (cumulative bucket counts, sum))``.

Names: the OpenTelemetry name is dotted (``trimicro.request.duration``, unit ``s``); the
Prometheus family is that name with underscores and the unit spelled out
(``trimicro_request_duration_seconds``), and counters get ``_total`` when written, as the
OpenTelemetry-to-Prometheus naming rules give. Labels are the same in both, but for the
endpoint metrics: on the OpenTelemetry side their attributes are those of OpenTelemetry's RPC
conventions (:func:`rpc_attributes`: ``rpc.system``, ``rpc.service``, ``rpc.method``, and for
errors ``error.type`` and ``rpc.trimicro.error_code``, as the spans carry them), while the
Prometheus labels stay ``service``, ``endpoint`` and ``code`` (dots are no label characters, and
PromQL users group by these short names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs

__all__ = ["CATALOG", "RPC_SYSTEM", "Kind", "Metric", "Samples", "Snapshot", "rpc_attributes"]

Snapshot = dict[str, Any]
Kind = Literal["counter", "gauge", "histogram"]
#: ``(labels, value)`` pairs; for a histogram the value is ``(cumulative buckets, sum)``.
Samples = Iterable[tuple[dict[str, str], Any]]


@attrs.frozen
class Metric:
    """One exported metric."""

    #: The OpenTelemetry instrument name.
    name: str
    #: The Prometheus family name (without ``_total``).
    prom: str
    kind: Kind
    #: UCUM, as OpenTelemetry wants it (``s``, ``By``, ``{request}``).
    unit: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[Snapshot], Samples] = attrs.field(repr=False)
    #: Labels -> OpenTelemetry attributes, when they are named otherwise there.
    attributes: Callable[[dict[str, str]], dict[str, Any]] | None = attrs.field(default=None, repr=False)


#: ``rpc.system`` of every call (OpenTelemetry's RPC conventions), as the spans say.
RPC_SYSTEM = "trimicro"


def rpc_attributes(labels: dict[str, str]) -> dict[str, Any]:
    """An endpoint metric's labels as OpenTelemetry RPC attributes: ``rpc.system``,
    ``rpc.service``, ``rpc.method`` (``hello`` of the endpoint ``Greeter.hello``) and, for an
    error count, ``error.type`` (the code as a string) and ``rpc.trimicro.error_code`` (an int)."""
    service, dot, method = labels["endpoint"].partition(".")
    out: dict[str, Any] = {
        "rpc.system": RPC_SYSTEM,
        "rpc.service": labels["service"],
        "rpc.method": method if dot else service,
    }
    code = labels.get("code")
    if code is not None:
        out["error.type"] = code
        if code.isdigit():
            out["rpc.trimicro.error_code"] = int(code)
    return out


def _at(snap: Snapshot, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in the snapshot; ``None`` if a part is missing (a node without a
    store, membership or the cluster's broker has none of their numbers)."""
    value: Any = snap
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _one(path: tuple[str, ...]) -> Callable[[Snapshot], Samples]:
    """A single unlabelled value at ``path``."""

    def read(snap: Snapshot) -> Samples:
        value = _at(snap, path)
        return [] if value is None else [({}, value)]

    return read


def _by(path: tuple[str, ...], label: str) -> Callable[[Snapshot], Samples]:
    """A ``{key: count}`` dict at ``path``, one sample per key under ``label``."""

    def read(snap: Snapshot) -> Samples:
        value = _at(snap, path)
        return [] if value is None else [({label: str(k)}, v) for k, v in sorted(value.items())]

    return read


def _endpoint(e: dict[str, Any]) -> dict[str, str]:
    return {"service": e["service"], "endpoint": e["endpoint"]}


def _requests(snap: Snapshot) -> Samples:
    return [(_endpoint(e), e["requests"]) for e in snap["endpoints"]]


def _errors(snap: Snapshot) -> Samples:
    return [
        ({**_endpoint(e), "code": code}, n)
        for e in snap["endpoints"]
        for code, n in sorted(e["errors"].items())
    ]


def _duration(snap: Snapshot) -> Samples:
    out = []
    for e in snap["endpoints"]:
        cumulative, total = [], 0
        for n in e["buckets"]:
            total += n
            cumulative.append(total)
        out.append((_endpoint(e), (cumulative, e["sum"])))
    return out


def _mailbox(field: str) -> Callable[[Snapshot], Samples]:
    def read(snap: Snapshot) -> Samples:
        return [({"service": s["service"]}, s[field]) for s in snap["mailboxes"]["services"]]

    return read


def _links(snap: Snapshot) -> Samples:
    return [({}, len(snap["links"]))]


def _node_info(snap: Snapshot) -> Samples:
    return [({"node": snap["node"]}, 1)]


CATALOG: tuple[Metric, ...] = (
    Metric("trimicro.node", "trimicro_node_info", "gauge", "1",
           "The node's id, as a label (always 1)", ("node",), _node_info),
    # Per endpoint: only with metrics on (the snapshot's endpoints are empty otherwise).
    Metric("trimicro.requests", "trimicro_requests", "counter", "{request}",
           "Messages handled, by endpoint: asks, tells, stream opens and pub/sub deliveries",
           ("service", "endpoint"), _requests, rpc_attributes),
    Metric("trimicro.request.errors", "trimicro_request_errors", "counter", "{request}",
           "Handled messages that ended in an error, by Go Micro code (500: an untyped exception)",
           ("service", "endpoint", "code"), _errors, rpc_attributes),
    Metric("trimicro.request.duration", "trimicro_request_duration_seconds", "histogram", "s",
           "Time in the handler (and the node's middleware), by endpoint",
           ("service", "endpoint"), _duration, rpc_attributes),
    Metric("trimicro.mailbox.backlog_max", "trimicro_mailbox_backlog_max", "gauge", "{message}",
           "Most messages seen waiting in one mailbox of the service's actors (high-water mark)",
           ("service",), _mailbox("max")),
    Metric("trimicro.mailbox.messages", "trimicro_mailbox_messages", "gauge", "{message}",
           "Messages waiting in the mailboxes of the service's actors now",
           ("service",), _mailbox("queued")),
    Metric("trimicro.actors", "trimicro_actors", "gauge", "{actor}",
           "Live actors on the node", (), _one(("actors",))),
    Metric("trimicro.actor.failures", "trimicro_actor_failures", "counter", "{failure}",
           "Actors that failed (an untyped exception from a handler or hook)", (), _one(("failures",))),
    Metric("trimicro.actor.restarts", "trimicro_actor_restarts", "counter", "{restart}",
           "Actors restarted by their supervisors", (), _one(("restarts",))),
    Metric("trimicro.dead_letters", "trimicro_dead_letters", "counter", "{message}",
           "Messages that could not be delivered or answered, by reason",
           ("reason",), _by(("dead_letters", "reasons"), "reason")),
    Metric("trimicro.links", "trimicro_links", "gauge", "{link}",
           "Open links to other nodes", (), _links),
    Metric("trimicro.links.opened", "trimicro_links_opened", "counter", "{link}",
           "Links to other nodes opened (handshake done)", (), _one(("link_totals", "opened"))),
    Metric("trimicro.links.closed", "trimicro_links_closed", "counter", "{link}",
           "Links to other nodes closed", (), _one(("link_totals", "closed"))),
    Metric("trimicro.link.sent", "trimicro_link_sent_bytes", "counter", "By",
           "Bytes of frames queued on links to other nodes (before encryption)",
           (), _one(("link_totals", "sent_bytes"))),
    Metric("trimicro.link.received", "trimicro_link_received_bytes", "counter", "By",
           "Bytes of frames read from links to other nodes (after decryption)",
           (), _one(("link_totals", "received_bytes"))),
    Metric("trimicro.members", "trimicro_members", "gauge", "{node}",
           "Members in this node's membership view, by state (alive, suspect, dead, left)",
           ("state",), _by(("members", "states"), "state")),
    Metric("trimicro.member.transitions", "trimicro_member_transitions", "counter", "{event}",
           "Membership events seen, by kind (joined, alive, suspect, dead, left, updated)",
           ("event",), _by(("members", "transitions"), "event")),
    Metric("trimicro.store.operations", "trimicro_store_operations", "counter", "{operation}",
           "Operations asked of the node's store, by kind (read, write, delete, list)",
           ("operation",), _by(("store",), "operation")),
    Metric("trimicro.pubsub.deliveries", "trimicro_pubsub_deliveries", "counter", "{message}",
           "Published messages handed to this node's subscribers", (), _one(("pubsub", "delivered"))),
    Metric("trimicro.pubsub.redeliveries", "trimicro_pubsub_redeliveries", "counter", "{message}",
           "Acknowledged deliveries this node made again (nack or missed ack deadline)",
           (), _one(("pubsub", "redelivered"))),
    Metric("trimicro.pubsub.dropped", "trimicro_pubsub_dropped", "counter", "{message}",
           "Messages dropped by slow-subscriber policies", (), _one(("pubsub", "dropped"))),
    Metric("trimicro.selector.calls", "trimicro_selector_calls", "counter", "{call}",
           "Calls to services by name (cluster.call), first attempts", (), _one(("selector", "calls"))),
    Metric("trimicro.selector.retries", "trimicro_selector_retries", "counter", "{call}",
           "Retries of calls to services by name", (), _one(("selector", "retries"))),
    Metric("trimicro.selector.open_circuits", "trimicro_selector_open_circuits", "gauge", "{node}",
           "Nodes whose circuit breaker is open now", (), _one(("selector", "open_circuits"))),
    Metric("trimicro.selector.trips", "trimicro_selector_trips", "counter", "{trip}",
           "Times a node's circuit breaker opened", (), _one(("selector", "trips"))),
)  # fmt: skip
