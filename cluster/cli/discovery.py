"""Finding services through the registry from a one-shot command: ask again until the answer
settles (mDNS answers arrive over a second or so), and say 404 once it is clear nobody serves one.
"""

from __future__ import annotations

import argparse

import trio

from trimicro.mailbox.errors import MicroError, NotFound

from .. import plugins
from ..cluster import Cluster
from ..registry import Service
from .common import registry_url

__all__ = ["LISTEN", "MISS", "PUBLISH_WAIT", "SETTLE", "WAIT", "listen_seconds", "wait_for", "wait_seconds"]


SETTLE = 0.3
LISTEN = 1.3
#: A lookup of a service nobody serves answers 404 once the listing of every service has
#: settled without it and the registry has had MISS seconds: longer than LISTEN, since a missed
#: service fails a call where it only shortens a listing (the second query's answers get ~0.9 s).
MISS = 2.0
#: Default ``--wait``: a lookup ends as soon as the service shows up, so a generous wait only
#: delays a real miss when no node at all answers (a loaded machine can take a few seconds from
#: start-up to the first mDNS answer). ``publish`` waits less for subscribers' interest, which
#: ends early only when every known member has sent it (with no member at all, it is the whole wait).
WAIT = 5.0
PUBLISH_WAIT = 2.0


def wait_seconds(args: argparse.Namespace, default: float = WAIT) -> float:
    return default if args.wait is None else float(args.wait)


def listen_seconds(args: argparse.Namespace) -> float:
    """LISTEN for mDNS; 0 for a registry that answers in full at once."""
    return LISTEN if plugins.parse_url(registry_url(args)).scheme == "mdns" else 0.0


class _Settling:
    """Whether successive answers have stopped changing: the same services, versions and nodes
    for SETTLE seconds, and at least ``floor`` seconds since the first question."""

    def __init__(self, start: float, floor: float) -> None:
        self.start = self.steady_since = start
        self.floor = floor
        self.key: list[tuple[str, str, tuple[str, ...]]] | None = None

    def settled(self, found: list[Service], now: float) -> bool:
        key = sorted((s.name, s.version, tuple(sorted(n.id for n in s.nodes))) for s in found)
        if not found or key != self.key:
            self.key, self.steady_since = key, now
            return False
        return now - self.steady_since >= SETTLE and now - self.start >= self.floor


async def _listing(cluster: Cluster) -> list[Service] | None:
    """Every service of this client's clusters (``None`` if the registry failed this time)."""
    try:
        return await cluster.services()
    except MicroError:
        return None


async def _lookup(cluster: Cluster, name: str) -> list[Service] | None:
    """The service's records ([] if not found, ``None`` if the registry failed this time)."""
    try:
        return await cluster.describe(name)
    except NotFound:
        return []
    except MicroError:
        return None


async def wait_for(
    cluster: Cluster, name: str | None, wait: float, listen: float = LISTEN, *, complete: bool = False
) -> list[Service]:
    """What the registry says about ``name`` (every service but trimicro's with ``None``),
    asked again for up to ``wait`` seconds: mDNS answers arrive over a second or so.

    Only this client's clusters are listed (:meth:`Cluster.services`, :meth:`Cluster.describe`),
    so another cluster on the machine neither answers a lookup nor keeps a listing changing.

    * A lookup (``name``) returns the first answer that has the service: any node of it will do
      for a call. ``complete`` (``describe``) waits for the answer to settle instead, so that
      every node is shown.
    * A listing (``name=None``) returns once it has settled, after ``listen`` seconds at least
      (0 for registries that answer in full at once).
    * A lookup of a service nobody serves raises ``NotFound`` once the listing of every service
      has settled without it, after MISS seconds (``listen`` if 0), not at the end of ``wait``.
      An empty listing (no node answered yet) waits for ``wait``: a node may be starting.
    """
    start = trio.current_time()
    everything = _Settling(start, MISS if listen > 0 else 0.0)
    answer = _Settling(start, listen)
    last: list[Service] = []
    with trio.move_on_after(wait):
        while True:
            now = trio.current_time()
            if name is None:
                listed = await _listing(cluster)
                if listed is not None:
                    last = [s for s in listed if not s.name.startswith("trimicro.")]
                    if answer.settled(last, now):
                        return last
            else:
                found = await _lookup(cluster, name)
                if found and not complete:
                    return found
                if found and answer.settled(found, now):
                    return found
                if found == []:
                    listed = await _listing(cluster)
                    if (
                        listed is not None
                        and everything.settled(listed, now)
                        and all(s.name != name for s in listed)
                    ):
                        break
            await trio.sleep(0.1)
    if name is None:
        return last
    return await cluster.describe(name)
