"""Membership and failure detection for a cluster node: the SWIM state machine, wired to links.

:class:`~trimicro.cluster.membership.swim.Swim` is sans-I/O; this module is its runtime. Its messages
travel as ``SYSTEM`` envelopes (operation ``"swim"``) on the same authenticated links as
everything else, so the sender of a SWIM message is the node id proven by the handshake, never
what the message claims: a member speaks for itself, and what it says about others is checked
(see :mod:`trimicro.cluster.membership.swim`; claims that fail the check are counted in
:attr:`Membership.ignored_claims`, malformed messages in :attr:`Membership.rejected_messages`). Inputs:

- a tick task drives SWIM's timers (probe rounds, indirect probes, suspicion timeouts);
- peers come from the registry (every cluster node announces a ``trimicro.node`` record), so a
  new node joins as soon as discovery shows it one member; records of other clusters (another
  authority's fingerprint) are never joined, so a second cluster on the machine is not probed;
- and from seeds (``host:port`` of members on other hosts, :mod:`.seeds`), asked for their
  members every 2 s;
- a dropped link (``on_peer_lost``: TCP reset after a SIGKILL) makes that member suspect at once,
  so a killed node is evicted after the suspicion timeout (1.5 s) instead of many minutes of mDNS
  TTL, while a merely paused one (SIGSTOP) is suspected after missing its probes and refutes
  when it resumes.

Each member's metadata carries ``svc``, the ``name@version`` list of services it serves: a node
that starts a service is callable by every member within a few gossip rounds, before the
registry has spread its record. The cluster's registry cache drops nodes that membership holds
dead or left, and the circuit breaker skips suspects.

**The API.** :class:`Membership` (``cluster.membership``) is built by the wiring on a
:class:`Host` (the node, its registry and cache, its breaker, its cluster fingerprint, the
services it serves, and ``accepts``, the cluster check) and run with
``await nursery.start(membership.run)``. What the rest of the cluster reads:
``is_live(info)`` (not dead or left), ``address_of(node_id)``, ``gossiped(name)`` (services
learnt from gossip, before the registry has them), ``member(node_id)``, ``view()`` (for the
CLI's ``nodes`` and the dashboard) and ``wait_changed()``. It is not a plugin point: SWIM runs
on the cluster's own links whatever the registry; ``start_cluster(membership=False)`` leaves it
out (the CLI's short-lived client nodes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import trio

from trimicro.actors import Actor, Node
from trimicro.actors.lowlevel import Link, Peer
from trimicro.cluster.registry import (
    NODE_SERVICE,
    Event,
    EventType,
    NodeInfo,
    Registry,
    RegistryCache,
    Service,
)
from trimicro.mailbox.envelope import Envelope
from trimicro.mailbox.errors import MicroError
from trimicro.mailbox.logs import get_logger

from .seeds import SeedJoiner
from .swim import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_LENGTH,
    Member,
    MemberEvent,
    MemberState,
    Outgoing,
    Swim,
    SwimConfig,
    SwimProtocolError,
)

__all__ = ["SYSTEM_NAME", "SYSTEM_PATH", "Host", "Membership", "MembershipActor"]

log = get_logger(__package__)

#: Where each cluster node runs its membership actor (``Membership.members`` and friends).
SYSTEM_NAME = "trimicro-cluster"
SYSTEM_PATH = f"/user/{SYSTEM_NAME}"

#: How often the tick task runs at most (SWIM's own deadlines are finer only when due sooner).
TICK = 0.05


def _svc_metadata(digest: str) -> dict[str, str]:
    """The services digest in SWIM metadata: values of at most 256 characters, split on commas
    across keys ``svc``, ``svc1``, ... (at most 16 keys; a longer list is cut, and those services
    are then found through the registry only)."""
    chunks: list[str] = []
    for entry in digest.split(",") if digest else []:
        if len(entry) > MAX_METADATA_LENGTH:
            continue
        if chunks and len(chunks[-1]) + 1 + len(entry) <= MAX_METADATA_LENGTH:
            chunks[-1] += "," + entry
        elif len(chunks) < MAX_METADATA_ENTRIES:
            chunks.append(entry)
    return {("svc" if i == 0 else f"svc{i}"): chunk for i, chunk in enumerate(chunks)} or {"svc": ""}


def _svc_entries(metadata: dict[str, str]) -> list[str]:
    return [e for k, v in sorted(metadata.items()) if k.startswith("svc") for e in v.split(",") if e]


class _Breaker(Protocol):
    def mark_down(self, node_id: str, now: float) -> None: ...

    def success(self, node_id: str) -> None: ...


class Host(Protocol):
    """What membership needs of the cluster node it runs on. The wiring
    (:class:`trimicro.cluster.Cluster`) passes itself; membership does not import it."""

    @property
    def node(self) -> Node: ...

    @property
    def address(self) -> str: ...

    @property
    def fingerprint(self) -> str:
        """This node's cluster (its authority's fingerprint)."""
        ...

    @property
    def registry(self) -> Registry: ...

    @property
    def cache(self) -> RegistryCache: ...

    @property
    def breaker(self) -> _Breaker:
        """The circuit breaker: told of members that fail (and recover) on our own evidence."""
        ...

    def services_digest(self) -> str:
        """``name@version`` of every service served on the node (gossiped in metadata)."""
        ...

    def accepts(self, info: NodeInfo) -> bool:
        """Whether ``info`` names a node of a cluster this node trusts."""
        ...


class MembershipActor(Actor):
    """Answers ``Membership.members`` with this node's view (for ``trimicro nodes``)."""

    service_name = "Membership"

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    async def members(self, body: Any) -> list[dict[str, Any]]:
        return self.membership.view()

    async def stats(self, body: Any) -> dict[str, int]:
        """Counters that show an attack or a leak from outside: claims ignored, SWIM messages
        rejected, and how many peers (link state, one per node id) this node holds."""
        membership = self.membership
        return {
            "ignored_claims": membership.ignored_claims,
            "rejected_messages": membership.rejected_messages,
            "peers": len(membership.node.remote.peers),
        }


class Membership:
    """One node's membership: joins peers from the registry, gossips, detects failures."""

    def __init__(self, cluster: Host, config: SwimConfig | None = None, *, seeds: Sequence[str] = ()) -> None:
        self.cluster = cluster
        node = cluster.node
        self.node = node
        self.codec = node.remote.codec
        self.swim = Swim(
            node.id,
            cluster.address,
            config=config or SwimConfig(),
            rng=random.Random(node.rng.random()),
            metadata=_svc_metadata(cluster.services_digest()),
        )
        self._changed = trio.Event()
        #: SWIM messages dropped as malformed (see :func:`~trimicro.cluster.membership.swim.decode_message`).
        self.rejected_messages = 0
        #: Member events seen, by kind (``joined``, ``suspect``, ``dead``, ...): the flapping.
        self.transitions: dict[str, int] = {}
        #: Called with every MemberEvent (pub/sub sends its interest to members that join).
        self.listeners: list[Callable[[MemberEvent], None]] = []
        node.remote.system_handlers["swim"] = self._on_swim
        node.remote.on_peer_lost.append(self._on_peer_lost)
        cluster.cache.node_filter = self.is_live
        cluster.cache.extra.append(self.gossiped)
        #: Joins through ``seeds`` (``host:port``), if any (see :mod:`.seeds`).
        self.seeds = SeedJoiner(node, self, seeds, system_path=SYSTEM_PATH) if seeds else None

    # ---- views ---------------------------------------------------------------------------------

    def address_of(self, node_id: str) -> str | None:
        member = self.swim.get(node_id)
        return member.address if member is not None and member.address else None

    def is_live(self, info: NodeInfo) -> bool:
        """Registry nodes that membership knows to be dead or gone are not offered to callers."""
        member = self.swim.get(info.id)
        return member is None or member.state in (MemberState.ALIVE, MemberState.SUSPECT)

    def gossiped(self, name: str) -> list[Service]:
        """Records for ``name`` built from members' ``svc`` metadata (endpoints not included).

        Members proved their certificates on our links, so they count as this node's cluster."""
        found: list[Service] = []
        for member in self.swim.alive_members():
            for entry in _svc_entries(member.metadata):
                svc_name, _, version = entry.partition("@")
                if svc_name == name and member.address:
                    path = {"path": f"/user/{name}"}
                    info = NodeInfo(member.id, member.address, path, self.cluster.fingerprint)
                    found.append(Service(name, version or "latest", nodes=(info,)))
        return found

    def view(self) -> list[dict[str, Any]]:
        return [
            {
                "id": m.id,
                "address": m.address,
                "state": m.state.name.lower(),
                "incarnation": m.incarnation,
                "services": ",".join(_svc_entries(m.metadata)),
            }
            for m in sorted(self.swim.members(), key=lambda m: m.id)
        ]

    def member(self, node_id: str) -> Member | None:
        return self.swim.get(node_id)

    @property
    def ignored_claims(self) -> int:
        """Claims about members that no member could have made honestly as far as this node can
        tell (see :attr:`Swim.ignored_claims <trimicro.cluster.membership.swim.Swim.ignored_claims>`)."""
        return self.swim.ignored_claims

    async def wait_changed(self) -> None:
        """Return at the next membership change (for tools and tests)."""
        await self._changed.wait()

    # ---- inputs --------------------------------------------------------------------------------

    def _send(self, outgoing: list[Outgoing]) -> None:
        remote = self.node.remote
        for out in outgoing:
            # SWIM only sends to members in its table (their own address, or discovery's) and
            # answers senders over their link: never to a node only a rumour named, so this
            # creates no Peer for a made-up id and dials no address a third party chose.
            peer = remote.peer(out.to_id)
            if peer.address is None and out.to_address:
                peer.address = out.to_address
            try:
                body = self.codec.encode(out.message)
            except MicroError:  # pragma: no cover - SWIM builds plain dicts
                log.exception("cannot encode a SWIM message")
                continue
            peer.send_system("swim", body)  # no link yet: dropped and dialed; SWIM tolerates loss

    def _drain(self) -> None:
        events = self.swim.events()
        if not events:
            return
        now = trio.current_time()
        transitions = self.transitions
        for event in events:
            member = event.member
            log.info("member %s %s", member.id, event.kind)
            transitions[event.kind] = transitions.get(event.kind, 0) + 1
            for listener in list(self.listeners):
                listener(event)
            if event.kind in ("suspect", "dead", "left"):
                # Only our own evidence gets here: a probe or check of ours unanswered, a link
                # lost, the member's own "left". Claims by others never make these events.
                self.cluster.breaker.mark_down(member.id, now)
            elif event.kind in ("alive", "joined"):
                self.cluster.breaker.success(member.id)
            if member.address:
                # The member's own word (SWIM takes addresses from nobody else, discovery aside).
                self.node.remote.peer(member.id).address = member.address
        self.cluster.cache.invalidate()
        self._changed.set()
        self._changed = trio.Event()

    def _on_swim(self, link: Link, env: Envelope) -> None:
        try:
            message = self.codec.decode(env.body)
            out = self.swim.receive(trio.current_time(), link.peer.node_id, message)
        except (MicroError, SwimProtocolError) as exc:
            self.rejected_messages += 1
            log.debug("bad SWIM message from %s: %s", link.peer.node_id, exc)
            return
        self._send(out)
        self._drain()

    def _on_peer_lost(self, peer: Peer, reason: str) -> None:
        if self.swim.get(peer.node_id) is None:
            return
        self._send(self.swim.link_lost(trio.current_time(), peer.node_id))
        self._drain()

    def join(self, node_id: str, address: str) -> None:
        """Add a peer found by discovery (ignored if known, or ourselves)."""
        if node_id == self.node.id or not address:
            return
        known = self.swim.get(node_id)
        if known is not None and known.state in (MemberState.ALIVE, MemberState.SUSPECT):
            return
        self._send(self.swim.join(trio.current_time(), node_id, address))
        self._drain()

    def services_changed(self) -> None:
        metadata = _svc_metadata(self.cluster.services_digest())
        self._send(self.swim.set_metadata(trio.current_time(), metadata))

    def leave(self) -> None:
        self._send(self.swim.leave(trio.current_time()))

    # ---- tasks ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.node.spawn(MembershipActor, self, name=SYSTEM_NAME)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._discover)
            if self.seeds is not None:
                nursery.start_soon(self.seeds.run)
            task_status.started()
            while True:
                now = trio.current_time()
                self._send(self.swim.tick(now))
                self._drain()
                await trio.sleep_until(min(self.swim.next_deadline(), now + TICK))

    async def _discover(self) -> None:
        """Join every node the registry announces: now, on each watch event, and every 2 s."""
        registry = self.cluster.registry
        async with trio.open_nursery() as nursery:

            async def poll() -> None:
                while True:
                    try:
                        for svc in await registry.get_service(NODE_SERVICE):
                            self._join_all(svc.nodes)
                    except MicroError:
                        pass
                    await trio.sleep(2.0)

            nursery.start_soon(poll)
            async with registry.watch(NODE_SERVICE) as events:
                event: Event
                async for event in events:
                    if event.type is not EventType.DELETE:
                        self._join_all(event.service.nodes)

    def _join_all(self, nodes: tuple[NodeInfo, ...]) -> None:
        for info in nodes:
            if self.cluster.accepts(info):
                self.join(info.id, info.address)
