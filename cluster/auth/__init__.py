"""Auth: who is calling and what they may do, on every request that reaches a node.

:class:`Auth` is the interface (a Protocol): Go Micro's ``auth.Auth`` (generate, inspect,
token) with its rules' ``verify``, adapted: ``generate`` an account (and its secret), ``inspect``
a bearer token (the account it speaks for), a ``token`` from an id and secret or a refresh
token, ``verify`` an account against a resource with the rules (403 if refused). The default,
:class:`~trimicro.cluster.auth.default.JwtAuth` (entry point ``jwt``, also ``default``, of
the ``trimicro.auth`` group), is split by concern:

- :mod:`.tokens`: accounts and the EdDSA-signed JWTs that carry them (:func:`issue_token`,
  :func:`verify_token`, :class:`TokenCache`);
- :mod:`.rules`: Go Micro's access rules (:class:`Rule`, :class:`Rules`: highest priority first,
  default deny when no rule matches);
- :mod:`.guard`: :class:`AuthGuard`, the check on every inbound request and outbound publish, and
  :class:`AuthSync`, which keeps a node's rules and revocations in step with the auth service;
- :mod:`.service`: :class:`AuthService`, the ``auth`` service that issues tokens and holds the
  rules and revocations in a store.

The cluster wiring (:func:`trimicro.cluster.start_cluster`) chooses the ``Auth`` once at start
(``auth=True``: ``$TRIMICRO_AUTH`` or ``jwt://``; ``False``: none; or an instance or URL) and
puts its guard on the node's hot path (``node.remote.guard``); another ``Auth`` decides under
a :class:`~trimicro.cluster.auth.default.PluggedGuard`. See docs/auth.md.

**What an ``Auth`` must guarantee.** ``inspect`` raises
:class:`~trimicro.mailbox.errors.Unauthorized` (401) for a token that is malformed, expired,
revoked or not signed by the cluster, never returning a partial account; ``verify`` raises
:class:`~trimicro.mailbox.errors.Forbidden` (403) unless a rule grants access (default deny);
both are called on the hot path of every request, so they answer from memory (a cache, the
rules held by the node), never with I/O per call. ``generate`` and ``token`` may do I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Protocol, runtime_checkable

from .default import JwtAuth, PluggedGuard, Token
from .guard import AUTH_SERVICE, AuthGuard, AuthState, AuthSync
from .rules import DEFAULT_RULES, Access, Principal, Resource, Rule, Rules
from .service import AuthService
from .tokens import Account, TokenCache, issue_token, verify_token

__all__ = [
    "AUTH_SERVICE",
    "DEFAULT_RULES",
    "Access",
    "Account",
    "Auth",
    "AuthGuard",
    "AuthService",
    "AuthState",
    "AuthSync",
    "JwtAuth",
    "PluggedGuard",
    "Principal",
    "Resource",
    "Rule",
    "Rules",
    "Token",
    "TokenCache",
    "issue_token",
    "verify_token",
]


@runtime_checkable
class Auth(Protocol):
    """Who is calling and what they may do (Go Micro's ``auth.Auth`` and ``auth.Rules.Verify``).

    ``inspect`` and ``verify`` run on the node for requests from other nodes (their verdicts
    are remembered for up to a second per link, caller and resource), so they must not block;
    ``generate`` and ``token`` may call a service. Refusals are
    :class:`~trimicro.mailbox.errors.Unauthorized` (401) and
    :class:`~trimicro.mailbox.errors.Forbidden` (403).
    """

    def inspect(self, token: str) -> Account:
        """The account a bearer token speaks for (401 if it speaks for none)."""
        ...

    def verify(self, account: Account, resource: Resource) -> None:
        """Return if the rules grant ``account`` access to ``resource``; else 403."""
        ...

    async def generate(
        self,
        id: str,
        *,
        secret: str | None = None,
        scopes: Collection[str] = (),
        type: str = "user",
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[Account, str]:
        """Create an account; returns it and its secret."""
        ...

    async def token(
        self, *, id: str | None = None, secret: str | None = None, refresh: str | None = None
    ) -> Token:
        """A token pair for ``id`` and ``secret``, or for a ``refresh`` token."""
        ...
