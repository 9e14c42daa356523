"""Where a topic's messages go, worked out once per topic and reused (see ``PubSub._route``)."""

from __future__ import annotations

__all__ = ["MAX_ROUTES", "MAX_ROUTE_SENDERS", "Route"]

#: Topics whose routes are remembered (all are forgotten when full, or when interest changes).
MAX_ROUTES = 4096
#: Senders (tokens) remembered as allowed to publish on one route.
MAX_ROUTE_SENDERS = 64


class Route:
    """Where messages on one topic go, worked out once and reused until interest, membership
    or the auth rules change: which peers get it for plain subscribers (and may), and for each
    queue group the candidate nodes with their weights (member counts); and who was found
    allowed to publish there, when a message may leave the node."""

    __slots__ = ("allowed", "check", "groups", "local", "plain_nodes", "until")

    def __init__(
        self,
        local: bool,
        plain_nodes: tuple[str, ...],
        groups: dict[str, tuple[list[str], list[int], int]],
        until: float,
        check: bool,
    ) -> None:
        self.local = local
        self.plain_nodes = plain_nodes
        self.groups = groups
        #: A message may leave the node and auth is on: the publisher's right is checked.
        self.check = check
        #: Tokens (None: the node itself) checked and allowed to publish on this route.
        self.allowed: set[str | None] = set()
        #: Trusted until then (``time.monotonic``): decisions about peers (a certificate can expire) are
        #: made again at least once a second, as the guard's grants are.
        self.until = until
