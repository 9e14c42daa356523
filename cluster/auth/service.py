"""The auth service: accounts, tokens, rules and revocations, kept in a store.

``cluster.serve(AuthService, store, authority, name="auth")`` (``trimicro run --store`` does it
on a node that holds the authority key). Endpoints take and return maps, so the CLI and other
languages use them as they are:

- ``Auth.token {id, secret}`` and ``Auth.refresh {refresh}``: a short-lived access token and a
  refresh token (JWT, EdDSA), signed by the authority. Refreshing rotates the refresh token.
- ``Auth.add_account {id, scopes, metadata, type}`` returns a generated secret (stored only as
  an Argon2id hash); ``Auth.delete_account``, ``Auth.accounts``.
- ``Auth.create_rule``, ``Auth.delete_rule``, ``Auth.rules``: Go Micro's rules.
- ``Auth.revoke {token | account | node}``: refused everywhere within one refresh period.
- ``Auth.state {since}``: what every node's :class:`~trimicro.cluster.auth.AuthSync` polls.
- ``Auth.jwks``: the keys tokens are verified with, as a JSON Web Key Set (RFC 7517/8037),
  open to anyone: any JWT library can then verify our tokens.

Tokens carry the cluster's audience (``start_cluster(audience=...)`` of the node serving this)
as ``aud`` when it has one.

Everything is stored under ``auth/`` keys of the given store, so rules survive restarts and can
live in the cluster's shared store; a version number bumps on every change.
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
import time
from typing import Any

import nacl.pwhash
import trio
from nacl.exceptions import InvalidkeyError
from nacl.signing import SigningKey

from trimicro.actors import Actor
from trimicro.cluster.store import Record, Store
from trimicro.mailbox.errors import BadRequest, NotFound, Unauthorized

from .guard import announce_change, open_state, sign_state
from .rules import DEFAULT_RULES, Rule
from .tokens import Account, issue_token, jwks, token_id, verify_token

__all__ = ["DEFAULT_ACCESS_TTL", "DEFAULT_REFRESH_TTL", "AuthService"]

DEFAULT_ACCESS_TTL = 15 * 60
"""Access tokens live 15 minutes: a revoked account stops working at the latest then."""
DEFAULT_REFRESH_TTL = 24 * 3600

_ID = re.compile(r"[A-Za-z0-9._@-]{1,128}")
_MAX_SCOPES = 64
_PREFIX = "auth/"


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the request body is a map")
    return body


def _account_id(value: Any) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BadRequest("an account id is 1-128 characters of [A-Za-z0-9._@-]")
    return value


def _scopes(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if (
        not isinstance(value, list | tuple)
        or len(value) > _MAX_SCOPES
        or not all(isinstance(s, str) and 0 < len(s) <= 128 for s in value)
    ):
        raise BadRequest(f"scopes are up to {_MAX_SCOPES} non-empty strings")
    return tuple(value)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if (
        not isinstance(value, dict)
        or len(value) > 64
        or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 128 and len(v) <= 1024
            for k, v in value.items()
        )
    ):
        raise BadRequest("metadata is a map of up to 64 short strings")
    return dict(value)


class AuthService(Actor):
    """The authority's side of auth: it alone holds the signing key and the account secrets."""

    service_name = "Auth"
    max_concurrency = 16  # password hashing runs in threads; let logins overlap

    def __init__(
        self,
        store: Store,
        signing_key: SigningKey,
        *,
        access_ttl: float = DEFAULT_ACCESS_TTL,
        refresh_ttl: float = DEFAULT_REFRESH_TTL,
    ) -> None:
        self.store = store
        self.signing_key = signing_key
        self.issuer = bytes(signing_key.verify_key).hex()
        self.trusted = [bytes(signing_key.verify_key)]
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.version = 0
        self.epoch = ""
        #: The ``aud`` of the tokens issued: the serving node's audience (set in ``started``).
        self.audience: str | None = None
        self._lock = trio.Lock()  # changes are read-modify-write on the version
        # Argon2id takes ~64 MiB and a core for ~0.1 s per hash: two at a time, not sixteen.
        self._hashing = trio.CapacityLimiter(2)
        self._dummy_hash = b""

    async def started(self) -> None:
        guard = self._guard()
        if guard is not None:
            self.audience = guard.audience
        self.version = int(await self._get("version") or 0)
        self.epoch = str(await self._get("epoch") or "")
        if not self.epoch:  # a new auth database: nodes must not mistake its versions for old ones
            self.epoch = secrets.token_hex(8)
            await self.store.write(Record(_PREFIX + "epoch", _json(self.epoch)))
        self._dummy_hash = await self._hash(secrets.token_bytes(16))
        if self.version == 0:  # a new cluster starts with Go Micro's default rule, as a rule to delete
            for rule in DEFAULT_RULES:
                await self.store.write(Record(f"{_PREFIX}rules/{rule.id}", _json(rule.to_dict())))
        await self._changed()  # also puts the state in force on this node at once

    async def _hash(self, secret: bytes) -> bytes:
        hashed: bytes = await trio.to_thread.run_sync(nacl.pwhash.str, secret, limiter=self._hashing)
        return hashed

    # ---- storage -----------------------------------------------------------------------------

    async def _exists(self, key: str) -> bool:
        try:
            return bool(await self.store.read(_PREFIX + key))
        except NotFound:
            return False

    async def _get(self, key: str) -> Any:
        try:
            records = await self.store.read(_PREFIX + key)
        except NotFound:
            return None
        return json.loads(records[0].value) if records else None

    async def _scan(self, prefix: str) -> builtins.list[Record]:
        return await self.store.read(_PREFIX + prefix, prefix=True)

    async def _changed(self) -> None:
        self.version += 1
        await self.store.write(Record(_PREFIX + "version", _json(self.version)))
        cluster = self.context.node.extensions.get("cluster")
        if cluster is None:
            return
        if cluster.auth is not None:  # in force on this node before the change is acknowledged
            cluster.auth.accept(open_state((await self.state({}))["signed"], self.trusted))
        announce_change(cluster)  # other nodes fetch the new state now, not at their next period

    async def _revoked(self, kind: str, value: str) -> bool:
        return await self._exists(f"revoked/{kind}/{value}")

    # ---- tokens ------------------------------------------------------------------------------

    def _pair(self, account: Account) -> dict[str, Any]:
        now = time.time()
        aud = self.audience
        access = issue_token(self.signing_key, account, ttl=self.access_ttl, now=now, audience=aud)
        refresh = issue_token(
            self.signing_key, account, ttl=self.refresh_ttl, use="refresh", now=now, audience=aud
        )
        return {"access": access, "refresh": refresh, "expires": int(now + self.access_ttl)}

    async def _account(self, account_id: str) -> tuple[Account, dict[str, Any]]:
        stored = await self._get(f"accounts/{account_id}")
        if not isinstance(stored, dict):
            raise Unauthorized("unauthorized")
        account = Account(
            id=account_id,
            type=stored.get("type", "user"),
            issuer=self.issuer,
            scopes=tuple(stored.get("scopes", ())),
            metadata=dict(stored.get("metadata", {})),
        )
        return account, stored

    async def token(self, body: Any) -> dict[str, Any]:
        """Log in with an account id and secret; 401 for any mismatch, with no hint which."""
        body = _body(body)
        account_id, secret = body.get("id"), body.get("secret")
        if not isinstance(account_id, str) or not isinstance(secret, str) or len(secret) > 1024:
            raise Unauthorized("unauthorized")
        try:
            account: Account | None
            account, stored = await self._account(_account_id(account_id))
            hashed = str(stored.get("secret", "")).encode()
        except (BadRequest, Unauthorized):
            account, hashed = None, self._dummy_hash  # as slow as a real check: no id probing
        try:
            await trio.to_thread.run_sync(nacl.pwhash.verify, hashed, secret.encode(), limiter=self._hashing)
        except (InvalidkeyError, ValueError, TypeError):
            raise Unauthorized("unauthorized") from None
        if account is None or await self._revoked("accounts", account.id):
            raise Unauthorized("unauthorized")
        return self._pair(account)

    async def refresh(self, body: Any) -> dict[str, Any]:
        """A new access token (and a new refresh token) for a valid refresh token."""
        token = _body(body).get("refresh")
        if not isinstance(token, str):
            raise Unauthorized("unauthorized")
        old = verify_token(token, self.trusted, use="refresh", audience=self.audience)
        jti = token_id(token, self.trusted)[0]
        async with self._lock:  # check and mark as one step: a refresh token works exactly once
            if (
                await self._exists(f"used/{jti}")
                or await self._revoked("tokens", jti)
                or await self._revoked("accounts", old.id)
            ):
                raise Unauthorized("unauthorized")
            # Only this service sees refresh tokens, so "used" stays here and is not broadcast.
            await self.store.write(Record(f"{_PREFIX}used/{jti}", b"1"), ttl=self.refresh_ttl + 120)
        account, _ = await self._account(old.id)  # scopes as they are now, not as they were
        return self._pair(account)

    # ---- accounts ----------------------------------------------------------------------------

    async def add_account(self, body: Any) -> dict[str, Any]:
        """Create (or replace) an account; returns its generated secret, shown only now."""
        body = _body(body)
        account_id = _account_id(body.get("id"))
        kind = body.get("type", "user")
        if kind not in ("user", "service"):
            raise BadRequest("type is 'user' or 'service'")
        # Hex, not base64url: a secret that starts with "-" reads as an option on a command line.
        secret = body.get("secret") or secrets.token_hex(24)
        if not isinstance(secret, str) or not 8 <= len(secret) <= 1024:
            raise BadRequest("a secret is 8 to 1024 characters")
        if await self._revoked("accounts", account_id):  # its old tokens must stay dead
            raise BadRequest(f"account id {account_id} was revoked; choose another id")
        hashed = await self._hash(secret.encode())
        stored = {
            "type": kind,
            "scopes": list(_scopes(body.get("scopes"))),
            "metadata": _metadata(body.get("metadata")),
            "secret": hashed.decode(),
        }
        async with self._lock:
            await self.store.write(Record(f"{_PREFIX}accounts/{account_id}", _json(stored)))
            await self.store.delete(f"{_PREFIX}revoked/accounts/{account_id}")
            await self._changed()
        return {"id": account_id, "secret": secret}

    async def delete_account(self, body: Any) -> None:
        """Delete an account and revoke its tokens."""
        account_id = _account_id(_body(body).get("id"))
        async with self._lock:
            await self.store.delete(f"{_PREFIX}accounts/{account_id}")
            await self.store.write(Record(f"{_PREFIX}revoked/accounts/{account_id}", b"1"))
            await self._changed()

    async def accounts(self, body: Any) -> builtins.list[dict[str, Any]]:
        out = []
        for record in await self._scan("accounts/"):
            stored = json.loads(record.value)
            out.append(
                {
                    "id": record.key.rsplit("/", 1)[1],
                    "type": stored.get("type", "user"),
                    "scopes": stored.get("scopes", []),
                    "metadata": stored.get("metadata", {}),
                }
            )
        return out

    # ---- rules -------------------------------------------------------------------------------

    async def create_rule(self, body: Any) -> dict[str, Any]:
        """Add or replace a rule (by id)."""
        rule = Rule.from_dict(_body(body))
        if rule.id.startswith("builtin-"):
            raise BadRequest("rule ids starting with 'builtin-' are reserved")
        async with self._lock:
            await self.store.write(Record(f"{_PREFIX}rules/{rule.id}", _json(rule.to_dict())))
            await self._changed()
        return rule.to_dict()

    async def delete_rule(self, body: Any) -> None:
        rule_id = _body(body).get("id")
        if not isinstance(rule_id, str) or not rule_id:
            raise BadRequest("delete_rule takes {'id': str}")
        async with self._lock:
            if not await self._exists(f"rules/{rule_id}"):
                raise NotFound(f"no rule {rule_id}")
            await self.store.delete(f"{_PREFIX}rules/{rule_id}")
            await self._changed()

    async def rules(self, body: Any) -> builtins.list[dict[str, Any]]:
        return [json.loads(r.value) for r in await self._scan("rules/")]

    # ---- revocation --------------------------------------------------------------------------

    async def _revoke_token(self, token: str) -> None:
        """Revoke a genuine token of ours (even an expired one); the entry outlives any token."""
        jti, _ = token_id(token, self.trusted)
        ttl = max(self.access_ttl, self.refresh_ttl) + 120  # past every token's expiry and leeway
        await self.store.write(Record(f"{_PREFIX}revoked/tokens/{jti}", b"1"), ttl=ttl)
        await self._changed()

    async def revoke(self, body: Any) -> None:
        """Revoke a token (``token``: the JWT, or ``jti``), an ``account`` or a ``node``."""
        body = _body(body)
        async with self._lock:
            if isinstance(body.get("token"), str):
                await self._revoke_token(body["token"])
            elif isinstance(body.get("jti"), str) and re.fullmatch(r"[0-9a-f]{1,64}", body["jti"]):
                ttl = max(self.access_ttl, self.refresh_ttl) + 120
                await self.store.write(Record(f"{_PREFIX}revoked/tokens/{body['jti']}", b"1"), ttl=ttl)
                await self._changed()
            elif isinstance(body.get("account"), str):
                account_id = _account_id(body["account"])
                await self.store.write(Record(f"{_PREFIX}revoked/accounts/{account_id}", b"1"))
                await self._changed()
            elif isinstance(body.get("node"), str):
                node_id = _account_id(body["node"])
                await self.store.write(Record(f"{_PREFIX}revoked/nodes/{node_id}", b"1"))
                await self._changed()
            else:
                raise BadRequest("revoke takes {'token'|'jti'|'account'|'node': str}")

    async def jwks(self, body: Any) -> dict[str, Any]:
        """The public keys tokens of this cluster verify with (JWKS, RFC 7517): the authority's
        signing key first, then any other the node trusts (an authority being rotated out)."""
        guard = self._guard()
        others = sorted(guard.trusted - set(self.trusted)) if guard is not None else []
        return jwks([*self.trusted, *others])

    def _guard(self) -> Any:
        """The serving node's :class:`~trimicro.cluster.auth.AuthGuard`, if it has one."""
        cluster = self.context.node.extensions.get("cluster")
        return None if cluster is None else cluster.auth

    async def state(self, body: Any) -> dict[str, Any]:
        """The rules and revocations every node enforces, signed by the authority (only the
        epoch and version when the caller already has them)."""
        since = body if isinstance(body, dict) else {}
        # Read the version before the records: a change that lands while the store is read (this
        # actor serves calls concurrently) then comes signed as the version before it, so the
        # caller fetches again, instead of the new version with the old records (a node would
        # miss a revocation until the next change).
        epoch, version = self.epoch, self.version
        if since.get("epoch") == epoch and since.get("version") == version:
            return {"epoch": epoch, "version": version}
        revoked: dict[str, builtins.list[str]] = {"tokens": [], "accounts": [], "nodes": []}
        for record in await self._scan("revoked/"):
            _, _, kind, value = record.key.split("/", 3)
            if kind in revoked:
                revoked[kind].append(value)
        rules = [Rule.from_dict(r) for r in await self.rules({})]
        signed = sign_state(self.signing_key, epoch, version, rules, revoked)
        return {"signed": signed}
