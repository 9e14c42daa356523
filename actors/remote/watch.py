"""Death watch across nodes, on the watched side: the watches other nodes hold on our actors.

A peer asks with a SYSTEM ``watch`` frame to hear when one of our actors stops (docs/protocol.md
§4.4). Every such watch is a watcher in the actor's cell, so peers feed those sets, and:

- a watch passes the node's guard like an ask to the watched actor (same accounts, rules and
  401/403), *before* the actor is looked up: a refused watch gets the same answer whether the
  actor exists or not, so it tells the peer nothing;
- a peer holds at most ``Remoting.max_watches`` watches here (all actors together), checked
  before a watcher is added; beyond that, and beyond an actor's own bound on watchers of
  other nodes (``cell.MAX_REMOTE_WATCHERS``, below its bound on all watchers, so peers never
  take the room of local ``context.watch``), the watch is refused with 429;
- each peer's watches are indexed (:class:`PeerWatches`), every one of them, so that all are
  removed when the peer's last link closes (and memory returns), and a peer can only undo
  watches it made itself.

A refused watch is answered with a ``terminated`` frame whose reason is ``"watch refused: <code>
<detail>"`` (the watcher must not wait for a notice that will never come), as a watch of an
actor that does not exist is answered ``"no such actor"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import BadRequest, MicroError, TooManyRequests
from trimicro.mailbox.refs import ActorRef

if TYPE_CHECKING:
    from ..cell import Cell
    from .ports import LinkPort

__all__ = ["MAX_REMOTE_WATCHES", "REFUSED", "PeerWatches", "on_unwatch", "on_watch", "terminated_frame"]

#: Watches one peer node may hold on this node's actors at once (``Remoting.max_watches``).
MAX_REMOTE_WATCHES = 65536
#: How the reason of a ``terminated`` frame answering a refused watch begins.
REFUSED = "watch refused: "


class PeerWatches:
    """The watches one peer holds on our actors: the watched actor's ref -> the peer's watchers.

    Counted as a whole, so that a bound applies to the peer and not per actor; an entry leaves
    when the peer unwatches, when the actor stops (:meth:`discard` from the notice sent to the
    watcher), or all at once when the peer goes (:meth:`drop_all`).
    """

    __slots__ = ("_by_actor", "count")

    def __init__(self) -> None:
        self._by_actor: dict[ActorRef, set[ActorRef]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, entry: tuple[ActorRef, ActorRef]) -> bool:
        watchers = self._by_actor.get(entry[0])
        return watchers is not None and entry[1] in watchers

    def add(self, actor: ActorRef, watcher: ActorRef, limit: int) -> bool:
        """Index a watch; ``False`` if it is new and the peer already holds ``limit``."""
        watchers = self._by_actor.get(actor)
        if watchers is not None and watcher in watchers:
            return True
        if self.count >= limit:
            return False
        if watchers is None:
            watchers = self._by_actor[actor] = set()
        watchers.add(watcher)
        self.count += 1
        return True

    def discard(self, actor: ActorRef, watcher: ActorRef) -> None:
        watchers = self._by_actor.get(actor)
        if watchers is None or watcher not in watchers:
            return
        watchers.remove(watcher)
        self.count -= 1
        if not watchers:
            del self._by_actor[actor]

    def drop_all(self, cells: Mapping[str, Cell]) -> None:
        """The peer is gone: remove each of its watchers from the actor it watched."""
        by_actor, self._by_actor, self.count = self._by_actor, {}, 0
        for actor, watchers in by_actor.items():
            cell = cells.get(actor.path)
            if cell is None or cell.ref.uid != actor.uid:
                continue  # stopped since: its watchers went with it
            for watcher in watchers:
                cell.remove_watcher(watcher)


def terminated_frame(link: LinkPort, watcher: ActorRef, ref: ActorRef, reason: str) -> bytes:
    """A ``terminated`` frame telling ``watcher`` (on the peer) that ``ref`` is gone."""
    body = link.remoting.codec.encode(reason)
    return encode_envelope(Envelope(Kind.SYSTEM, 0, watcher, ref, "terminated", body=body))


def on_watch(link: LinkPort, env: Envelope, target: ActorRef, sender: ActorRef) -> None:
    """A peer's ``watch`` of our actor ``target`` for its actor ``sender``."""
    remoting = link.remoting
    peer = link.peer
    watcher = peer.bind(sender)
    try:
        if sender.node != peer.node_id:
            # Only the peer's own actors: a watcher named after another node's actor would take
            # that node's place in the cell's set (refs are equal whatever their binding).
            raise BadRequest("a watcher must be an actor of the watching node")
        guard = remoting.guard
        if guard is not None:  # first: the answer must not depend on whether the actor exists
            guard.admit_watch(link, target.path, env.headers)
    except MicroError as exc:
        link.push(terminated_frame(link, watcher, target, f"{REFUSED}{exc.code} {exc.detail}"))
        return
    try:
        cell = remoting.local_cell(target)
    except MicroError:
        link.push(terminated_frame(link, watcher, target, "no such actor"))
        return
    watches = peer.watching
    try:
        if not watches.add(cell.ref, watcher, remoting.max_watches):  # before the cell grows
            raise TooManyRequests(
                f"more than {remoting.max_watches} watches from node {peer.node_id}", id=remoting.node.id
            )
        try:
            cell.add_watcher(watcher)
        except MicroError:
            watches.discard(cell.ref, watcher)
            raise
    except MicroError as exc:
        link.push(terminated_frame(link, watcher, target, f"{REFUSED}{exc.code} {exc.detail}"))


def on_unwatch(link: LinkPort, target: ActorRef, sender: ActorRef) -> None:
    """A peer's ``unwatch``: undoes a watch of its own, nothing else."""
    try:
        cell = link.remoting.local_cell(target)
    except MicroError:
        return
    watches = link.peer.watching
    if (cell.ref, sender) in watches:
        watches.discard(cell.ref, sender)
        cell.remove_watcher(sender)
