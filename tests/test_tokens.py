"""Bearer tokens: interop with PyJWT both ways, every refusal, the cache, refresh rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from trimicro.cluster.auth.tokens import (
    MAX_TOKEN_SIZE,
    Account,
    TokenCache,
    issue_token,
    jwks,
    refresh,
    token_id,
    verify_token,
)
from trimicro.mailbox.errors import BadRequest, Unauthorized
from trimicro.mailbox.secure.identity import Authority

NOW = 1_700_000_000
AUTHORITY = Authority(SigningKey(bytes(range(32))))
TRUSTED = frozenset({AUTHORITY.public_key})
ALICE = Account("alice", "user", AUTHORITY.public_key.hex(), ("greeter", "admin"), {"team": "blue"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": AUTHORITY.public_key.hex(),
        "sub": "alice",
        "typ": "user",
        "scopes": ["greeter", "admin"],
        "metadata": {"team": "blue"},
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 60,
        "jti": "0123456789abcdef",
        "use": "access",
    }
    claims.update(changes)
    return claims


def _forge(header: dict[str, Any], claims: dict[str, Any], key: SigningKey | None = None) -> str:
    """A token over arbitrary header and claims, correctly signed by ``key`` (the authority)."""
    signing_input = f"{_b64(_json(header))}.{_b64(_json(claims))}"
    sig = (key or AUTHORITY.signing_key).sign(signing_input.encode()).signature
    return f"{signing_input}.{_b64(sig)}"


def _header() -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "JWT", "kid": AUTHORITY.public_key.hex()[:16]}


def _token(**kw: Any) -> str:
    kw.setdefault("now", NOW)
    kw.setdefault("ttl", 60)
    return issue_token(AUTHORITY.signing_key, ALICE, **kw)


def _refused(token: object, detail: str = "invalid token", **kw: Any) -> None:
    kw.setdefault("now", NOW)
    with pytest.raises(Unauthorized) as info:
        verify_token(token, TRUSTED, **kw)  # type: ignore[arg-type]
    assert info.value.detail == detail
    assert info.value.code == 401


# -- shape and interop -----------------------------------------------------------------------------


def test_issued_token_has_the_exact_header_and_claims() -> None:
    token = _token(jti="abc")
    header_b64, payload_b64, _ = token.split(".")
    pad = "=="
    assert base64.urlsafe_b64decode(header_b64 + pad) == (
        b'{"alg":"EdDSA","typ":"JWT","kid":"' + AUTHORITY.public_key.hex()[:16].encode() + b'"}'
    )
    assert json.loads(base64.urlsafe_b64decode(payload_b64 + pad)) == _claims(jti="abc")
    assert "=" not in token


def test_round_trip_keeps_the_account_and_the_raw_token() -> None:
    token = _token()
    account = verify_token(token, TRUSTED, now=NOW)
    assert account == ALICE
    assert account.token == token
    assert token not in repr(account)
    assert hash(account) == hash(ALICE)
    assert dict(account.metadata) == {"team": "blue"}


def test_random_jti_differs_per_token() -> None:
    ids = {json.loads(base64.urlsafe_b64decode(_token().split(".")[1] + "=="))["jti"] for _ in range(5)}
    assert len(ids) == 5
    assert all(len(i) == 32 for i in ids)


def test_pyjwt_verifies_our_tokens() -> None:
    token = issue_token(AUTHORITY.signing_key, ALICE, ttl=300, jti="j1")
    key = Ed25519PublicKey.from_public_bytes(AUTHORITY.public_key)
    claims = jwt.decode(
        token, key=key, algorithms=["EdDSA"], options={"require": ["exp", "nbf", "iat", "iss", "sub"]}
    )
    now = int(time.time())
    assert claims["iss"] == AUTHORITY.public_key.hex()
    assert claims["sub"] == "alice"
    assert claims["typ"] == "user"
    assert claims["scopes"] == ["greeter", "admin"]
    assert claims["metadata"] == {"team": "blue"}
    assert claims["jti"] == "j1"
    assert claims["use"] == "access"
    assert abs(claims["iat"] - now) <= 2 and claims["nbf"] == claims["iat"]
    assert claims["exp"] == claims["iat"] + 300
    assert jwt.get_unverified_header(token) == _header()


def test_we_verify_pyjwt_tokens() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(AUTHORITY.signing_key))
    token = jwt.encode(_claims(), private, algorithm="EdDSA", headers={"kid": _header()["kid"]})
    assert verify_token(token, TRUSTED, now=NOW + 1) == ALICE
    without_kid = jwt.encode(_claims(), private, algorithm="EdDSA")
    assert verify_token(without_kid, TRUSTED, now=NOW + 1) == ALICE


def test_pyjwt_token_with_a_foreign_key_is_refused() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(32))
    _refused(jwt.encode(_claims(), private, algorithm="EdDSA"))


# -- time ------------------------------------------------------------------------------------------


def test_expiry_honours_leeway() -> None:
    token = _token()
    verify_token(token, TRUSTED, now=NOW + 60 + 29)
    _refused(token, "token expired", now=NOW + 90)
    _refused(token, "token expired", now=NOW + 60, leeway=0)


def test_not_yet_valid_honours_leeway() -> None:
    token = _token()
    verify_token(token, TRUSTED, now=NOW - 30)
    _refused(token, "token not yet valid", now=NOW - 31)


def test_issued_in_the_future_is_refused() -> None:
    token = _forge(_header(), _claims(iat=NOW + 100, nbf=NOW, exp=NOW + 1000))
    _refused(token, "token not yet valid")


def test_issue_refuses_what_verify_would_refuse() -> None:
    with pytest.raises(ValueError):
        _token(ttl=0.5)
    with pytest.raises(ValueError):
        _token(use="bearer")
    with pytest.raises(ValueError):
        issue_token(AUTHORITY.signing_key, Account("a", "robot", "", ()), ttl=60)
    with pytest.raises(ValueError):
        issue_token(AUTHORITY.signing_key, Account("", "user", "", ()), ttl=60)
    with pytest.raises(ValueError):
        issue_token(AUTHORITY.signing_key, Account("a", "user", "", ("",)), ttl=60)
    with pytest.raises(ValueError):
        big = {f"k{i}": "v" * 1000 for i in range(20)}
        issue_token(AUTHORITY.signing_key, Account("a", "user", "", (), big), ttl=60)


# -- tampering and algorithm confusion -------------------------------------------------------------


def test_tampered_payload_is_refused() -> None:
    header, _, sig = _token().split(".")
    evil = _b64(_json(_claims(scopes=["admin", "root"])))
    _refused(f"{header}.{evil}.{sig}")


def test_tampered_signature_is_refused() -> None:
    header, payload, sig = _token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[10] ^= 1
    _refused(f"{header}.{payload}.{_b64(bytes(raw))}")


def test_non_canonical_signature_spelling_is_refused() -> None:
    """The last character of an 86-char signature carries 4 unused bits: no second spelling."""
    header, payload, sig = _token().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = sig[:-1] + alphabet[alphabet.index(sig[-1]) | 1]
    assert twin != sig
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(sig + "==")
    _refused(f"{header}.{payload}.{twin}")


def test_padding_and_standard_alphabet_are_refused() -> None:
    header, payload, sig = next(
        t.split(".") for t in (_token(jti=f"p-{i}") for i in range(100)) if {"-", "_"} & set(t.split(".")[2])
    )
    _refused(f"{header}.{payload}.{sig}==")
    _refused(f"{header}.{payload}.{sig.replace('-', '+').replace('_', '/')}")
    _refused(f"{header}=.{payload}.{sig}")


def test_alg_none_is_refused() -> None:
    claims = _b64(_json(_claims()))
    for alg in ("none", "None", "NONE"):
        header = _b64(_json({"alg": alg, "typ": "JWT"}))
        _refused(f"{header}.{claims}.")
        _refused(f"{header}.{claims}")


@pytest.mark.parametrize("key", ["raw", "hex"])
def test_hs256_with_the_public_key_as_secret_is_refused(key: str) -> None:
    """The classic confusion: an HMAC keyed with the public key, hoping the verifier uses it."""
    secret = AUTHORITY.public_key if key == "raw" else AUTHORITY.public_key.hex().encode()
    signing_input = f"{_b64(_json({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64(_json(_claims()))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    _refused(f"{signing_input}.{_b64(mac)}")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "typ": "JWT"},
        {"alg": "ES256"},
        {"alg": "eddsa"},
        {"typ": "JWT"},
        {"alg": "EdDSA", "crit": ["exp"]},
        {"alg": "EdDSA", "jwk": {"kty": "OKP"}},
        {"alg": "EdDSA", "typ": "JWE"},
        {"alg": "EdDSA", "kid": 7},
        {"alg": "EdDSA", "kid": "0000000000000000"},
    ],
)
def test_bad_headers_are_refused_even_when_signed(header: dict[str, Any]) -> None:
    _refused(_forge(header, _claims()))


def test_duplicate_keys_are_refused_even_when_signed() -> None:
    h = _b64(b'{"alg":"none","alg":"EdDSA"}')
    claims = _b64(_json(_claims()))
    sig = AUTHORITY.signing_key.sign(f"{h}.{claims}".encode()).signature
    _refused(f"{h}.{claims}.{_b64(sig)}")
    dup_claims = _b64(_json(_claims())[:-1] + b',"sub":"root"}')
    sig = AUTHORITY.signing_key.sign(f"{_b64(_json(_header()))}.{dup_claims}".encode()).signature
    _refused(f"{_b64(_json(_header()))}.{dup_claims}.{_b64(sig)}")


@pytest.mark.parametrize(
    "changes",
    [
        {"sub": 7},
        {"sub": ""},
        {"typ": "robot"},
        {"typ": ["user"]},
        {"scopes": "admin"},
        {"scopes": [1]},
        {"metadata": {"k": 1}},
        {"metadata": []},
        {"exp": True},
        {"exp": "1700000060"},
        {"nbf": None},
        {"iat": -1},
        {"exp": NOW - 10},
        {"jti": None},
        {"use": {"x": 1}},
        {"aud": "someone"},  # a verifier without an audience is not among the token's
        {"aud": ["someone"]},
        {"jti": 7},
        {"jti": ""},
    ],
)
def test_wrong_claim_types_are_refused_even_when_signed(changes: dict[str, Any]) -> None:
    _refused(_forge(_header(), _claims(**changes)))


@pytest.mark.parametrize("claim", ["iss", "sub", "exp"])
def test_a_missing_required_claim_is_refused(claim: str) -> None:
    claims = _claims()
    del claims[claim]
    _refused(_forge(_header(), claims))


# -- tokens minted by another JWT library: RFC 7519's claim set ------------------------------------

PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(AUTHORITY.signing_key))
ISS = AUTHORITY.public_key.hex()


def _pyjwt(claims: dict[str, Any]) -> str:
    """A token PyJWT signs with the authority's key (a script of an operator who holds it)."""
    return jwt.encode(claims, PRIVATE, algorithm="EdDSA")


def test_a_pyjwt_token_with_only_the_required_claims_is_a_user_access_token() -> None:
    token = _pyjwt({"iss": ISS, "sub": "bob", "exp": NOW + 60})
    account = verify_token(token, TRUSTED, now=NOW)
    assert account == Account("bob", "user", ISS, ())
    assert dict(account.metadata) == {}
    _refused(token, use="refresh")  # "use" defaults to access


def test_claims_we_do_not_know_are_ignored() -> None:
    extra = {"iss": ISS, "sub": "bob", "exp": NOW + 60, "email": "bob@example.com", "x": {"y": [1]}}
    assert verify_token(_pyjwt(extra), TRUSTED, now=NOW).id == "bob"


@pytest.mark.parametrize(
    ("aud", "audience", "ok"),
    [
        ("prod", "prod", True),
        (["staging", "prod"], "prod", True),
        ("staging", "prod", False),  # meant for another cluster
        (["staging", "dev"], "prod", False),
        (None, "prod", False),  # this cluster requires an audience
        ("prod", None, False),  # RFC 7519 4.1.3: a verifier not named in aud must refuse
        (None, None, True),
        ([], "prod", False),
        ([7], "prod", False),
        ("", "prod", False),
    ],
)
def test_audience_per_rfc_7519(aud: Any, audience: str | None, ok: bool) -> None:
    claims: dict[str, Any] = {"iss": ISS, "sub": "bob", "exp": NOW + 60}
    if aud is not None:
        claims["aud"] = aud
    token = _pyjwt(claims)
    if ok:
        assert verify_token(token, TRUSTED, now=NOW, audience=audience).id == "bob"
        assert TokenCache().verify(token, TRUSTED, now=NOW, audience=audience).id == "bob"
    else:
        _refused(token, audience=audience)
        with pytest.raises(Unauthorized):
            TokenCache().verify(token, TRUSTED, now=NOW, audience=audience)


def test_a_cached_token_is_still_checked_against_the_audience() -> None:
    cache = TokenCache()
    token = _pyjwt({"iss": ISS, "sub": "bob", "exp": NOW + 60, "aud": "prod"})
    cache.verify(token, TRUSTED, now=NOW, audience="prod")
    for other in ("staging", None):
        with pytest.raises(Unauthorized):
            cache.verify(token, TRUSTED, now=NOW, audience=other)


def test_we_issue_tokens_for_an_audience_that_pyjwt_checks() -> None:
    token = _token(audience="prod")
    assert verify_token(token, TRUSTED, now=NOW, audience="prod") == ALICE
    _refused(token)
    key = Ed25519PublicKey.from_public_bytes(AUTHORITY.public_key)
    options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    assert jwt.decode(token, key, algorithms=["EdDSA"], audience="prod", options=options)["aud"] == "prod"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=["EdDSA"], audience="staging", options=options)


def test_registered_time_claims_per_rfc_7519() -> None:
    base = {"iss": ISS, "sub": "bob"}
    # NumericDates may be fractional.
    assert verify_token(
        _pyjwt({**base, "exp": NOW + 60.5, "nbf": NOW - 0.5, "iat": NOW + 0.25}), TRUSTED, now=NOW
    )
    _refused(_pyjwt({**base, "exp": NOW + 600, "nbf": NOW + 100}), "token not yet valid")
    _refused(_pyjwt({**base, "exp": NOW + 600, "iat": NOW + 100}), "token not yet valid")
    _refused(_pyjwt({**base, "exp": NOW - 100}), "token expired")
    _refused(_pyjwt({**base, "exp": NOW + 60, "nbf": NOW + 60}))  # never valid
    infinite = _b64(_json({**base, "exp": 0}).replace(b'"exp":0', b'"exp":1e400'))  # JSON reads inf
    signing_input = f"{_b64(_json(_header()))}.{infinite}"
    _refused(f"{signing_input}.{_b64(AUTHORITY.signing_key.sign(signing_input.encode()).signature)}")


def test_iss_must_name_a_trusted_authority_key() -> None:
    _refused(_pyjwt({"iss": "https://auth.example.com", "sub": "bob", "exp": NOW + 60}))
    _refused(_pyjwt({"iss": ISS.upper(), "sub": "bob", "exp": NOW + 60}))
    _refused(_pyjwt({"iss": Authority.generate().public_key.hex(), "sub": "bob", "exp": NOW + 60}))


def test_jti_is_optional_for_access_tokens_and_required_for_refresh_tokens() -> None:
    no_jti = _pyjwt({"iss": ISS, "sub": "bob", "exp": NOW + 60})
    verify_token(no_jti, TRUSTED, now=NOW)
    seen: list[tuple[str, str]] = []
    verify_token(no_jti, TRUSTED, now=NOW, revoked=lambda jti, sub: bool(seen.append((jti, sub))))
    assert seen == [("", "bob")]  # only its account can revoke it
    with pytest.raises(BadRequest):
        token_id(no_jti, TRUSTED)
    refresh_claims = {"iss": ISS, "sub": "bob", "exp": NOW + 60, "iat": NOW, "use": "refresh"}
    _refused(_pyjwt(refresh_claims), use="refresh")
    verify_token(_pyjwt({**refresh_claims, "jti": "r"}), TRUSTED, now=NOW, use="refresh")


def test_jwks_lets_pyjwt_pick_the_key_by_kid() -> None:
    other = Authority.generate()
    key_set = jwks([other.public_key, AUTHORITY.public_key])
    assert key_set["keys"][1] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64(AUTHORITY.public_key),
        "kid": ISS[:16],
        "alg": "EdDSA",
        "use": "sig",
    }
    keys = jwt.PyJWKSet.from_dict(json.loads(json.dumps(key_set)))
    token = _token()
    kid = jwt.get_unverified_header(token)["kid"]
    options = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
    assert jwt.decode(token, keys[kid], algorithms=["EdDSA"], options=options)["sub"] == "alice"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, keys[other.public_key.hex()[:16]], algorithms=["EdDSA"], options=options)
    with pytest.raises(ValueError):
        jwks([b"short"])


# -- trust, purpose, revocation --------------------------------------------------------------------


def test_untrusted_issuer_is_refused() -> None:
    other = Authority.generate()
    token = issue_token(other.signing_key, ALICE, ttl=60, now=NOW)
    _refused(token)
    assert verify_token(token, {other.public_key}, now=NOW).issuer == other.public_key.hex()


def test_claimed_issuer_signed_by_another_key_is_refused() -> None:
    """A token naming our authority as ``iss`` but signed by an attacker's key."""
    _refused(_forge(_header(), _claims(), key=SigningKey.generate()))


def test_wrong_use_is_refused() -> None:
    _refused(_token(use="refresh"))
    _refused(_token(), use="refresh")
    verify_token(_token(use="refresh"), TRUSTED, now=NOW, use="refresh")
    with pytest.raises(ValueError):
        verify_token(_token(), TRUSTED, now=NOW, use="id")


def test_revoked_jti_or_sub_is_refused() -> None:
    token = _token(jti="j-1")
    seen: list[tuple[str, str]] = []

    def revoked(jti: str, sub: str) -> bool:
        seen.append((jti, sub))
        return jti == "j-1"

    _refused(token, "token revoked", revoked=revoked)
    assert seen == [("j-1", "alice")]
    _refused(token, "token revoked", revoked=lambda jti, sub: sub == "alice")
    verify_token(token, TRUSTED, now=NOW, revoked=lambda jti, sub: False)


def test_revocation_is_not_consulted_for_forged_tokens() -> None:
    def revoked(jti: str, sub: str) -> bool:
        raise AssertionError("claims of an unverified token were trusted")

    _refused(_forge(_header(), _claims(), key=SigningKey.generate()), revoked=revoked)


def test_oversized_tokens_are_refused_unparsed() -> None:
    token = _token()
    _refused(token + "A" * MAX_TOKEN_SIZE)
    _refused("A" * (MAX_TOKEN_SIZE + 1))


@pytest.mark.parametrize(
    "token",
    ["", ".", "..", "...", "a.b.c", "a.b", b"abc", None, 42, "é.é.é", "[[[[[[[[.x.y"],
)
def test_garbage_is_refused(token: object) -> None:
    _refused(token)


def test_deep_nesting_is_refused() -> None:
    nested = _b64(b"[" * 5000 + b"]" * 5000)
    _refused(f"{_b64(_json(_header()))}.{nested}.{_b64(bytes(64))}")


def test_token_id_names_what_to_revoke_even_after_expiry() -> None:
    assert token_id(_token(jti="j-9"), TRUSTED) == ("j-9", "alice")
    with pytest.raises(Unauthorized):
        token_id(_forge(_header(), _claims(), key=SigningKey.generate()), TRUSTED)


# -- refresh ---------------------------------------------------------------------------------------


def test_refresh_rotates_the_pair() -> None:
    old = _token(use="refresh", ttl=3600, jti="r-1")
    access, new = refresh(AUTHORITY.signing_key, old, TRUSTED, access_ttl=60, now=NOW + 100)
    assert new != old
    assert verify_token(access, TRUSTED, now=NOW + 100) == ALICE
    assert verify_token(new, TRUSTED, now=NOW + 100, use="refresh") == ALICE
    assert token_id(new, TRUSTED)[0] != "r-1"
    verify_token(new, TRUSTED, now=NOW + 100 + 3600 - 1, use="refresh")
    with pytest.raises(Unauthorized):
        verify_token(access, TRUSTED, now=NOW + 100 + 91)


def test_refresh_refuses_access_tokens_revoked_and_expired_ones() -> None:
    key = AUTHORITY.signing_key
    with pytest.raises(Unauthorized):
        refresh(key, _token(), TRUSTED, access_ttl=60, now=NOW)
    r = _token(use="refresh", jti="r-2")
    with pytest.raises(Unauthorized):
        refresh(key, r, TRUSTED, access_ttl=60, now=NOW, revoked=lambda jti, sub: jti == "r-2")
    with pytest.raises(Unauthorized):
        refresh(key, r, TRUSTED, access_ttl=60, now=NOW + 1000)


# -- cache -----------------------------------------------------------------------------------------


def test_cache_verifies_once_and_rechecks_time_trust_use_and_revocation() -> None:
    cache = TokenCache(maxsize=8)
    token = _token(jti="c-1")
    account = cache.verify(token, TRUSTED, now=NOW)
    assert cache.verify(token, TRUSTED, now=NOW + 1) is account
    assert len(cache) == 1
    with pytest.raises(Unauthorized, match="revoked"):
        cache.verify(token, TRUSTED, now=NOW, revoked=lambda jti, sub: jti == "c-1")
    with pytest.raises(Unauthorized):
        cache.verify(token, frozenset(), now=NOW)
    with pytest.raises(Unauthorized):
        cache.verify(token, TRUSTED, now=NOW, use="refresh")
    with pytest.raises(Unauthorized, match="not yet valid"):
        cache.verify(token, TRUSTED, now=NOW - 100)
    with pytest.raises(Unauthorized, match="expired"):
        cache.verify(token, TRUSTED, now=NOW + 1000)
    assert len(cache) == 0


def test_cache_is_bounded_and_evicts_the_oldest() -> None:
    cache = TokenCache(maxsize=3)
    tokens = [_token(jti=f"e-{i}") for i in range(5)]
    for t in tokens:
        cache.verify(t, TRUSTED, now=NOW)
    assert len(cache) == 3
    cache.discard(tokens[-1:])
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        TokenCache(0)


def test_cache_refuses_like_verify_token() -> None:
    cache = TokenCache()
    for bad in ("", "a.b.c", _forge(_header(), _claims(), key=SigningKey.generate())):
        with pytest.raises(Unauthorized):
            cache.verify(bad, TRUSTED, now=NOW)
    assert len(cache) == 0


# -- properties ------------------------------------------------------------------------------------

VALID = _token()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text_is_only_ever_refused(text: str) -> None:
    with pytest.raises(Unauthorized):
        verify_token(text, TRUSTED, now=NOW)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutations_of_a_valid_token_never_verify(data: st.DataObject) -> None:
    chars = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ")
    token = VALID
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(token)))
        op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        if op == "insert":
            token = token[:pos] + data.draw(chars) + token[pos:]
        elif op == "delete":
            token = token[:pos] + token[pos + 1 :]
        else:
            token = token[:pos] + data.draw(chars) + token[pos + 1 :]
    if token == VALID:
        assert verify_token(token, TRUSTED, now=NOW) == ALICE
    else:
        with pytest.raises(Unauthorized):
            verify_token(token, TRUSTED, now=NOW)
