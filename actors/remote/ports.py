"""What the remote modules need of the objects above them, as Protocols: what a link needs of
its node, the node's remoting and the peer it connects to; what a peer needs of its remoting;
what a remote actor needs of its peer.

The runtime imports point one way, remoting -> peer -> link; a link still calls back into its
peer (``bind``, ``restarted``, ``link_closed``) and reads its remoting's codecs, guard and limits.
Naming those needs here, in a module that imports none of the three, is what lets the link's
modules (:mod:`.outbox`, :mod:`.tellflow`, :mod:`.link`, :mod:`.watch`, :mod:`.actor`), and the
remoting its node, be typed without importing their owners (no import cycle, not even for
annotations). The concrete :class:`~.remoting.Remoting`, :class:`~.peer.Peer` and
:class:`~trimicro.actors.node.Node` satisfy them structurally; mypy checks that where a link is
built.

Parameters that take a link are ``Any`` here: the link's own class is above this module.
:class:`LinkPort` is what code beside the link (the guard, the death-watch handlers) needs of
one. A :class:`~.peer.Peer` is above :mod:`.actor` and below :mod:`.remoting`, and a remote
actor sends on its peer's link: :class:`PeerRemotingPort` and :class:`ActorPeerPort` are generic
in the link's type, which their users give as :class:`~.outbox.Outbox` (the link's base, below
both; it declares what a peer uses of its links: ``initiator``, ``seq``, ``incarnation``,
``retire``, ``close``). Annotations only: no call goes through a Protocol at run time.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from trimicro.mailbox.codec import Codec, CodecSet
from trimicro.mailbox.envelope import Envelope
from trimicro.mailbox.refs import ActorRef

from .. import ports
from ..busypoll import BusyPoller
from ..cell import Cell
from . import Guard
from .flusher import _Flusher

__all__ = ["ActorPeerPort", "LinkPort", "NodePort", "PeerPort", "PeerRemotingPort", "RemotingPort"]

#: The type of link the code using a port works with (the owners above name it: an Outbox).
LinkT = TypeVar("LinkT", covariant=True)


class NodePort(ports.NodePort, Protocol):
    """What the remote layer needs of its node: what a cell needs of it (its id, deadlines, dead
    letters, system tasks, the ask timeout, ...) and its live local actors, where a frame's
    target is looked up."""

    @property
    def cells(self) -> Mapping[str, Cell]: ...


class RemotingPort(Protocol):
    """What a link needs of its node's :class:`~.remoting.Remoting`: codecs, limits, the guard,
    the local actors a frame is for, and the hooks higher layers plug in."""

    @property
    def node(self) -> NodePort: ...
    @property
    def codec(self) -> Codec: ...
    @property
    def codecs(self) -> CodecSet: ...
    @property
    def guard(self) -> Guard | None: ...
    @property
    def poller(self) -> BusyPoller | None: ...
    @property
    def flusher(self) -> _Flusher: ...
    @property
    def max_frame_size(self) -> int: ...
    @property
    def now(self) -> Callable[[], float]: ...
    @property
    def max_watches(self) -> int: ...
    @property
    def keepalive(self) -> float: ...
    @property
    def dead_after(self) -> float: ...
    @property
    def link_seq(self) -> itertools.count[int]: ...
    @property
    def system_handlers(self) -> Mapping[str, Callable[[Any, Envelope], Awaitable[object] | None]]: ...

    def bind_ref(self, ref: ActorRef) -> ActorRef: ...

    def cell_for(
        self, link: Any, action: str, target: ActorRef | None, endpoint: str, headers: Mapping[str, str]
    ) -> Cell: ...

    def local_cell(self, target: ActorRef | None) -> Cell: ...


class PeerPort(Protocol):
    """What a link needs of its :class:`~.peer.Peer`: who it is, and the calls a link makes back
    (binding refs, a restart seen in a hello, a remote actor's end, the link's own end)."""

    node_id: str
    address: str | None

    @property
    def watching(self) -> Any: ...

    def bind(self, ref: ActorRef) -> ActorRef: ...

    def restarted(self, link: Any) -> None: ...

    def terminated(self, ref: ActorRef, watcher: ActorRef, reason: str | None) -> None: ...

    def link_closed(self, link: Any) -> None: ...


class LinkPort(Protocol):
    """What a :class:`~.link.Link` is to the code beside it that takes one as an argument: the
    node's :class:`~trimicro.actors.remote.Guard` (``trimicro.cluster.auth`` implements it) and the
    death-watch handlers (:mod:`.watch`). The peer it leads to, that peer's certificate as the
    handshake gave it, the principal a guard caches on it, its remoting, and a queued send."""

    #: Whoever a guard authenticated on this link (it caches it here), ``None`` until then.
    principal: Any

    @property
    def remoting(self) -> RemotingPort: ...
    @property
    def peer(self) -> PeerPort: ...
    @property
    def peer_info(self) -> Any: ...

    def push(self, frame: bytes) -> None: ...


class PeerRemotingPort(RemotingPort, Protocol[LinkT]):
    """What a :class:`~.peer.Peer` needs of its :class:`~.remoting.Remoting`, beyond what its
    links need: dialing, the discovery hook's addresses, the hooks told of a peer's first and
    last link, and a place for a peer without links (so that bound refs keep their peer)."""

    @property
    def on_peer_up(self) -> Sequence[Callable[[Any], None]]: ...
    @property
    def on_peer_lost(self) -> Sequence[Callable[[Any, str], None]]: ...

    def address_of(self, node_id: str) -> str | None: ...

    def dormant(self, peer: Any) -> None: ...

    async def dial(self, address: str, timeout: float, *, expect: str | None = None) -> LinkT: ...


class ActorPeerPort(PeerPort, Protocol[LinkT]):
    """What a :class:`~.actor.RemoteActor` needs of its :class:`~.peer.Peer`: the link to send
    on (dialed when there is none), and the peer's half of death watch."""

    @property
    def remoting(self) -> RemotingPort: ...
    @property
    def link(self) -> LinkT | None: ...

    async def connect(self, timeout: float) -> LinkT: ...

    def connect_soon(self) -> None: ...

    def watch(self, target: ActorRef, watcher: ActorRef) -> None: ...

    def unwatch(self, target: ActorRef, watcher: ActorRef) -> None: ...
