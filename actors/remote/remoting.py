""":class:`Remoting` (``node.remote``): a node's connections to other nodes.

It owns the listener, the identity, the codecs and one :class:`~trimicro.actors.remote.peer.Peer`
per known node, accepts and dials links (handshake, hello, duplicate links), and installs the
flusher.
"""

from __future__ import annotations

import itertools
import math
import secrets
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import trio

from trimicro.mailbox.codec import CodecSet
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import MicroError, NotFound, RequestTimeout
from trimicro.mailbox.framing import DEFAULT_MAX_FRAME_SIZE
from trimicro.mailbox.logs import get_logger
from trimicro.mailbox.refs import ActorRef
from trimicro.mailbox.secure.stream import secure_client, secure_server
from trimicro.mailbox.transport import Connection, Listener, Transport, serve

from ..busypoll import DEFAULT_BUSY_POLL, BusyPoller
from ..cell import Cell
from . import FEATURES, MAX_HANDSHAKES, Guard, Identity, Unreachable, _node_id_of
from .actor import _Gone
from .flusher import _Flusher
from .link import Link
from .peer import Peer
from .watch import MAX_REMOTE_WATCHES

#: The package's logger, bound here (not imported) so calls on it compile as method calls, as before.
log = get_logger(__package__)

if TYPE_CHECKING:
    from .ports import NodePort


class Remoting:
    """A node's connections to other nodes: listener, identity, codecs and peers."""

    def __init__(
        self,
        node: NodePort,
        nursery: trio.Nursery,
        *,
        transport: Transport,
        identity: Callable[[], Identity],
        codecs: CodecSet,
        keepalive: float = 1.0,
        dead_after: float = 10.0,
        handshake_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        busy_poll: float = DEFAULT_BUSY_POLL,
        max_handshakes: int = MAX_HANDSHAKES,
    ) -> None:
        self.node = node
        self._nursery = nursery
        #: ``trio.current_time`` without its lookups (the run's clock, bound once): every request
        #: sent and served reads it, and the public function costs 2.5x the bound method.
        self.now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        #: Polls for the reply of a lone request instead of sleeping (see :mod:`.busypoll`).
        self.poller: BusyPoller | None = BusyPoller(nursery, busy_poll) if busy_poll else None
        self.transport = transport
        self._identity_factory = identity
        self._identity: Identity | None = None
        self.codecs = codecs
        self.codec = codecs.get()
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.handshake_timeout = handshake_timeout
        #: Inbound connections still in their handshake, and how many may be: an unauthenticated
        #: connection costs buffers and a task for up to ``handshake_timeout``, so beyond the cap
        #: a new one is closed at once (established links are not counted).
        self.handshaking = 0
        self.max_handshakes = max_handshakes
        #: Connections closed at once because the cap was reached (and when that was last logged).
        self.refused_handshakes = 0
        self._refusal_logged = -math.inf
        #: Watches one peer may hold on this node's actors (see :mod:`.remote_watch`).
        self.max_watches = MAX_REMOTE_WATCHES
        self.max_frame_size = max_frame_size
        self.peers: dict[str, Peer] = {}
        self._dormant: weakref.WeakValueDictionary[str, Peer] = weakref.WeakValueDictionary()
        self.listener: Listener | None = None
        self._serve_scope = trio.CancelScope()
        self.link_seq = itertools.count()
        #: This run of the node, told to peers in ``hello``: a new one means "I restarted".
        self.incarnation = secrets.token_hex(8)
        #: Hook for discovery: node id -> address, consulted when a peer's address is unknown.
        self.resolve: Callable[[str], str | None] | None = None
        #: SYSTEM operations handled by higher layers: ``endpoint -> handler(link, envelope)``;
        #: a handler may return an awaitable, which the link's reader awaits (backpressure).
        self.system_handlers: dict[str, Callable[[Link, Envelope], Awaitable[object] | None]] = {}
        #: Called with ``(peer, reason)`` when a peer's last link closes (failure detectors).
        self.on_peer_lost: list[Callable[[Peer, str], None]] = []
        #: Admits or refuses each request from another node (``None``: every peer that passed
        #: the handshake may call anything; ``trimicro.cluster.auth`` installs one).
        self.guard: Guard | None = None
        #: Called with ``peer`` when a peer gains its first link.
        self.on_peer_up: list[Callable[[Peer], None]] = []
        #: Writes what links queued, once per scheduler batch.
        self.flusher = _Flusher()

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self._identity_factory()
        return self._identity

    @property
    def address(self) -> str | None:
        return None if self.listener is None else self.listener.address

    def address_of(self, node_id: str) -> str | None:
        return None if self.resolve is None else self.resolve(node_id)

    def peer(self, node_id: str) -> Peer:
        peer = self.peers.get(node_id)
        if peer is None:
            peer = self._dormant.pop(node_id, None) or Peer(self, node_id)
            self.peers[node_id] = peer
        return peer

    def dormant(self, peer: Peer) -> None:
        """A peer with no link and nothing watched there leaves :attr:`peers` (which would
        otherwise grow with every node ever seen, e.g. each CLI run). It stays reachable by
        weak reference while refs bound to it exist, so it is revived, never duplicated."""
        if (
            peer.links
            or peer.watched
            or peer._dialing is not None
            or self.peers.get(peer.node_id) is not peer
        ):
            return
        del self.peers[peer.node_id]
        self._dormant[peer.node_id] = peer

    def bind_ref(self, ref: ActorRef) -> ActorRef:
        """Bind a ref decoded from the wire: a local cell, a remote actor, or a dead local one."""
        node = self.node
        if ref.node != node.id:
            return self.peer(ref.node).bind(ref)
        cell = node.cells.get(ref.path)
        if cell is None or (ref.uid and cell.ref.uid != ref.uid):
            return ref.bind(_Gone(node, ref))
        return cell.ref

    def cell_for(
        self, link: Link, action: str, target: ActorRef | None, endpoint: str, headers: Mapping[str, str]
    ) -> Cell:
        """:meth:`local_cell` for a request that is answered: a missing actor is first judged
        by the guard on its path (:meth:`Guard.admit_path`), so a refused caller gets its
        401/403, never a 404 that would tell it that nothing lives there."""
        try:
            return self.local_cell(target)
        except NotFound:
            guard = self.guard
            if guard is not None and target is not None and target.node == self.node.id:
                guard.admit_path(link, action, target.path, endpoint, headers)
            raise

    def local_cell(self, target: ActorRef | None) -> Cell:
        """The live local actor an incoming message is for, or :class:`NotFound`."""
        node = self.node
        if target is None or target.node != node.id:
            raise NotFound(f"message for {target} reached node {node.id}", id=node.id)
        cell = node.cells.get(target.path)
        if cell is None or (target.uid and cell.ref.uid != target.uid):
            raise NotFound(f"no actor {target}", id=node.id)
        return cell

    # ---- listening and dialing -----------------------------------------------------------------

    async def listen(self, address: str) -> str:
        """Accept connections from other nodes on ``address``; returns the bound address."""
        if self.listener is not None:
            raise RuntimeError(f"node {self.node.id} already listens on {self.listener.address}")
        _ = self.identity  # load or create it now, so a bad identity fails the start, not a peer
        self.listener = await self.transport.listen(address)
        await self._nursery.start(self._serve, self.listener)
        log.info("node %s listening on %s", self.node.id, self.listener.address)
        return self.listener.address

    async def _serve(self, listener: Listener, *, task_status: trio.TaskStatus[None]) -> None:
        with self._serve_scope:
            await serve(listener, self._accepted, task_status=task_status)

    async def _accepted(self, conn: Connection) -> None:
        if self.handshaking >= self.max_handshakes:
            self._refuse_handshake()
            return  # (``serve`` closes the connection)
        identity = self.identity
        self.handshaking += 1
        try:
            secure = await secure_server(
                conn,
                identity.signing_key,
                identity.certificate,
                identity.verify_peer,
                self.handshake_timeout,
                max_frame_size=self.max_frame_size,
            )
        finally:
            self.handshaking -= 1
        node_id = _node_id_of(secure.peer_info)
        if node_id == self.node.id:
            raise Unreachable("refusing a connection from a node with this node's own id")
        if self.guard is not None:
            try:
                self.guard.admit_peer(secure.peer_info)
            except MicroError as exc:
                log.warning("refused a link from node %s: %s", node_id, exc.detail)
                await secure.aclose()
                return
        peer = self.peer(node_id)
        link = Link(self, peer, secure, initiator=False)
        peer.add_link(link)
        link.push(self._hello())
        await link.run()

    def _refuse_handshake(self) -> None:
        """Count a connection closed for the handshake cap; log it at most every 10 s."""
        self.refused_handshakes += 1
        now = trio.current_time()
        if now - self._refusal_logged >= 10.0:
            self._refusal_logged = now
            log.warning(
                "%d connections in their handshake: refusing new ones (%d so far)",
                self.handshaking,
                self.refused_handshakes,
            )

    async def dial(self, address: str, timeout: float, *, expect: str | None = None) -> Link:
        """Open a secure link to the node at ``address`` (and check it is ``expect`` if given)."""
        identity = self.identity
        with trio.move_on_after(timeout) as scope:
            conn = await self.transport.dial(address, timeout)
            secure = await secure_client(
                conn,
                identity.signing_key,
                identity.certificate,
                identity.verify_peer,
                min(timeout, self.handshake_timeout),
                max_frame_size=self.max_frame_size,
            )
        if scope.cancelled_caught:
            raise RequestTimeout(f"connecting to {address} took more than {timeout:g}s")
        node_id = _node_id_of(secure.peer_info)
        if (expect is not None and node_id != expect) or node_id == self.node.id:
            await secure.aclose()
            raise Unreachable(f"{address} is node {node_id}, not {expect or 'another node'}")
        if self.guard is not None:
            try:
                self.guard.admit_peer(secure.peer_info)
            except MicroError:
                await secure.aclose()
                raise Unreachable(f"node {node_id} is refused here") from None
        peer = self.peer(node_id)
        peer.address = address
        link = Link(self, peer, secure, initiator=True)
        peer.add_link(link)
        link.push(self._hello())
        self._nursery.start_soon(link.run)
        return link

    def _hello(self) -> bytes:
        """Where this node listens, which run of it this is (a restart is a new incarnation), and
        which optional frames it understands (``tells`` and ``items``: batches of tells and of
        stream items)."""
        hello = self.codec.encode(
            {"address": self.address or "", "incarnation": self.incarnation, "features": FEATURES}
        )
        return encode_envelope(Envelope(Kind.SYSTEM, endpoint="hello", body=hello))

    async def connect(self, address: str, timeout: float | None = None) -> str:
        """Dial ``address`` unless a link to that node exists; return the node's id."""
        for peer in self.peers.values():
            if peer.address == address and peer.link is not None:
                return peer.node_id
        link = await self.dial(address, self.node.ask_timeout if timeout is None else timeout)
        return link.peer.node_id

    async def aclose(self, flush_timeout: float = 1.0) -> None:
        """Stop listening, send what is queued (a membership leave, last answers) within
        ``flush_timeout``, and close every link (peers see a clean end, then "node unreachable")."""
        links = [link for peer in list(self.peers.values()) for link in peer.links]
        with trio.move_on_after(flush_timeout):
            for link in links:
                await link.flush()
        try:
            self._serve_scope.cancel()  # also ends the accepted links' tasks
            if self.listener is not None:
                await self.listener.aclose()
            for link in links:
                link.close("node shutting down")
        finally:
            self.flusher.uninstall()
