"""Auth: who is calling and what they may do, on every request that reaches a node.

Go Micro's auth interface (generate, inspect, token, verify) with its rules, split by concern:

- :mod:`.tokens`: accounts and the EdDSA-signed JWTs that carry them (:func:`issue_token`,
  :func:`verify_token`, :class:`TokenCache`);
- :mod:`.rules`: Go Micro's access rules (:class:`Rule`, :class:`Rules`: highest priority first,
  default deny when no rule matches);
- :mod:`.guard`: :class:`AuthGuard`, the check on every inbound request and outbound publish, and
  :class:`AuthSync`, which keeps a node's rules and revocations in step with the auth service;
- :mod:`.service`: :class:`AuthService`, the ``auth`` service that issues tokens and holds the
  rules and revocations in a store.

The cluster wiring (:func:`trimicro.cluster.start_cluster`) builds the guard; see docs/auth.md.
"""

from .guard import AUTH_SERVICE, AuthGuard, AuthState, AuthSync
from .rules import DEFAULT_RULES, Access, Principal, Resource, Rule, Rules
from .service import AuthService
from .tokens import Account, TokenCache, issue_token, verify_token

__all__ = [
    "AUTH_SERVICE",
    "DEFAULT_RULES",
    "Access",
    "Account",
    "AuthGuard",
    "AuthService",
    "AuthState",
    "AuthSync",
    "Principal",
    "Resource",
    "Rule",
    "Rules",
    "TokenCache",
    "issue_token",
    "verify_token",
]
