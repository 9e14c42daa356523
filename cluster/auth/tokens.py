"""Bearer tokens: JWTs (RFC 7519) signed with Ed25519 (``alg: EdDSA``, RFC 8037), sans I/O.

An authority (:class:`~trimicro.mailbox.secure.identity.Authority`) signs tokens for accounts the way
it signs node certificates; any node that trusts the authority's public key verifies them
offline, as Go Micro's JWT auth does. A token is a compact JWS::

    b64url({"alg":"EdDSA","typ":"JWT","kid":<16 hex>}) . b64url(claims) . b64url(signature)

Everything is strict because tokens arrive from strangers: a size cap before any parsing,
canonical unpadded base64url, JSON without duplicate keys or non-finite numbers, exactly the
header we issue, and the algorithm pinned to EdDSA so ``none`` / ``HS256`` tricks cannot apply.
Every refusal is an :class:`~trimicro.mailbox.errors.Unauthorized` with a generic detail: the
caller learns that a token failed, an attacker learns nothing about why.

Claims follow RFC 7519, so a token minted by any JWT library with the authority's key works:

- required: ``iss`` (the authority's public key, hex: it names the key that must have signed),
  ``sub`` (the account id) and ``exp`` (no token lives for ever);
- optional, checked when present: ``nbf`` and ``iat`` (not in the future, beyond the leeway),
  ``jti`` (a string; a token without one can only be revoked with its account) and ``aud``
  (a string or a list of strings; see below). Times are NumericDates: integer or fractional;
- trimicro's own, optional: ``typ`` (``user`` by default, or ``service``), ``scopes`` (none
  by default), ``metadata`` (none by default) and ``use`` (``access`` by default; a
  ``refresh`` token must also carry ``jti`` and ``iat``, as the ones we issue do);
- anything else is ignored, as RFC 7519 section 4 asks (the size cap bounds it).

Audience (RFC 7519 section 4.1.3): a verifier that names itself (``audience="prod"``) takes
only tokens whose ``aud`` includes that name; one that names no audience refuses every token
that has an ``aud``, since it cannot be among those the token was meant for.

:func:`jwks` publishes the authorities' keys as a JSON Web Key Set (RFC 7517; ``OKP`` /
``Ed25519`` per RFC 8037), with the same ``kid`` our token headers carry, so any JWT library
can verify our tokens.

Signatures are PyNaCl's Ed25519 (``nacl.signing``); no JWT library is needed at run time.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
import types
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Final

import attrs
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from trimicro.mailbox.errors import BadRequest, Unauthorized

__all__ = [
    "ACCOUNT_TYPES",
    "DEFAULT_LEEWAY",
    "MAX_TOKEN_SIZE",
    "USES",
    "Account",
    "TokenCache",
    "issue_token",
    "jwks",
    "refresh",
    "token_id",
    "verify_token",
]

MAX_TOKEN_SIZE: Final = 8192
"""Longest token we look at, in characters; anything longer is refused unparsed."""
DEFAULT_LEEWAY: Final = 30.0
"""Seconds of clock disagreement tolerated on ``exp``, ``nbf`` and ``iat``."""
ACCOUNT_TYPES: Final = frozenset({"user", "service"})
USES: Final = frozenset({"access", "refresh"})

_ALG = "EdDSA"
_HEADER_KEYS = frozenset({"alg", "typ", "kid"})
_REQUIRED = ("iss", "sub", "exp")
_TIMES = ("iat", "nbf", "exp")
_KID_LEN = 16
_SIG_LEN = 64
_MAX_STR = 256  # ids, scopes, metadata keys
_MAX_VALUE = 1024  # metadata values
_MAX_SCOPES = 64
_MAX_METADATA = 64
_MAX_AUDIENCES = 64
_MAX_TIME = 2**53  # JSON numbers beyond this lose precision in other languages
_B64_RE = re.compile(r"[A-Za-z0-9_-]*")
_ISS_RE = re.compile(r"[0-9a-f]{64}")

_INVALID = "invalid token"


def _refuse(detail: str = _INVALID) -> Unauthorized:
    return Unauthorized(detail)


def _tuple(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(scopes)


def _freeze(metadata: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so a frozen Account cannot be changed through its metadata."""
    return types.MappingProxyType(dict(metadata))


@attrs.frozen
class Account:
    """Who a verified token speaks for: Go Micro's ``auth.Account``.

    ``issuer`` is the hex public key of the authority that signed the token. ``token`` is the
    raw bearer token the account was verified from, kept so a service can forward it when it
    calls onwards; it takes no part in equality and never appears in ``repr``.
    """

    id: str
    type: str
    issuer: str
    scopes: tuple[str, ...] = attrs.field(converter=_tuple)
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_freeze, hash=False)
    token: str | None = attrs.field(default=None, eq=False, repr=False)


# -- issuing ---------------------------------------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_bytes(value: object) -> bytes:
    # ASCII-only output is still UTF-8, and it cannot fail on lone surrogates from a decoded token.
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("ascii")


def _sign(signing_key: SigningKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    signing_input = f"{_b64encode(_json_bytes(header))}.{_b64encode(_json_bytes(claims))}"
    signature = signing_key.sign(signing_input.encode("ascii")).signature
    token = f"{signing_input}.{_b64encode(signature)}"
    if len(token) > MAX_TOKEN_SIZE:
        raise ValueError(f"token of {len(token)} characters exceeds {MAX_TOKEN_SIZE}")
    return token


def issue_token(
    signing_key: SigningKey,
    account: Account,
    *,
    ttl: float,
    use: str = "access",
    now: float | None = None,
    jti: str | None = None,
    audience: str | None = None,
) -> str:
    """Sign a ``use`` token for ``account``, valid ``ttl`` seconds from ``now``.

    The issuer is ``signing_key``'s public key, whatever ``account.issuer`` says; ``audience``
    becomes the ``aud`` claim (only verifiers that name it accept the token). Raises
    ``ValueError`` for anything :func:`verify_token` would refuse, so a bad token is caught
    where it is made rather than where it is used.
    """
    if ttl < 1:
        raise ValueError(f"ttl must be at least one second, got {ttl}")
    public = bytes(signing_key.verify_key).hex()
    iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": public,
        "sub": account.id,
        "typ": account.type,
        "scopes": list(account.scopes),
        "metadata": dict(account.metadata),
        "iat": iat,
        "nbf": iat,
        "exp": iat + int(ttl),
        "jti": secrets.token_hex(16) if jti is None else jti,
        "use": use,
    }
    if audience is not None:
        claims["aud"] = audience
    problem = _claims_problem(claims)
    if problem:
        raise ValueError(f"cannot issue token: {problem}")
    return _sign(signing_key, {"alg": _ALG, "typ": "JWT", "kid": public[:_KID_LEN]}, claims)


# -- verifying -------------------------------------------------------------------------------------


def _b64decode(segment: str) -> bytes:
    """Strict base64url: URL-safe alphabet, no padding, canonical (unused bits zero)."""
    if len(segment) % 4 == 1 or not _B64_RE.fullmatch(segment):
        raise _refuse()
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _refuse() from None
    if _b64encode(data) != segment:  # another spelling of the same bytes: refuse malleability
        raise _refuse()
    return data


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: refuse duplicate keys instead of letting the last one win."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _json_object(segment: str) -> dict[str, Any]:
    """Decode one segment to a JSON object; deep nesting trips the interpreter's recursion guard."""
    data = _b64decode(segment)
    try:
        value = json.loads(
            data.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_no_constant
        )
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _refuse() from None
    if not isinstance(value, dict):
        raise _refuse()
    return value


def _header_ok(header: Mapping[str, Any]) -> bool:
    """Only the header we issue: the algorithm is pinned, no ``crit`` or key-fetching parameters."""
    return (
        header.keys() <= _HEADER_KEYS
        and header.get("alg") == _ALG
        and header.get("typ", "JWT") == "JWT"
        and isinstance(header.get("kid", ""), str)
    )


def _is_str(value: object, low: int = 1, high: int = _MAX_STR) -> bool:
    return isinstance(value, str) and low <= len(value) <= high


def _is_time(value: object) -> bool:
    """A NumericDate (RFC 7519): seconds, integer or not. JSON's ``1e999`` reads as infinity and
    fails the bound, as NaN fails every comparison."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= _MAX_TIME


def _audiences(value: object) -> tuple[str, ...] | None:
    """The ``aud`` claim as a tuple (a string is a list of one), or None if it is malformed."""
    if isinstance(value, str):
        return (value,) if _is_str(value) else None
    if isinstance(value, list) and 0 < len(value) <= _MAX_AUDIENCES and all(_is_str(a) for a in value):
        return tuple(value)
    return None


def _claims_problem(claims: Mapping[str, Any]) -> str:
    """Why ``claims`` is not a token body we accept, or ``""`` if it is one (see the module
    docstring for the claim set); claims we do not know are ignored."""
    if not all(k in claims for k in _REQUIRED):
        return "claims iss, sub and exp are required"
    if not (_is_str(claims["iss"]) and _ISS_RE.fullmatch(claims["iss"])):
        return "iss must be a 64-character lowercase hex public key"
    if not (_is_str(claims["sub"]) and _is_str(claims.get("jti", "-"))):
        return f"sub and jti must be strings of 1-{_MAX_STR} characters"
    typ, use = claims.get("typ", "user"), claims.get("use", "access")
    if not (isinstance(typ, str) and typ in ACCOUNT_TYPES and isinstance(use, str) and use in USES):
        return "typ must be user or service, use must be access or refresh"
    if use == "refresh" and not ("jti" in claims and "iat" in claims):
        return "a refresh token carries jti and iat"
    scopes, metadata = claims.get("scopes", []), claims.get("metadata", {})
    if not (isinstance(scopes, list) and len(scopes) <= _MAX_SCOPES and all(_is_str(s) for s in scopes)):
        return f"scopes must be at most {_MAX_SCOPES} strings of 1-{_MAX_STR} characters"
    if not (
        isinstance(metadata, dict)
        and len(metadata) <= _MAX_METADATA
        and all(_is_str(k) and _is_str(v, 0, _MAX_VALUE) for k, v in metadata.items())
    ):
        return f"metadata must map at most {_MAX_METADATA} strings to strings"
    if not all(_is_time(claims[k]) for k in _TIMES if k in claims):
        return "iat, nbf and exp must be non-negative numbers"
    if claims["exp"] <= claims.get("nbf", -1):
        return "exp must be after nbf"
    if "aud" in claims and _audiences(claims["aud"]) is None:
        return f"aud must be a string or a list of 1-{_MAX_AUDIENCES} strings"
    return ""


def _token_audiences(claims: Mapping[str, Any]) -> tuple[str, ...] | None:
    return _audiences(claims["aud"]) if "aud" in claims else None


def _for_audience(audiences: tuple[str, ...] | None, audience: str | None) -> bool:
    """RFC 7519 4.1.3: a token with ``aud`` is only for a verifier named in it; a verifier that
    has a name takes only tokens meant for it."""
    if audience is None:
        return audiences is None
    return audiences is not None and audience in audiences


def _verified_claims(token: object, trusted: Collection[bytes]) -> dict[str, Any]:
    """The claims of ``token`` if a trusted authority signed it; nothing else is checked yet."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_SIZE:
        raise _refuse()
    parts = token.split(".")
    if len(parts) != 3:
        raise _refuse()
    header_b64, payload_b64, signature_b64 = parts
    header = _json_object(header_b64)
    if not _header_ok(header):
        raise _refuse()
    claims = _json_object(payload_b64)
    # Only the issuer is read before the signature is checked, and only to find the key.
    iss = claims.get("iss")
    if not isinstance(iss, str) or not _ISS_RE.fullmatch(iss):
        raise _refuse()
    issuer = bytes.fromhex(iss)
    if issuer not in trusted or header.get("kid", iss[:_KID_LEN]) != iss[:_KID_LEN]:
        raise _refuse()
    signature = _b64decode(signature_b64)
    if len(signature) != _SIG_LEN:
        raise _refuse()
    try:
        VerifyKey(issuer).verify(f"{header_b64}.{payload_b64}".encode("ascii"), signature)
    except (CryptoError, ValueError, TypeError):
        raise _refuse() from None
    return claims


def _check_claims(
    claims: Mapping[str, Any],
    *,
    now: float,
    leeway: float,
    use: str,
    revoked: Callable[[str, str], bool] | None,
    audience: str | None,
) -> None:
    """The signed claims' shape, purpose, audience, validity window and revocation, in that order."""
    if (
        _claims_problem(claims)
        or claims.get("use", "access") != use
        or not _for_audience(_token_audiences(claims), audience)
    ):
        raise _refuse()
    if now >= claims["exp"] + leeway:
        raise _refuse("token expired")
    if now < claims.get("nbf", 0) - leeway or now < claims.get("iat", 0) - leeway:
        raise _refuse("token not yet valid")
    if revoked is not None and revoked(claims.get("jti", ""), claims["sub"]):
        raise _refuse("token revoked")


def _account(claims: Mapping[str, Any], token: str) -> Account:
    return Account(
        id=claims["sub"],
        type=claims.get("typ", "user"),
        issuer=claims["iss"],
        scopes=tuple(claims.get("scopes", ())),
        metadata=claims.get("metadata", {}),
        token=token,
    )


def _check_use(use: str) -> None:
    if use not in USES:
        raise ValueError(f"use must be one of {sorted(USES)}, got {use!r}")


def verify_token(
    token: str,
    trusted: Collection[bytes],
    *,
    now: float | None = None,
    leeway: float = DEFAULT_LEEWAY,
    use: str = "access",
    revoked: Callable[[str, str], bool] | None = None,
    audience: str | None = None,
) -> Account:
    """The :class:`Account` a ``use`` token speaks for, if an authority in ``trusted`` signed it.

    ``trusted`` holds 32-byte authority public keys (a set makes the lookup O(1)).
    ``revoked(jti, sub)`` returning True refuses the token (``jti`` is ``""`` for a token
    without one). ``audience`` is this verifier's name (see the module docstring). Raises
    :class:`Unauthorized` for every problem, with a detail that never echoes the token.
    """
    _check_use(use)
    claims = _verified_claims(token, trusted)
    at = time.time() if now is None else now
    _check_claims(claims, now=at, leeway=leeway, use=use, revoked=revoked, audience=audience)
    return _account(claims, token)


def refresh(
    signing_key: SigningKey,
    refresh_token: str,
    trusted: Collection[bytes],
    *,
    access_ttl: float,
    now: float | None = None,
    revoked: Callable[[str, str], bool] | None = None,
    audience: str | None = None,
) -> tuple[str, str]:
    """Trade a valid refresh token for a new ``(access, refresh)`` pair signed by ``signing_key``.

    The refresh token rotates: the new one has the old one's lifetime from ``now``. The old one
    stays valid until it expires unless the caller revokes its ``jti`` (see
    :func:`token_id`), which is what makes a stolen, already-used refresh token useless.
    The pair is for ``audience``, which the refresh token must be for too.
    """
    at = time.time() if now is None else now
    claims = _verified_claims(refresh_token, trusted)
    _check_claims(claims, now=at, leeway=DEFAULT_LEEWAY, use="refresh", revoked=revoked, audience=audience)
    account = _account(claims, refresh_token)
    lifetime = claims["exp"] - claims["iat"]
    access = issue_token(signing_key, account, ttl=access_ttl, use="access", now=at, audience=audience)
    rotated = issue_token(
        signing_key, account, ttl=max(lifetime, 1), use="refresh", now=at, audience=audience
    )
    return access, rotated


def token_id(token: str, trusted: Collection[bytes]) -> tuple[str, str]:
    """The ``(jti, sub)`` of a token a trusted authority signed, even if expired: what to revoke.

    Raises :class:`Unauthorized` if the token is malformed or not signed by ``trusted``, and
    :class:`BadRequest` for a genuine token without a ``jti`` (revoke its account instead).
    """
    claims = _verified_claims(token, trusted)
    if _claims_problem(claims):
        raise _refuse()
    if "jti" not in claims:
        raise BadRequest("the token has no jti: revoke its account instead")
    return claims["jti"], claims["sub"]


def jwks(keys: Iterable[bytes]) -> dict[str, list[dict[str, str]]]:
    """The JSON Web Key Set (RFC 7517) of authority public keys, as any JWT library reads it.

    Each key is an RFC 8037 ``OKP`` key on ``Ed25519`` for ``alg: EdDSA``, with the ``kid``
    our token headers carry, so a verifier picks the key by the token's header.
    """
    out: list[dict[str, str]] = []
    for key in keys:
        raw = bytes(key)
        if len(raw) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
        out.append(
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": _b64encode(raw),
                "kid": raw.hex()[:_KID_LEN],
                "alg": _ALG,
                "use": "sig",
            }
        )
    return {"keys": out}


# -- caching ---------------------------------------------------------------------------------------


@attrs.frozen
class _Entry:
    account: Account
    use: str
    issuer: bytes
    jti: str
    nbf: float
    iat: float
    exp: float
    audiences: tuple[str, ...] | None


class TokenCache:
    """Verified tokens by their text, so a hot path checks each signature once.

    A hit still checks, on every call, that the issuer is still trusted, the purpose matches,
    the token is within its validity window and not revoked; only the parsing and the
    signature check are skipped. Bounded: the oldest entry goes when it is full.
    """

    __slots__ = ("_entries", "maxsize")

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be positive, got {maxsize}")
        self.maxsize = maxsize
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def verify(
        self,
        token: str,
        trusted: Collection[bytes],
        *,
        now: float | None = None,
        leeway: float = DEFAULT_LEEWAY,
        use: str = "access",
        revoked: Callable[[str, str], bool] | None = None,
        audience: str | None = None,
    ) -> Account:
        """:func:`verify_token`, answered from the cache when the token was verified before."""
        _check_use(use)
        at = time.time() if now is None else now
        entry = self._entries.get(token) if isinstance(token, str) else None
        if entry is None:
            claims = _verified_claims(token, trusted)
            _check_claims(claims, now=at, leeway=leeway, use=use, revoked=revoked, audience=audience)
            entry = _Entry(
                _account(claims, token),
                use,
                bytes.fromhex(claims["iss"]),
                claims.get("jti", ""),
                claims.get("nbf", 0),
                claims.get("iat", 0),
                claims["exp"],
                _token_audiences(claims),
            )
            self._store(token, entry)
            return entry.account
        self._recheck(token, entry, trusted, at, leeway, use, revoked, audience)
        return entry.account

    def _recheck(
        self,
        token: str,
        entry: _Entry,
        trusted: Collection[bytes],
        now: float,
        leeway: float,
        use: str,
        revoked: Callable[[str, str], bool] | None,
        audience: str | None,
    ) -> None:
        if entry.issuer not in trusted or entry.use != use:
            raise _refuse()
        if not _for_audience(entry.audiences, audience):
            raise _refuse()
        if now >= entry.exp + leeway:
            del self._entries[token]
            raise _refuse("token expired")
        if now < entry.nbf - leeway or now < entry.iat - leeway:
            raise _refuse("token not yet valid")
        if revoked is not None and revoked(entry.jti, entry.account.id):
            raise _refuse("token revoked")

    def _store(self, token: str, entry: _Entry) -> None:
        if len(self._entries) >= self.maxsize:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = entry

    def discard(self, tokens: Iterable[str]) -> None:
        """Forget these tokens (e.g. after revoking them); unknown ones are ignored."""
        for token in tokens:
            self._entries.pop(token, None)
