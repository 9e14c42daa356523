"""The default :class:`~trimicro.cluster.auth.Auth`: the cluster's JWTs, rules and auth service.

:class:`JwtAuth` answers ``inspect`` and ``verify`` on the node itself (the node's
:class:`~trimicro.cluster.auth.guard.AuthGuard`: tokens signed by a trusted authority, the rules
and revocations :class:`~trimicro.cluster.auth.guard.AuthSync` keeps current), and ``generate``
and ``token`` through the cluster's ``auth`` service, which alone holds the secrets and the
signing key. :class:`PluggedGuard` is the guard of a node given another ``Auth``: the same
per-request checks, caching and logging, deciding with that ``Auth``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

import attrs

from trimicro.mailbox.errors import MicroError

from .guard import AUTH_SERVICE, GUARD_ID, AuthGuard, AuthSync, close_revoked_links, node_account
from .rules import Resource
from .tokens import Account

__all__ = ["JwtAuth", "PluggedGuard", "Token", "guard_for"]


@attrs.frozen
class Token:
    """What ``Auth.token`` returns (Go Micro's ``auth.Token``): a bearer access token, the
    refresh token that buys the next one, and when the access token expires (Unix seconds)."""

    access: str
    refresh: str
    expires: int


class _Caller(Protocol):
    async def call(self, service: str, endpoint: str | None, body: Any = None) -> Any: ...


class JwtAuth:
    """Go Micro's ``auth.Auth`` over this cluster's tokens (entry point ``jwt`` / ``default``)."""

    def __init__(self, cluster: _Caller, guard: AuthGuard, sync: AuthSync | None = None) -> None:
        self.cluster = cluster
        #: The per-request check (``node.remote.guard``).
        self.guard = guard
        #: What keeps :attr:`guard` current, if anything (``start_cluster`` runs it).
        self.sync = sync

    def inspect(self, token: str) -> Account:
        """The account a bearer token speaks for; 401 if forged, expired, revoked or not for us."""
        return self.guard.verify(token)

    def verify(self, account: Account, resource: Resource) -> None:
        """403 unless the rules in force grant ``account`` access to ``resource`` (logged)."""
        self.guard.check(account, resource)

    async def generate(
        self,
        id: str,
        *,
        secret: str | None = None,
        scopes: Collection[str] = (),
        type: str = "user",
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[Account, str]:
        """Create (or replace) an account through the auth service; returns it (no issuer yet:
        its tokens will name one) and its secret (generated unless given: shown only now)."""
        meta = dict(metadata or {})
        body: dict[str, Any] = {"id": id, "scopes": list(scopes), "type": type, "metadata": meta}
        if secret is not None:
            body["secret"] = secret
        reply = await self.cluster.call(AUTH_SERVICE, "Auth.add_account", body)
        return Account(id, type, "", tuple(scopes), meta), str(reply["secret"])

    async def token(
        self, *, id: str | None = None, secret: str | None = None, refresh: str | None = None
    ) -> Token:
        """Log in with ``id`` and ``secret``, or trade a ``refresh`` token (it works once)."""
        if refresh is not None:
            reply = await self.cluster.call(AUTH_SERVICE, "Auth.refresh", {"refresh": refresh})
        elif id is not None and secret is not None:
            reply = await self.cluster.call(AUTH_SERVICE, "Auth.token", {"id": id, "secret": secret})
        else:
            raise ValueError("token() needs id and secret, or refresh")
        return Token(reply["access"], reply["refresh"], int(reply["expires"]))


class PluggedGuard(AuthGuard):
    """The guard of a node given another :class:`~trimicro.cluster.auth.Auth`: who a token
    speaks for is ``auth.inspect``, what they may do ``auth.verify``; the rest (node accounts,
    revoked nodes, the one-second grant cache, denials logged and counted) is the guard's."""

    def __init__(self, auth: Any, trusted: Collection[bytes], **options: Any) -> None:
        super().__init__(trusted, **options)
        self.auth = auth

    def verify(self, token: str) -> Account:
        account: Account = self.auth.inspect(token)
        return account

    def check(self, account: Account, resource: Resource) -> None:
        try:
            self.auth.verify(account, resource)
        except MicroError as exc:  # the guard's own refusal, marked as AuthGuard.check marks it
            self.denied_access(account, resource)
            raise type(exc)(exc.detail, id=GUARD_ID) from None


def guard_for(
    cluster: Any,
    auth: Any,
    *,
    audience: str | None,
) -> tuple[Any, AuthGuard]:
    """The ``Auth`` a node uses and its guard: ``auth`` itself if it is a :class:`JwtAuth`
    (or any object with a ``guard``), else ``auth`` under a :class:`PluggedGuard`. The guard
    closes links of revoked nodes whenever its state changes."""
    guard: AuthGuard | None = getattr(auth, "guard", None)
    if guard is None:
        trusted, service_of, own = _guard_args(cluster)
        guard = PluggedGuard(auth, trusted, service_of=service_of, audience=audience, own=own)
    guard.on_apply.append(lambda: close_revoked_links(cluster))
    return auth, guard


def _guard_args(cluster: Any) -> tuple[Collection[bytes], Callable[[str], str | None], Account | None]:
    identity = cluster.node.remote.identity
    cert = getattr(identity, "cert", None)
    return getattr(identity, "trusted", ()), cluster.service_of, None if cert is None else node_account(cert)


def jwt_auth(cluster: Any, *, audience: str | None = None, refresh: float | None = 5.0) -> JwtAuth:
    """The default for ``cluster``: its guard, kept current every ``refresh`` seconds (``None``:
    never) from the auth service."""
    trusted, service_of, own = _guard_args(cluster)
    guard = AuthGuard(trusted, service_of=service_of, audience=audience, own=own)
    sync = None if refresh is None else AuthSync(cluster, guard, refresh)
    return JwtAuth(cluster, guard, sync)
