"""Remote actors: refs on other nodes, reached over one secure connection per pair of nodes.

A ref whose node is not this one is bound to a :class:`RemoteActor`, which has the same four
calls as a local cell (``tell``, ``try_tell``, ``ask``, ``system``), so ``tell``/``ask`` and death
watch work the same whatever the ref's location. Underneath:

- :class:`Remoting` (``node.remote``) owns the listener, the identity, the codecs and one
  :class:`Peer` per known node.
- A :class:`Peer` holds the :class:`Link` (secure connection) to one node, dials it on first use
  (one dial at a time; after a failure, new attempts wait out an exponential backoff), and
  remembers which local actors watch actors there.
- A :class:`Link` runs three tasks: a reader that decodes envelopes and dispatches them, a writer
  that sends everything queued since its last write in one coalesced, encrypted write, and a
  keepalive watchdog. When the link ends, every ask waiting on it fails at once with 503 "node
  unreachable" and watchers of actors on that node get ``Terminated``.

Requests from other nodes are queued like local ones, with an :class:`InboundReply` that sends
the answer back; their deadline bounds the handler (``Cell._handle_bounded``) and the caller's
CANCEL ends it early. See docs/protocol.md for the wire rules this follows.

The package, by concern: :mod:`.protocol` (the link's rules without I/O: its states as a
table, correlation ids, credit), :mod:`.link` (Link: the reader, the dispatch of frames, the
lifetime), :mod:`.outbox` (a link's send queue and writer; InboundReply and RemoteStreamOps,
which answer over it), :mod:`.tellflow` (the
tells a link receives: their delivery, and flow control per target), :mod:`.actor`
(RemoteActor), :mod:`.peer` (Peer), :mod:`.remoting` (Remoting), :mod:`.ports` (what a link
needs of its node, remoting and peer, as Protocols), :mod:`.batching` (coalesced frames,
batches of tells and items), :mod:`.flusher` (the trio instrument that writes once per
scheduler batch), :mod:`.watch` (death watch across nodes).
This module holds the limits, the hooks a node plugs in (:class:`Identity`, :class:`Guard`),
:class:`Unreachable` and the small helpers the others share, and re-exports the public classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from nacl.signing import SigningKey

from trimicro.mailbox.errors import BadRequest, MicroError, ServiceUnavailable, error_from_fields
from trimicro.mailbox.logs import get_logger

from ..cell import Cell
from ..metadata import AUTHORIZATION, forward_auth

__all__ = [
    "AUTHORIZATION",
    "Coalesced",
    "Guard",
    "Identity",
    "InboundReply",
    "Link",
    "LinkPort",
    "Peer",
    "RemoteActor",
    "Remoting",
    "Unreachable",
    "forward_auth",
]

log = get_logger(__package__)

#: Bytes queued for one link before senders wait (replies and control messages never wait).
OUT_HIGH_WATER = 4 * 1024 * 1024
#: Bytes queued for one link at which it is closed (its peer is not reading our answers).
OUT_HARD_CAP = 4 * OUT_HIGH_WATER
#: Longest deadline a peer may give a request (a longer one is cut to this).
MAX_DEADLINE_MS = 3_600_000
#: Requests from one peer being served at once; more are refused with 429.
MAX_INBOUND = 16 * 1024
#: Streams open at once on one link; more are refused with 429.
MAX_STREAMS = 4096
#: Largest credit one STREAM_CREDIT may grant.
MAX_CREDIT = 1 << 20
#: Bound refs remembered per peer (so a hot sender ref is bound once, not per message).
REF_CACHE = 4096
#: Entries in one Coalesced frame, and the room kept for its envelope within the frame limit.
COALESCE_MAX = 1024
COALESCE_SLACK = 256
#: Longest a duplicate link stays open for the exchanges that started on it (see Link.retire).
RETIRE_GRACE = 60.0
#: The optional frames this node understands, listed in its hello (docs/protocol.md §4.4).
FEATURES = ["tells", "items", "tells.hold"]
RETIRE_POLL = 0.05
#: Inbound connections whose handshake is still running, at most (``start_node(max_handshakes=)``).
MAX_HANDSHAKES = 256


class Identity(Protocol):
    """What a node needs to prove who it is and to judge peers (see ``trimicro.mailbox.secure.identity``)."""

    signing_key: SigningKey
    certificate: bytes

    def verify_peer(self, id_key: bytes, cert: bytes) -> Any:
        """Return the peer's certificate (with a ``node_id``) or raise to refuse it."""
        ...


class Guard(Protocol):
    """Decides whether a request from another node may reach a local actor (authentication and
    access rules live in a higher layer: ``trimicro.cluster.auth``)."""

    def admit(
        self,
        link: LinkPort,
        action: str,
        cell: Cell,
        endpoint: str,
        headers: Mapping[str, str] | None,
        msg: Any,
    ) -> Any:
        """Return the caller's principal (the handler's ``context.account``) or raise a
        :class:`~trimicro.mailbox.errors.MicroError` (401/403) to refuse. ``action`` is
        ``"call"``, ``"tell"`` or ``"stream"``."""
        ...

    def admit_watch(self, link: LinkPort, path: str, headers: Mapping[str, str] | None) -> Any:
        """Like :meth:`admit` for a death watch of the actor at ``path``, judged by the path
        alone: the node calls it before it looks the actor up, so that a refusal is the same
        whether the actor exists or not (see :mod:`.remote_watch`)."""
        ...

    def admit_path(
        self, link: LinkPort, action: str, path: str, endpoint: str, headers: Mapping[str, str] | None
    ) -> Any:
        """Like :meth:`admit` for a request to ``path`` where no actor lives, judged by the path
        and endpoint alone: the node asks before it answers 404, so that a caller the rules
        refuse gets the same 401/403 whether the actor exists or not (no probing for actors)."""
        ...

    def admit_peer(self, peer_info: Any) -> None:
        """Raise to refuse a node that passed the handshake (revoked since its certificate was
        issued): no link, so none of its messages (SYSTEM ones included) reach this node."""
        ...


class Unreachable(ServiceUnavailable):
    """503: the node holding the actor cannot be reached (down, refused, or the link dropped).

    ``maybe_delivered`` is True when the link dropped after the request was queued for it: the
    peer may have run it. Only then is a retry elsewhere unsafe for non-idempotent calls.
    """

    maybe_delivered = False


def _fail_fields(err: MicroError) -> dict[str, Any]:
    return err.to_fields()


#: Initial credit when a STREAM_OPEN carries no ``credit`` header (docs/protocol.md §4.3).
PROTOCOL_DEFAULT_CREDIT = 64


def _error_of(fields: Any) -> MicroError:
    """The typed error in an error map from a peer; ``BadRequest`` if the map is malformed."""
    if (
        not isinstance(fields, dict)
        or type(fields.get("code", 500)) is not int
        or not all(isinstance(fields.get(k, ""), str) for k in ("id", "detail", "status"))
    ):
        return BadRequest("malformed error map from the peer")
    return error_from_fields(fields)


def _credit_header(value: str | None) -> int:
    if value is None:
        return PROTOCOL_DEFAULT_CREDIT
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_CREDIT:
        raise BadRequest("the credit header is an integer from 1 to 2^20")
    return int(value)


def _node_id_of(peer_info: Any) -> str:
    node_id = getattr(peer_info, "node_id", None)
    if not isinstance(node_id, str) or not node_id:
        raise Unreachable("the peer's certificate names no node id")
    return node_id


# The parts, beside the shared definitions above (they import them).
from .actor import RemoteActor  # noqa: E402
from .batching import Coalesced  # noqa: E402
from .link import Link  # noqa: E402
from .outbox import InboundReply  # noqa: E402
from .peer import Peer  # noqa: E402
from .ports import LinkPort  # noqa: E402
from .remoting import Remoting  # noqa: E402
