"""Authentication and access rules on every request that reaches this node from another one.

Go Micro treats auth as part of the framework; so does trimicro, and it is on by default:

- **Who is calling.** Every link is a Noise handshake with a certificate from the cluster's
  authority, so the calling node always has an account (type ``service``, id = node id, scopes =
  its certificate's roles). A request may also carry a bearer token (metadata ``authorization``:
  a JWT signed with EdDSA by the authority, see :mod:`trimicro.cluster.auth.tokens`); then the
  token's account is the caller. Calls made while serving a request forward its token, so the
  next service judges the original caller, and handlers see it as ``context.account``.
- **What they may do.** Go Micro's rules (:mod:`trimicro.cluster.auth.rules`): highest priority
  first, default deny when no rule matches. Until an operator adds rules a node runs Go Micro's
  default rule: any account may call anything. A few built-in rules keep the cluster itself
  working (anyone may ask the auth service for a token; any account may fetch the rules).
- **Failures** are 401 (bad, expired or revoked token; revoked node) and 403 (not allowed),
  with no detail that helps an attacker; every denial is logged with account and resource.
  What has no reply to carry a refusal (a published message) is checked by the sending node
  too, before it leaves (:meth:`AuthGuard.admit_sent`), so the publisher gets the 401/403.
- **Changes reach every node without a restart.** :class:`AuthSync` fetches the rules and the
  revocations from the ``auth`` service every ``refresh`` seconds (the refresh period): a rule
  change, a revoked token or a revoked node is enforced everywhere within one period.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

import attrs
import msgpack
import trio
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from trimicro.actors import Node
from trimicro.actors.lowlevel import AUTHORIZATION, Cell, Link, LinkPort
from trimicro.mailbox.envelope import Envelope
from trimicro.mailbox.errors import GUARD_ID, BadRequest, MicroError, NotFound, Unauthorized
from trimicro.mailbox.logs import get_logger

from ..introspect import DESCRIBE_PATH
from .rules import DEFAULT_RULES, Access, Resource, Rule, Rules
from .tokens import Account, TokenCache

__all__ = [
    "AUTH_SERVICE",
    "BUILTIN_RULES",
    "CHANGED_OP",
    "GUARD_ID",
    "WATCH_ENDPOINT",
    "AuthGuard",
    "AuthState",
    "AuthSync",
    "Host",
    "announce_change",
    "close_revoked_links",
    "fetch_state",
    "node_account",
    "open_state",
    "sign_state",
]

log = get_logger(__package__)

#: The service name the auth service runs under (``trimicro run --store`` serves it).
AUTH_SERVICE = "auth"

#: The SYSTEM operation by which the auth service tells nodes that the rules or revocations changed.
CHANGED_OP = "auth.changed"


class Host(Protocol):
    """What auth needs of the cluster node it guards: the node, calls by service name, and the
    guard and sync the wiring installed. The wiring (:class:`trimicro.cluster.Cluster`) passes
    itself; auth does not import it (the wiring imports auth, not the other way round)."""

    @property
    def node(self) -> Node: ...

    @property
    def auth(self) -> Any:
        """The node's :class:`AuthGuard` (``None`` without auth)."""
        ...

    @property
    def auth_sync(self) -> Any:
        """The node's :class:`AuthSync`, if it follows an auth service."""
        ...

    async def call(
        self, service: str, endpoint: str | None, body: Any = None, *, timeout: float | None = None
    ) -> Any: ...


def announce_change(cluster: Host) -> None:
    """Poke this node's and every linked node's :class:`AuthSync` (the auth service calls it)."""
    sync = cluster.auth_sync
    if sync is not None:
        sync.poke()
    for peer in list(cluster.node.remote.peers.values()):
        if peer.link is not None:
            peer.send_system(CHANGED_OP, b"")


#: Rules no operator can remove: without them nobody could log in, and no node could learn the
#: rules. Priorities above any an operator may set (see ``Rule.from_dict``).
BUILTIN_RULES: tuple[Rule, ...] = (
    Rule("builtin-login", "", Resource("service", AUTH_SERVICE, "Auth.token"), Access.GRANTED, 1 << 30),
    Rule("builtin-refresh", "", Resource("service", AUTH_SERVICE, "Auth.refresh"), Access.GRANTED, 1 << 30),
    Rule("builtin-state", "*", Resource("service", AUTH_SERVICE, "Auth.state"), Access.GRANTED, 1 << 30),
    # Endpoint schemas (what the registry already names, in full): any account, e.g. a gateway.
    Rule("builtin-describe", "*", Resource("actor", DESCRIBE_PATH, "*"), Access.GRANTED, 1 << 30),
    # The authority's public keys (a JWKS): public, so anyone can verify a token.
    Rule("builtin-jwks", "", Resource("service", AUTH_SERVICE, "Auth.jwks"), Access.GRANTED, 1 << 30),
    # Administering auth (accounts, rules, revocations) takes scope "admin", whatever other rules say.
    Rule(
        "builtin-auth-admin",
        "admin",
        Resource("service", AUTH_SERVICE, "Auth.*"),
        Access.GRANTED,
        (1 << 30) - 1,
    ),
    Rule(
        "builtin-auth-others", "", Resource("service", AUTH_SERVICE, "Auth.*"), Access.DENIED, (1 << 30) - 2
    ),
    Rule("builtin-members", "*", Resource("actor", "/user/trimicro-cluster", "*"), Access.GRANTED, 1 << 30),
    # A node's metrics snapshot (``trimicro top``) names its actors' paths and its peers, which
    # the registry does not show: scope "admin" only, whatever other rules say.
    Rule(
        "builtin-metrics", "admin", Resource("actor", "/user/trimicro-metrics", "*"), Access.GRANTED, 1 << 30
    ),
    Rule(
        "builtin-metrics-others",
        "",
        Resource("actor", "/user/trimicro-metrics", "*"),
        Access.DENIED,
        (1 << 30) - 1,
    ),
    # Acknowledged deliveries: the topic's own rule is applied inside (PubSub.deliver).
    Rule("builtin-deliver", "*", Resource("actor", "/user/trimicro-pubsub", "*"), Access.GRANTED, 1 << 30),
)


#: Grants remembered (see :meth:`AuthGuard.admit`); the oldest goes first when full.
GRANT_CACHE = 4096

#: Largest signed auth state a node accepts (rules and revocation lists together).
MAX_STATE_BYTES = 4 * 1024 * 1024

#: The endpoint of the resource a death watch reaches: the actor (or service) itself, not one
#: of its handlers (a watch runs none), so rules grant it with ``*`` or ``watch``.
WATCH_ENDPOINT = "watch"


@attrs.frozen
class AuthState:
    """What the auth service publishes and every node enforces, signed by the authority.

    ``epoch`` names one auth database (a service restarted on a fresh store starts a new one),
    ``version`` counts its changes and ``issued`` is when this copy was signed: a node takes a
    state only if it is newer than the one it has, so nobody can replay an old one.
    """

    epoch: str
    version: int
    issued: float
    rules: tuple[Rule, ...]
    revoked: Mapping[str, frozenset[str]]

    def newer_than(self, epoch: str, version: int, issued: float) -> bool:
        if self.epoch == epoch:
            return self.version > version
        return self.issued > issued


def sign_state(
    signing_key: SigningKey,
    epoch: str,
    version: int,
    rules: Iterable[Rule],
    revoked: Mapping[str, Iterable[str]],
) -> bytes:
    """The auth state as the authority's Ed25519-signed msgpack map (PyNaCl ``SigningKey.sign``)."""
    payload = {
        "epoch": epoch,
        "version": version,
        "issued": time.time(),
        "rules": [r.to_dict() for r in rules],
        "revoked": {kind: sorted(values) for kind, values in revoked.items()},
    }
    return bytes(signing_key.sign(msgpack.packb(payload, use_bin_type=True)))


def open_state(signed: object, trusted: Collection[bytes]) -> AuthState:
    """Check the authority's signature on a state and decode it; ``Unauthorized`` if forged,
    ``BadRequest`` if malformed."""
    if not isinstance(signed, bytes) or not 64 < len(signed) <= MAX_STATE_BYTES:
        raise BadRequest("malformed auth state")
    payload = None
    for key in trusted:
        try:
            payload = VerifyKey(key).verify(signed)
            break
        except (BadSignatureError, ValueError, TypeError):
            continue
    if payload is None:
        raise Unauthorized("auth state not signed by a trusted authority")
    try:
        data = msgpack.unpackb(payload, raw=False, max_array_len=1 << 20, max_map_len=1 << 16)
        revoked = {
            kind: frozenset(str(v) for v in data["revoked"].get(kind, ()))
            for kind in ("tokens", "accounts", "nodes")
        }
        state = AuthState(
            str(data["epoch"]),
            int(data["version"]),
            float(data["issued"]),
            tuple(Rule.from_dict(r) for r in data["rules"]),
            revoked,
        )
    except (MicroError, ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
        raise BadRequest(f"malformed auth state: {exc}") from None
    return state


def node_account(cert: Any) -> Account:
    """The account of a node, from its verified certificate."""
    return Account(
        id=cert.node_id,
        type="service",
        issuer=bytes(cert.issuer).hex(),
        scopes=tuple(cert.roles),
        metadata={"name": cert.name} if cert.name else {},
    )


def canonical_endpoint(cell: Cell, endpoint: str, msg: Any, action: str) -> str:
    """``Service.method`` of the handler a request selects (see :meth:`AuthGuard.resource_of`)."""
    table = cell.handlers
    if table is None:
        return endpoint or type(msg).__name__
    fn: Any
    if action == "stream":
        fn = table.by_stream.get(endpoint)
    elif endpoint:
        entry = table.by_endpoint.get(endpoint)
        fn = None if entry is None else entry[0]
    else:
        fn = table.by_type.get(type(msg)) or table.for_type(type(msg))
    if fn is None:  # no such handler: the request fails with 404 if the rules let it through
        return endpoint or f"{table.service}.{type(msg).__name__}"
    return f"{table.service}.{fn.__name__}"


def bearer(headers: Mapping[str, str] | None) -> str | None:
    """The token in ``authorization`` metadata (``Bearer <jwt>`` or the bare JWT), if any."""
    if not headers:
        return None
    return _bare(headers.get(AUTHORIZATION))


def _bare(value: str | None) -> str | None:
    """The JWT of an ``authorization`` value: ``Bearer <jwt>`` or the bare JWT."""
    if not value:
        return None
    return value[7:] if value[:7].lower() == "bearer " else value


class AuthGuard:
    """The node's guard (``node.remote.guard``): authenticates each request and applies the rules."""

    def __init__(
        self,
        trusted: Collection[bytes],
        *,
        rules: Iterable[Rule] = DEFAULT_RULES,
        service_of: Callable[[str], str | None] | None = None,
        cache_size: int = 4096,
        audience: str | None = None,
        own: Account | None = None,
    ) -> None:
        self.trusted = frozenset(bytes(k) for k in trusted)
        #: This cluster's name in tokens' ``aud`` claim: with one, a token must be meant for it;
        #: without, a token meant for some audience is refused (RFC 7519 4.1.3).
        self.audience = audience
        #: This node's own account (from its certificate): who sends when no token is forwarded.
        self.own = own
        self.rules = Rules([*BUILTIN_RULES, *rules])
        self.version = 0
        #: Revocations, as the auth service lists them (replaced whole by :meth:`apply`).
        self.revoked_tokens: frozenset[str] = frozenset()
        self.revoked_accounts: frozenset[str] = frozenset()
        self.revoked_nodes: frozenset[str] = frozenset()
        self.tokens = TokenCache(cache_size)
        self._granted: dict[tuple[Any, ...], tuple[Account, float]] = {}
        self.epoch = ""
        self.issued = 0.0
        #: Called after every :meth:`apply` (the cluster closes links of revoked nodes).
        self.on_apply: list[Callable[[], None]] = []
        self._service_of = service_of
        self._changed = trio.Event()
        #: Denials so far (each is also logged).
        self.denied = 0

    # ---- who ---------------------------------------------------------------------------------

    def _revoked(self, jti: str, sub: str) -> bool:
        return jti in self.revoked_tokens or sub in self.revoked_accounts

    def authenticate(self, link: LinkPort, headers: Mapping[str, str] | None) -> Account:
        """The caller: the token's account if the request carries one, else the calling node's."""
        account: Account | None = link.principal
        if account is None:
            account = link.principal = node_account(link.peer_info)
        if account.id in self.revoked_nodes:
            raise Unauthorized("node revoked")
        if link.peer_info.expires <= time.time():  # a link may outlive its certificate
            raise Unauthorized("node certificate expired")
        token = bearer(headers)
        if token is None:
            return account
        return self.verify(token)

    def admit_peer(self, peer_info: Any) -> None:
        """Refuse links from revoked nodes (the handshake only knows revoked keys)."""
        if getattr(peer_info, "node_id", None) in self.revoked_nodes:
            raise Unauthorized("node revoked")

    def verify(self, token: str) -> Account:
        """Check a bearer token (signature, issuer, audience, expiry, revocation), once per token
        and period."""
        return self.tokens.verify(token, self.trusted, revoked=self._revoked, audience=self.audience)

    # ---- what --------------------------------------------------------------------------------

    def resource_of(self, cell: Cell, endpoint: str, msg: Any, action: str = "call") -> Resource:
        """What a request reaches, named as rules name it: ``Service.method`` of the handler
        that will run, whichever alias (``method``, ``Service.method``, a message type) the
        caller used, so no spelling slips past a rule."""
        return self.resource_at(cell.path, canonical_endpoint(cell, endpoint, msg, action))

    def resource_at(self, path: str, endpoint: str) -> Resource:
        """``endpoint`` of the service served at actor ``path``, or of the actor if none is."""
        name = self._service_of(path) if self._service_of is not None else None
        if name is None:
            return Resource("actor", path, endpoint)
        return Resource("service", name, endpoint)

    def check(self, account: Account, resource: Resource) -> None:
        """Apply the rules; a denial is logged (with account and resource) and raised (403)."""
        try:
            self.rules.verify(account, resource)
        except MicroError as exc:
            self.denied_access(account, resource)
            raise type(exc)(exc.detail, id=GUARD_ID) from None

    def check_topic(self, account: Account, topic: str, action: str) -> None:
        """:meth:`check` on a topic (the broker names topics, not auth's resources)."""
        self.check(account, Resource("topic", topic, action))

    def denied_access(self, account: Account, resource: Resource) -> None:
        """Count and log a denial (with account and resource)."""
        self.denied += 1
        log.warning(
            "denied %s %s (%s) access to %s %s %s",
            account.type,
            account.id,
            ",".join(account.scopes),
            resource.type,
            resource.name,
            resource.endpoint,
        )

    def admit(
        self,
        link: LinkPort,
        action: str,
        cell: Cell,
        endpoint: str,
        headers: Mapping[str, str] | None,
        msg: Any,
    ) -> Account:
        """The :class:`~trimicro.actors.remote.Guard` hook: the caller's account, or 401/403.

        A grant is remembered for up to a second (per link, token, actor and endpoint), so a
        busy caller pays for the checks once a second, not per request; :meth:`apply` forgets
        every grant at once, so a rule change or revocation is not delayed by it.
        """
        key = (link, bearer(headers), cell, action, endpoint or type(msg))
        return self._grant(key, link, headers, action, lambda: self.resource_of(cell, endpoint, msg, action))

    def admit_watch(self, link: LinkPort, path: str, headers: Mapping[str, str] | None) -> Account:
        """The :class:`~trimicro.actors.remote.Guard` hook for a death watch: as :meth:`admit`
        for an ask (same caller, rules, 401/403, logging), on the resource named by ``path``
        alone with the endpoint :data:`WATCH_ENDPOINT`, so the verdict cannot depend on whether
        an actor lives there (the node asks before it looks)."""
        return self.admit_path(link, "watch", path, WATCH_ENDPOINT, headers)

    def admit_path(
        self, link: LinkPort, action: str, path: str, endpoint: str, headers: Mapping[str, str] | None
    ) -> Account:
        """The :class:`~trimicro.actors.remote.Guard` hook for a request to a path where no actor
        lives (and for a watch): the same caller, rules, 401/403 and logging as :meth:`admit`,
        on the resource named by ``path`` and ``endpoint`` alone (``*`` when the caller named
        none), so a caller the rules refuse cannot tell a missing actor from a forbidden one."""
        key = (link, bearer(headers), action, path, endpoint)
        return self._grant(key, link, headers, action, lambda: self.resource_at(path, endpoint or "*"))

    def _grant(
        self,
        key: tuple[Any, ...],
        link: LinkPort,
        headers: Mapping[str, str] | None,
        action: str,
        resource: Callable[[], Resource],
    ) -> Account:
        now = time.time()
        hit = self._granted.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        account = self._caller(link, headers, action)
        self.check(account, resource())
        self._remember(key, account, min(now + 1.0, link.peer_info.expires))
        return account

    def _remember(self, key: tuple[Any, ...], account: Account, until: float) -> None:
        if len(self._granted) >= GRANT_CACHE:
            del self._granted[next(iter(self._granted))]
        self._granted[key] = (account, until)

    def admit_sent(self, authorization: str | None, resource: Resource) -> Account:
        """What this node sends on its own behalf (``authorization`` None) or for the holder of
        that token (the metadata's value), checked here as the receiving node will check it:
        401 or 403 now.

        For what has no reply to carry a refusal (a published message): the sender learns it
        was refused instead of the receiver dropping it in silence. The receiver still checks;
        its rules may be newer by up to one refresh period. Remembered for a second, as
        :meth:`admit` remembers grants.
        """
        token = _bare(authorization)
        key = (None, token, resource)
        now = time.time()
        hit = self._granted.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            if token is not None:
                account = self.verify(token)
            elif self.own is None or self.own.id in self.revoked_nodes:
                raise Unauthorized("this node has no account here")
            else:
                account = self.own
        except MicroError as exc:
            self.denied += 1
            log.warning(
                "refused to send to %s %s %s: %s", resource.type, resource.name, resource.endpoint, exc.detail
            )
            raise Unauthorized("unauthorized") from None
        self.check(account, resource)
        self._remember(key, account, now + 1.0)
        return account

    def admit_sent_topic(self, authorization: str | None, topic: str, action: str) -> Account:
        """:meth:`admit_sent` on a topic (the broker names topics, not auth's resources)."""
        return self.admit_sent(authorization, Resource("topic", topic, action))

    def _caller(self, link: LinkPort, headers: Mapping[str, str] | None, action: str) -> Account:
        try:
            return self.authenticate(link, headers)
        except MicroError as exc:
            self.denied += 1
            log.warning("refused a %s from node %s: %s", action, link.peer.node_id, exc.detail)
            raise Unauthorized("unauthorized", id=GUARD_ID) from None  # expired, revoked, forged: all alike

    def admit_topic(
        self, link: LinkPort, headers: Mapping[str, str] | None, topic: str, action: str
    ) -> Account:
        """Publishing or subscribing across nodes: the same accounts and rules, on a topic."""
        key = (link, bearer(headers), "topic", action, topic)
        return self._grant(key, link, headers, action, lambda: Resource("topic", topic, action))

    # ---- changes -----------------------------------------------------------------------------

    def apply(
        self,
        version: int,
        rules: Iterable[Rule],
        revoked: Mapping[str, Iterable[str]],
        *,
        epoch: str = "",
        issued: float = 0.0,
    ) -> None:
        """Install a new rule set and revocation lists, at once (no request sees half of it)."""
        self.rules.replace([*BUILTIN_RULES, *rules])
        self.revoked_tokens = frozenset(revoked.get("tokens", ()))
        self.revoked_accounts = frozenset(revoked.get("accounts", ()))
        self.revoked_nodes = frozenset(revoked.get("nodes", ()))
        self.tokens.clear()
        self._granted.clear()
        self.version, self.epoch, self.issued = version, epoch, issued
        for listener in self.on_apply:
            listener()
        self._changed.set()
        self._changed = trio.Event()

    def accept(self, state: AuthState) -> bool:
        """Apply a verified state if it is newer than the one in force (else ignore it)."""
        if not state.newer_than(self.epoch, self.version, self.issued):
            return False
        self.apply(state.version, state.rules, state.revoked, epoch=state.epoch, issued=state.issued)
        return True

    async def wait_changed(self) -> None:
        """Return at the next :meth:`apply` (for tools and tests)."""
        await self._changed.wait()


class AuthSync:
    """Keeps a node's guard in step with the auth service, every ``refresh`` seconds.

    The auth service also pokes every node it has a link to when something changes (SYSTEM
    ``auth.changed``), so changes usually apply at once; the periodic fetch is what guarantees
    "within one refresh period" when a poke is lost. A poke only triggers a fetch from the auth
    service (at most one at a time), so a peer that floods pokes changes nothing.
    """

    def __init__(self, cluster: Host, guard: AuthGuard, refresh: float) -> None:
        self.cluster = cluster
        self.guard = guard
        self.refresh = refresh
        self._poked = trio.Event()
        cluster.node.remote.system_handlers[CHANGED_OP] = self._on_poke

    def poke(self) -> None:
        """Fetch the state now rather than at the end of the period."""
        self._poked.set()

    def _on_poke(self, link: Link, env: Envelope) -> None:
        self.poke()

    async def run(self) -> None:
        while True:
            self._poked = trio.Event()
            await self.sync_once()
            with trio.move_on_after(self.refresh):
                await self._poked.wait()
                await trio.sleep(min(self.refresh, 0.05))  # a flood of pokes: at most 20 fetches/s

    async def sync_once(self) -> None:
        """Fetch the state if it changed (see :func:`fetch_state`)."""
        await fetch_state(self.cluster, self.guard, timeout=max(1.0, self.refresh))


async def fetch_state(cluster: Host, guard: AuthGuard, *, timeout: float) -> None:
    """Fetch the auth service's state into ``guard`` if it changed; an unreachable auth service
    keeps the last one, a cluster without one keeps the defaults.

    The state must carry the authority's signature: a node that merely registers a
    service called ``auth`` cannot change anyone's rules.
    """
    since = {"epoch": guard.epoch, "version": guard.version}
    try:
        reply = await cluster.call(AUTH_SERVICE, "Auth.state", since, timeout=timeout)
    except NotFound:
        return  # no auth service in this cluster: the defaults hold
    except MicroError as exc:
        log.warning("cannot fetch auth rules (keeping the last ones): %s", exc.detail)
        return
    if not isinstance(reply, dict) or "signed" not in reply:
        return  # unchanged
    try:
        state = open_state(reply["signed"], guard.trusted)
    except MicroError as exc:
        log.warning("refused an auth state (keeping the last one): %s", exc.detail)
        return
    guard.accept(state)


def close_revoked_links(cluster: Host) -> None:
    """Close links to revoked nodes, and refuse their keys in future handshakes."""
    revoked = cluster.auth.revoked_nodes
    if not revoked:
        return
    remote = cluster.node.remote
    keys = getattr(remote.identity, "revoked", None)
    for node_id in revoked:
        peer = remote.peers.get(node_id)
        if peer is None:
            continue
        for link in list(peer.links):
            key = getattr(link.peer_info, "public_key", None)
            if key is not None and isinstance(keys, set):
                keys.add(bytes(key))
            link.close("node revoked")
