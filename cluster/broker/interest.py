"""Interest: which patterns each node subscribes to, told to every member, and who may receive what.

A node tells every member the patterns of its local subscriptions (``SYSTEM`` operation
``pubsub.interest``: ``(pattern, queue group or "", count)`` rows, versioned per run by a random
epoch) when they change, to each member that joins and on each new link; a publisher sends a
message only to the nodes whose interest matches (see :mod:`.pubsub`). :class:`Interest` is that
part of :class:`~.pubsub.PubSub`, a mixin whose state the broker's ``__init__`` sets.
"""

from __future__ import annotations

import trio

from trimicro.actors import ActorRef, Node
from trimicro.actors.lowlevel import Link, Peer
from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope
from trimicro.mailbox.errors import BadRequest, MicroError
from trimicro.mailbox.logs import get_logger

from .host import Host, MemberEventView
from .message import Subscription
from .route import Route
from .topics import validate_pattern

__all__ = ["MAX_REMOTE_INTEREST", "Interest"]

log = get_logger(__package__)

#: Interest entries accepted from one peer.
MAX_REMOTE_INTEREST = 10_000


class Interest:
    """The broker's interest half: ours told to peers, theirs kept in :attr:`remote_interest`."""

    # Set by PubSub.__init__.
    cluster: Host
    node: Node
    codec: Codec
    _by_actor: dict[ActorRef, list[Subscription]]
    #: node id -> [(pattern, queue or "", count)]
    remote_interest: dict[str, list[tuple[str, str, int]]]
    _routes: dict[str, Route]
    _interest_version: int
    _interest_event: trio.Event
    _peer_versions: dict[str, tuple[int, int]]
    _epoch: int

    def local_interest(self) -> list[tuple[str, str, int]]:
        counts: dict[tuple[str, str], int] = {}
        for subs in self._by_actor.values():
            for sub in subs:
                key = (sub.pattern, sub.queue or "")
                counts[key] = counts.get(key, 0) + 1
        return [(p, q, n) for (p, q), n in sorted(counts.items())]

    def _interest_body(self) -> bytes:
        self._interest_version += 1
        subs = [list(e) for e in self.local_interest()]
        return self.codec.encode({"e": self._epoch, "v": self._interest_version, "subs": subs})

    def _interest_changed(self) -> None:
        self._routes.clear()
        membership = self.cluster.membership
        if membership is None:
            return
        for member in membership.swim.alive_members():
            if member.id != self.node.id:
                self._tell_interest(member.id)

    def _tell_interest(self, node_id: str) -> None:
        """Send our interest to ``node_id`` now, or once a link to it is up (on_peer_up)."""
        peer = self.node.remote.peer(node_id)
        if peer.link is not None:
            peer.send_system("pubsub.interest", self._interest_body())
        else:
            peer.connect_soon()  # _peer_up sends it when the link is there

    def _peer_up(self, peer: Peer) -> None:
        self._routes.clear()
        peer.send_system("pubsub.interest", self._interest_body())

    def _member_event(self, event: MemberEventView) -> None:
        if event.kind in ("joined", "alive"):
            self._tell_interest(event.member.id)
        elif event.kind in ("dead", "left") and self.remote_interest.pop(event.member.id, None) is not None:
            self._routes.clear()
            self._peer_versions.pop(event.member.id, None)
            self._interest_event.set()
            self._interest_event = trio.Event()

    def _on_interest(self, link: Link, env: Envelope) -> None:
        try:
            data = self.codec.decode(env.body)
            epoch, version = data["e"], data["v"]
            if type(version) is not int or type(epoch) is not int:
                raise BadRequest("bad interest version")
            known = self._peer_versions.get(link.peer.node_id)
            if known is not None and known[0] == epoch and version <= known[1]:
                return  # an older list that overtook a newer one (two links for a moment)
            subs = data["subs"]
            if not isinstance(subs, list) or len(subs) > MAX_REMOTE_INTEREST:
                raise BadRequest("bad interest list")
            entries: list[tuple[str, str, int]] = []
            for entry in subs:
                pattern, queue, count = entry
                validate_pattern(pattern)
                if not isinstance(queue, str) or not isinstance(count, int) or count < 1:
                    raise BadRequest("bad interest entry")
                entries.append((pattern, queue, count))
        except (MicroError, ValueError, TypeError, KeyError) as exc:
            log.debug("bad pubsub interest from %s: %s", link.peer.node_id, exc)
            return
        self.remote_interest[link.peer.node_id] = entries
        self._routes.clear()
        self._peer_versions[link.peer.node_id] = (epoch, version)
        self._interest_event.set()
        self._interest_event = trio.Event()

    def may_receive(self, node_id: str, topic: str) -> bool:
        """Whether node ``node_id`` may subscribe to ``topic`` (checked per message, so a
        wildcard subscription gets only what the rules allow, and rule changes apply at once)."""
        guard = self.cluster.auth
        if guard is None:
            return True
        link = self.node.remote.peer(node_id).link
        if link is None:
            return True  # nothing is sent without a link anyway
        try:
            guard.admit_topic(link, None, topic, "subscribe")
        except MicroError:
            return False
        return True

    async def wait_interest(self) -> None:
        """Return at the next change of a peer's interest (for tools and tests)."""
        await self._interest_event.wait()
