"""A :class:`Peer`: another node as seen from this one.

It holds the :class:`~trimicro.actors.remote.link.Link` to that node when up, dials it on first
use (one dial at a time; after a failure, new attempts wait out an exponential backoff), binds
refs to actors there, and remembers which local actors watch actors there.

It names neither the link nor the remoting (both import this module): it types its links as
:class:`~.outbox.Outbox`, their base, and its remoting as :class:`~.ports.PeerRemotingPort`.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import trio

from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.refs import ActorRef

from ..messages import Terminated
from . import REF_CACHE, Unreachable
from .actor import RemoteActor
from .watch import PeerWatches

if TYPE_CHECKING:
    from .outbox import Outbox
    from .ports import PeerRemotingPort


class Peer:
    """Another node as seen from this one: its link when up, how to dial it, who watches what there."""

    def __init__(self, remoting: PeerRemotingPort[Outbox], node_id: str) -> None:
        self.remoting = remoting
        self.node_id = node_id
        self.address: str | None = None
        self.links: list[Outbox] = []
        self._dialing: trio.Event | None = None
        self._failures = 0
        self._retry_at = -math.inf
        self._last_error = ""
        self._refs: dict[ActorRef, ActorRef] = {}
        #: remote actor -> local watchers, in the order they came: the first is the one named
        #: in the ``watch`` frame (any stands for all; see :meth:`unwatch`).
        self.watched: dict[ActorRef, dict[ActorRef, None]] = {}
        #: Its watches of our actors (bounded; all removed when it goes).
        self.watching = PeerWatches()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        """Return at the next change of this peer's links (for tools and tests)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"<Peer {self.node_id} at {self.address} links={len(self.links)}>"

    @property
    def link(self) -> Outbox | None:
        """The link new traffic uses (both nodes pick the same one when two exist)."""
        links = self.links
        return links[0] if links else None

    def bind(self, ref: ActorRef) -> ActorRef:
        """``ref`` (an actor on this peer) bound to a :class:`RemoteActor`, cached."""
        bound = self._refs.get(ref)
        if bound is None:
            if len(self._refs) >= REF_CACHE:
                self._refs.clear()
            bound = self._refs[ref] = ref.bind(RemoteActor(self, ref))
        return bound

    # ---- links ---------------------------------------------------------------------------------

    def add_link(self, link: Outbox) -> None:
        """Register a new link; with two, both nodes keep the one dialed by the smaller node id."""
        links = self.links
        links.append(link)
        if len(links) == 1:
            for hook in list(self.remoting.on_peer_up):
                hook(self)
        self._failures = 0
        self._retry_at = -math.inf
        if len(links) > 1:
            local = self.remoting.node.id

            def rank(candidate: Outbox) -> tuple[int, int]:
                dialer = local if candidate.initiator else self.node_id
                # Newer links from the same dialer replace older ones (the peer reconnected).
                return (0 if dialer == min(local, self.node_id) else 1, -candidate.seq)

            links.sort(key=rank)
            for extra in links[1:]:
                if extra.initiator:  # the dialer of a losing link retires it, after a last flush
                    self.remoting.node.spawn_system(extra.retire)
        self._notify()

    def restarted(self, link: Outbox) -> None:
        """``link`` told us the peer's incarnation: links to an earlier run of it are dead (the
        old process may never close them, e.g. when it hangs), so close them now rather than
        after ``dead_after`` seconds of silence, and treat the old run as gone (its actors
        stopped: their watchers hear so) and the new one as come (``on_peer_up``)."""
        stale = [
            other
            for other in self.links
            if other is not link and other.incarnation is not None and other.incarnation != link.incarnation
        ]
        if not stale:
            return
        for other in stale:
            other.close("the peer restarted")
            self.links.remove(other)  # at once: the new run is the only one from now on
        self._forget_run("the peer restarted")
        for hook in list(self.remoting.on_peer_up):
            hook(self)
        self._notify()

    def _forget_run(self, reason: str) -> None:
        """The peer's process is gone: tell watchers of its actors, forget its watches of ours."""
        watched, self.watched = self.watched, {}
        for ref, watchers in watched.items():
            for watcher in watchers:
                binding = watcher.binding
                if binding is not None:
                    binding.system(Terminated(self.bind(ref), f"node unreachable: {reason}"))
        watching, self.watching = self.watching, PeerWatches()
        watching.drop_all(self.remoting.node.cells)
        self._refs = {}  # (bound refs to a run that is gone: a peer that flooded us leaves none)

    def link_closed(self, link: Outbox) -> None:
        if link in self.links:
            self.links.remove(link)
        self._notify()
        if not self.links:
            reason = link.reason or "connection lost"
            for hook in list(self.remoting.on_peer_lost):
                hook(self, reason)
            self._forget_run(reason)
            self.remoting.dormant(self)

    def send_system(self, op: str, body: bytes, target: ActorRef | None = None) -> bool:
        """Queue a SYSTEM ``op`` on the current link; ``False`` (and a dial started) if none."""
        link = self.link
        if link is None:
            self.connect_soon()
            return False
        link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, target, None, op, body=body)))
        return True

    def connect_soon(self) -> None:
        if self.link is None and self._dialing is None:
            self.remoting.node.spawn_system(self._connect_quietly)

    async def _connect_quietly(self) -> None:
        with contextlib.suppress(MicroError):
            await self.connect(self.remoting.node.ask_timeout)

    async def connect(self, timeout: float) -> Outbox:
        """The current link, dialing if there is none (one dial at a time, with backoff)."""
        while True:
            link = self.link
            if link is not None:
                return link
            if self._dialing is None:
                break
            await self._dialing.wait()
            if self.link is None and trio.current_time() < self._retry_at:  # that dial failed
                raise Unreachable(f"node {self.node_id} unreachable: {self._last_error}", id=self.node_id)
            # (else it was cancelled, its caller's deadline passed: dial again, within ours)
        now = trio.current_time()
        if now < self._retry_at:
            raise Unreachable(
                f"node {self.node_id} unreachable: {self._last_error} (retry in {self._retry_at - now:.2f}s)",
                id=self.node_id,
            )
        address = self.address or self.remoting.address_of(self.node_id)
        if address is None:
            raise Unreachable(f"node {self.node_id} unreachable: no known address", id=self.node_id)
        event = self._dialing = trio.Event()
        try:
            return await self.remoting.dial(address, timeout, expect=self.node_id)
        except MicroError as exc:
            self._failures += 1
            self._last_error = exc.detail
            backoff = min(5.0, 0.05 * 2 ** min(self._failures, 10))
            self._retry_at = trio.current_time() + backoff * (0.5 + self.remoting.node.rng.random() / 2)
            raise Unreachable(f"node {self.node_id} unreachable: {exc.detail}", id=self.node_id) from exc
        finally:
            self._dialing = None
            event.set()

    # ---- death watch ---------------------------------------------------------------------------

    def watch(self, target: ActorRef, watcher: ActorRef) -> None:
        watchers = self.watched.get(target)
        if watchers is None:
            watchers = self.watched[target] = {}
        first = not watchers
        watchers[watcher] = None
        if first:
            self.remoting.node.spawn_system(self._send_watch, target)

    async def _send_watch(self, target: ActorRef) -> None:
        try:
            link = await self.connect(self.remoting.node.ask_timeout)
        except MicroError as exc:
            watchers = self.watched.pop(target, {})
            for w in watchers:
                if w.binding is not None:
                    w.binding.system(Terminated(self.bind(target), f"node unreachable: {exc.detail}"))
            return
        now = self.watched.get(target)
        if now:  # (all may have unwatched while the link was dialed)
            # Any local watcher stands for all of them: the peer answers "terminated" once.
            self._send_watch_op(link, "watch", target, next(iter(now)))

    @staticmethod
    def _send_watch_op(link: Outbox, op: str, target: ActorRef, watcher: ActorRef) -> None:
        link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, target, watcher, op)))

    def unwatch(self, target: ActorRef, watcher: ActorRef) -> None:
        """The peer knows the watch by the watcher named in it (the first local one), and only
        that one undoes it: when that watcher leaves and others remain, the watch is moved to
        the next one (watch it, then unwatch the first), so the peer keeps exactly one."""
        watchers = self.watched.get(target)
        if not watchers or watcher not in watchers:
            return
        named = next(iter(watchers))
        del watchers[watcher]
        if watchers and watcher != named:
            return
        if not watchers:
            del self.watched[target]
        link = self.link
        if link is None or self._dialing is not None:
            return  # nothing sent yet, or _send_watch will name the current first watcher
        if watchers:
            self._send_watch_op(link, "watch", target, next(iter(watchers)))
        self._send_watch_op(link, "unwatch", target, watcher)

    def terminated(self, ref: ActorRef, watcher: ActorRef, reason: str | None) -> None:
        """The peer says ``ref`` stopped: tell every local watcher once."""
        watchers = self.watched.pop(ref, None)
        if watchers is None and ref.uid:  # watched by path ("whoever holds it", uid 0)
            ref = ActorRef(ref.node, ref.path, 0)
            watchers = self.watched.pop(ref, None)
        if watchers is None:
            return
        bound = self.bind(ref)  # the ref as the watchers know it
        for w in watchers:
            if w.binding is not None:
                w.binding.system(Terminated(bound, reason))
