"""Who an HTTP request acts for: the bearer token's account, or no account at all.

A call from a node without a token runs as the node's own account (its certificate's). The
gateway is a node, but an HTTP client is not the gateway: lending it the gateway's account would
hand every anonymous client whatever the operator granted the gateway's node. So a request
without a token is judged here, before anything leaves, as Go Micro's ``micro api`` judges it:
as no account, which only a public rule (scope ``""``) admits, 401 otherwise. Only then does the
call go out (as the node, which the public rule admits too). A request with a token is passed
on and judged by the service's node (401/403 as on the wire).

A cluster that follows no auth service (no epoch: nobody can obtain a token) has only the
built-in default rules; there the gateway calls as its node, as every other node does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from trimicro.actors import MicroError, Unauthorized
from trimicro.actors.lowlevel import AUTHORIZATION
from trimicro.mailbox.logs import get_logger

from ..auth import Resource

if TYPE_CHECKING:
    from ..cluster import Cluster

__all__ = ["admit_anonymous", "admit_call", "admit_topic"]

log = get_logger(__package__)


def admit_anonymous(cluster: Cluster, token: str | None, resource: Resource) -> None:
    """Return if the request may go on (it has a token, or the rules admit no account); raise
    401 (Go Micro's error JSON at the gateway) if it needs an account and has none."""
    guard = cluster.auth
    # A plugged Auth (no rules of ours) and a cluster without an auth service: call as the node.
    if token or guard is None or not getattr(guard, "epoch", "") or not hasattr(guard, "rules"):
        return
    try:
        guard.rules.verify(None, resource)
    except MicroError:
        guard.denied += 1
        log.warning(
            "denied an anonymous HTTP caller access to %s %s %s",
            resource.type,
            resource.name,
            resource.endpoint,
        )
        raise Unauthorized("unauthorized", id="gateway") from None


def admit_topic(cluster: Cluster, token: str | None, topic: str, action: str) -> None:
    """Whether the holder of ``token`` (or no account) may ``action`` on ``topic``: 401/403 if
    not, judged by the rules this node follows (a subscription's messages reach the gateway's
    node, so the gateway decides which the client sees, per message)."""
    guard = cluster.auth
    if guard is None:
        return
    admit_anonymous(cluster, token, Resource("topic", topic, action))
    guard.admit_sent_topic(token, topic, action)


def admit_call(cluster: Cluster, headers: Mapping[str, str] | None, service: str, endpoint: str) -> None:
    """:func:`admit_anonymous` for a call or stream of ``service``'s ``endpoint`` with these headers."""
    admit_anonymous(cluster, (headers or {}).get(AUTHORIZATION), Resource("service", service, endpoint))
