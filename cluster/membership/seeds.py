"""Joining a cluster through seeds: ``--seed host:port`` where no discovery reaches.

mDNS finds nodes on one network segment; across routed networks, or where multicast is
filtered, a node is given one or more *seeds*: addresses of members it can dial. A seed is only
an address (``10.0.0.1:7000``): who answers there is what the secure handshake proves (the
certificate names the node and must be signed by an authority this node trusts), so a seed list
holds no node ids and goes stale only as far as addresses do.

Membership gossip does not introduce members (a rumour about an unknown member is dropped, see
:mod:`trimicro.cluster.membership.swim`), so a joiner does the introducing itself. Every
``interval`` seconds, for each seed:

1. connect to it (a link already open is reused) and learn its node id from the handshake;
2. join it in SWIM (a no-op while it is alive or suspect in our view; a ping with our own record
   otherwise, which makes us a member of the seed's view too);
3. ask it for its view (``Membership.members``, answered over the authenticated link by a node
   of our own cluster) and join every member it holds alive that our view lacks or holds dead;
   each of those pings makes us a member of theirs.

The repetition is what heals a partition: after it, each side holds the other dead, and the
next round re-joins them (a ping to a member held dead draws the record that it must refute).
A seed that does not answer costs one dial timeout per round and is tried again next round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import trio

from trimicro.actors import ask
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.logs import get_logger

__all__ = ["SEED_INTERVAL", "SeedJoiner", "parse_seed"]

log = get_logger(__package__)

#: Seconds between rounds (as the registry poll of :meth:`Membership._discover`).
SEED_INTERVAL = 2.0
#: Members taken from one seed's answer at most (the view of a hostile seed is not a work list).
MAX_INTRODUCED = 1024


class _Membership(Protocol):
    def join(self, node_id: str, address: str) -> None:
        """Join a peer (a no-op while it is alive or suspect); ``ValueError`` for a bad id/address."""
        ...


def parse_seed(text: str) -> str:
    """``host:port`` checked (``[v6]:port`` too); ``ValueError`` otherwise."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"a seed is HOST:PORT, not {text!r}")
    return text.strip()


class SeedJoiner:
    """Joins the members reachable through ``seeds`` now and every ``interval`` seconds."""

    def __init__(
        self,
        node: Any,
        membership: _Membership,
        seeds: Sequence[str],
        *,
        system_path: str,
        interval: float = SEED_INTERVAL,
        timeout: float = 2.0,
    ) -> None:
        self.node = node
        self.membership = membership
        self.seeds = tuple(parse_seed(s) for s in seeds)
        self.system_path = system_path
        self.interval = interval
        self.timeout = timeout
        #: Rounds finished (tests wait on it instead of sleeping).
        self.rounds = 0

    async def run(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for address in self.seeds:
                    nursery.start_soon(self.visit, address)
            self.rounds += 1
            await trio.sleep(self.interval)

    async def visit(self, address: str) -> None:
        """One seed, once: connect, join it, join the members it knows."""
        remote = self.node.remote
        try:
            node_id: str = await remote.connect(address, self.timeout)
        except MicroError as exc:
            log.debug("seed %s: %s", address, exc)
            return
        self.membership.join(node_id, address)
        try:
            view = await ask(
                self.node.remote_ref(node_id, self.system_path),
                None,
                endpoint="Membership.members",
                timeout=self.timeout,
            )
        except MicroError as exc:
            log.debug("seed %s (%s) did not list its members: %s", address, node_id, exc)
            return
        for member in view[:MAX_INTRODUCED] if isinstance(view, list) else ():
            if not isinstance(member, dict):
                continue
            member_id, member_address = member.get("id"), member.get("address")
            if (
                isinstance(member_id, str)
                and isinstance(member_address, str)
                and member.get("state") in ("alive", "suspect")
            ):
                try:
                    self.membership.join(member_id, member_address)
                except ValueError:
                    log.debug("seed %s listed a malformed member %r", address, member_id)
