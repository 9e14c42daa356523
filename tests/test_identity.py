"""Node identities: certificates, their refusals, key files, dev identities, and the handshake."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from trimicro.mailbox.errors import InternalServerError, Unauthorized
from trimicro.mailbox.secure.channel import SecureHandshake, SecureSession
from trimicro.mailbox.secure.identity import (
    CLOCK_SKEW,
    DEFAULT_CERT_TTL,
    MAX_CERT_SIZE,
    Authority,
    Certificate,
    CertificateError,
    IdentityError,
    NodeIdentity,
    dev_identity,
    verify_certificate,
)
from trimicro.mailbox.secure.noise import HandshakeError

NOW = 1_700_000_000
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def _resign(authority: Authority, fields: dict[str, Any]) -> bytes:
    """Sign an arbitrary body with ``authority``: a 'valid' signature over a bad certificate."""
    return bytes(authority.signing_key.sign(msgpack.packb(fields, use_bin_type=True)))


def _fields(authority: Authority, node_key: bytes, **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "node_id": "n1",
        "public_key": node_key,
        "name": "",
        "roles": [],
        "not_before": NOW,
        "expires": NOW + 100,
        "issuer": authority.public_key,
    }
    fields.update(changes)
    return fields


AUTH = Authority.generate()
NODE_KEY = SigningKey.generate()
NODE_PUB = bytes(NODE_KEY.verify_key)
VALID = AUTH.issue("node-1", NODE_PUB, name="first", roles=("worker", "gateway"), ttl=3600, now=NOW)


# -- round trip ------------------------------------------------------------------------------------


def test_issue_decode_verify_round_trip() -> None:
    c = Certificate.decode(VALID)
    assert c == Certificate(
        node_id="node-1",
        public_key=NODE_PUB,
        name="first",
        roles=("worker", "gateway"),
        not_before=NOW,
        expires=NOW + 3600,
        issuer=AUTH.public_key,
        raw=VALID,
    )
    assert c.lifetime == 3600
    assert verify_certificate(VALID, NODE_PUB, {AUTH.public_key}, now=NOW + 10) == c
    # The wire form: 64-byte signature, then a msgpack map of exactly the documented fields.
    body = msgpack.unpackb(VALID[64:])
    assert set(body) == {"node_id", "public_key", "name", "roles", "not_before", "expires", "issuer"}
    AUTH.signing_key.verify_key.verify(VALID)
    assert len(VALID) < 300


def test_default_ttl_and_now() -> None:
    before = int(time.time())
    c = Certificate.decode(AUTH.issue("n", NODE_PUB))
    assert before <= c.not_before <= time.time()
    assert c.lifetime == DEFAULT_CERT_TTL == 30 * 24 * 3600
    verify_certificate(c.raw, NODE_PUB, [AUTH.public_key])  # now defaults to the current time


def test_errors_are_micro_errors() -> None:
    assert issubclass(CertificateError, Unauthorized)
    assert issubclass(IdentityError, InternalServerError)
    assert CertificateError("x").code == 401


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": ""},
        {"node_id": "x" * 257},
        {"name": "x" * 257},
        {"roles": ["x"] * 33},
        {"roles": ["x" * 65]},
        {"roles": [""]},
        {"public_key": b"short"},
        {"ttl": 0},
    ],
)
def test_issue_refuses_what_a_verifier_would_refuse(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"node_id": "n", "public_key": NODE_PUB, **kwargs}
    with pytest.raises(ValueError):
        AUTH.issue(args.pop("node_id"), args.pop("public_key"), **args)


def test_issue_limits_are_inclusive() -> None:
    cert = AUTH.issue("x" * 256, NODE_PUB, name="é" * 256, roles=["r" * 64] * 32, now=NOW)
    c = verify_certificate(cert, NODE_PUB, [AUTH.public_key], now=NOW)
    assert len(c.roles) == 32 and c.name == "é" * 256
    assert len(cert) <= MAX_CERT_SIZE


# -- refusals --------------------------------------------------------------------------------------


def test_foreign_authority_refused() -> None:
    with pytest.raises(CertificateError, match="foreign authority"):
        verify_certificate(VALID, NODE_PUB, {Authority.generate().public_key}, now=NOW)
    with pytest.raises(CertificateError, match="foreign authority"):
        verify_certificate(VALID, NODE_PUB, (), now=NOW)


def test_self_made_issuer_field_does_not_help() -> None:
    """An attacker's own authority signs a cert claiming our issuer: the signature gives it away."""
    mallory = Authority.generate()
    forged = _resign(mallory, _fields(AUTH, NODE_PUB))
    with pytest.raises(CertificateError, match="signature is invalid"):
        verify_certificate(forged, NODE_PUB, [AUTH.public_key], now=NOW)


@pytest.mark.parametrize("pos", [0, 10, 63, 64, 70, -40, -1])
def test_tampered_byte_refused(pos: int) -> None:
    with pytest.raises(CertificateError):
        verify_certificate(_flip(VALID, pos), NODE_PUB, [AUTH.public_key], now=NOW)


def test_tampered_body_with_valid_structure_refused() -> None:
    """Change a field to another well-formed value: only the signature can catch it."""
    tampered = VALID.replace(b"node-1", b"node-2")
    assert Certificate.decode(tampered).node_id == "node-2"
    with pytest.raises(CertificateError, match="signature is invalid"):
        verify_certificate(tampered, NODE_PUB, [AUTH.public_key], now=NOW)


def test_expired_refused() -> None:
    verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW + 3599)
    with pytest.raises(CertificateError, match=r"'node-1' expired at"):
        verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW + 3600)
    with pytest.raises(CertificateError, match="expired"):
        verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW + 10**9)


def test_not_yet_valid_refused_with_clock_skew_allowance() -> None:
    verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW - CLOCK_SKEW)
    with pytest.raises(CertificateError, match="not valid before"):
        verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW - CLOCK_SKEW - 1)


def test_key_mismatch_refused() -> None:
    other = bytes(SigningKey.generate().verify_key)
    with pytest.raises(CertificateError, match="for another key"):
        verify_certificate(VALID, other, [AUTH.public_key], now=NOW)


def test_revoked_refused() -> None:
    other = bytes(SigningKey.generate().verify_key)
    verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW, revoked={other})
    with pytest.raises(CertificateError, match="revoked"):
        verify_certificate(VALID, NODE_PUB, [AUTH.public_key], now=NOW, revoked={NODE_PUB})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(64),
        bytes(64) + b"\xc1",  # never-used msgpack byte
        bytes(64) + msgpack.packb([1, 2, 3]),
        bytes(64) + msgpack.packb({"node_id": "n"}),
        bytes(64) + b"\x91" * 3000,  # deeply nested arrays
        bytes(64) + b"\xc6\xff\xff\xff\xff",  # bin32 claiming 4 GiB
        bytes(64) + b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        bytes(MAX_CERT_SIZE + 1),
        VALID + b"\x00",  # trailing data
        VALID[:-1],
    ],
    ids=lambda d: f"{len(d)}:{d[64:70].hex()}",
)
def test_malformed_refused(data: bytes) -> None:
    with pytest.raises(CertificateError):
        Certificate.decode(data)
    with pytest.raises(CertificateError):
        verify_certificate(data, NODE_PUB, [AUTH.public_key], now=NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"node_id": ""},
        {"node_id": 5},
        {"node_id": "x" * 257},
        {"name": b"bytes"},
        {"roles": "worker"},
        {"roles": [1]},
        {"roles": ["x"] * 33},
        {"public_key": b"x" * 31},
        {"issuer": "not bytes"},
        {"not_before": -1},
        {"not_before": True},
        {"expires": 1.5},
        {"expires": NOW},  # not after not_before
        {"extra": 1},
        {"roles": {"a": 1}},
    ],
    ids=repr,
)
def test_signed_but_malformed_fields_refused(changes: dict[str, Any]) -> None:
    cert = _resign(AUTH, _fields(AUTH, NODE_PUB, **changes))
    with pytest.raises(CertificateError, match="malformed"):
        verify_certificate(cert, NODE_PUB, [AUTH.public_key], now=NOW)


def test_missing_field_and_duplicate_key_refused() -> None:
    fields = _fields(AUTH, NODE_PUB)
    del fields["name"]
    with pytest.raises(CertificateError, match="malformed"):
        Certificate.decode(_resign(AUTH, fields))
    # A map with node_id twice: the decoder must not let the last one win silently.
    body = msgpack.packb(_fields(AUTH, NODE_PUB), use_bin_type=True)
    dup = bytes([body[0] + 1]) + body[1:] + msgpack.packb("node_id") + msgpack.packb("evil")
    with pytest.raises(CertificateError, match="malformed certificate: not valid msgpack"):
        Certificate.decode(bytes(AUTH.signing_key.sign(dup)))


# -- fuzzing ---------------------------------------------------------------------------------------


def _check_only_certificate_error(data: bytes) -> None:
    try:
        c = Certificate.decode(data)
    except CertificateError:
        return
    assert isinstance(c, Certificate)
    try:
        verify_certificate(data, NODE_PUB, [AUTH.public_key], now=NOW)
    except CertificateError:
        return
    assert data == VALID  # nothing else may pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_only_raise_certificate_error(data: bytes) -> None:
    _check_only_certificate_error(data)
    _check_only_certificate_error(bytes(64) + data)


@settings(max_examples=300, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.sampled_from(["flip", "cut", "insert"]), st.binary()),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_valid_certificate_only_raises_certificate_error(
    edits: list[tuple[int, str, bytes]],
) -> None:
    data = VALID
    for pos, op, extra in edits:
        pos %= max(len(data), 1)
        if op == "flip" and data:
            data = data[:pos] + bytes([data[pos] ^ (extra[0] if extra and extra[0] else 1)]) + data[pos + 1 :]
        elif op == "cut":
            data = data[:pos] + data[pos + 1 + len(extra) :]
        else:
            data = data[:pos] + (extra or b"\x00") + data[pos:]
    if data != VALID:
        with pytest.raises(CertificateError):
            verify_certificate(data, NODE_PUB, [AUTH.public_key], now=NOW)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=300),
    st.binary(max_size=40),
    st.lists(st.text(max_size=70), max_size=34),
    st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 10), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(
        st.sampled_from(["node_id", "public_key", "name", "roles", "not_before", "expires", "issuer", "x"]),
        _values,
        max_size=8,
    ),
    keep_valid=st.sets(st.sampled_from(["node_id", "public_key", "name", "roles", "issuer"])),
)
def test_fuzz_signed_structures_only_raise_certificate_error(
    fields: dict[str, Any], keep_valid: set[str]
) -> None:
    base = _fields(AUTH, NODE_PUB)
    fields = {**fields, **{k: base[k] for k in keep_valid}}
    cert = _resign(AUTH, fields)
    try:
        c = verify_certificate(cert, NODE_PUB, [AUTH.public_key], now=NOW)
    except CertificateError:
        return
    assert c.public_key == NODE_PUB and c.not_before - CLOCK_SKEW <= NOW < c.expires


# -- key files -------------------------------------------------------------------------------------


@posix_only
def test_authority_key_file_permissions_and_reuse(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "authority.key"
    a = Authority.load_or_create(path)
    assert path.read_bytes() == bytes(a.signing_key) and len(path.read_bytes()) == 32
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["authority.key"]  # no temp file left
    assert Authority.load_or_create(path).public_key == a.public_key


@posix_only
def test_key_files_are_private_despite_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        NodeIdentity.load_or_create(tmp_path / "n", "n", Authority.generate())
    finally:
        os.umask(old)
    assert _mode(tmp_path / "n") == 0o700
    assert _mode(tmp_path / "n" / "node.key") == 0o600
    assert _mode(tmp_path / "n" / "node.cert") == 0o600


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610])
def test_key_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "authority.key"
    Authority.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match="group or others"):
        Authority.load_or_create(path)
    assert len(path.read_bytes()) == 32  # refused, not replaced


@pytest.mark.parametrize("content", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64])
def test_key_file_of_wrong_length_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "authority.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(IdentityError, match="exactly 32 bytes"):
        Authority.load_or_create(path)
    node_dir = tmp_path / "node"
    node_dir.mkdir(mode=0o700)
    os.replace(path, node_dir / "node.key")
    with pytest.raises(IdentityError, match="exactly 32 bytes"):
        NodeIdentity.load_or_create(node_dir, "n", Authority.generate())


def test_key_path_that_is_a_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "authority.key").mkdir(mode=0o700)
    with pytest.raises(IdentityError):
        Authority.load_or_create(tmp_path / "authority.key")


# -- node identities -------------------------------------------------------------------------------


def test_node_identity_issue_and_verify_peer() -> None:
    a = NodeIdentity.issue("a", AUTH, name="Alice", roles=["worker"])
    b = NodeIdentity.issue("b", AUTH, signing_key=NODE_KEY)
    assert a.node_id == "a" and a.cert.name == "Alice" and a.cert.roles == ("worker",)
    assert b.public_key == NODE_PUB and b.trusted == frozenset({AUTH.public_key})
    assert a.verify_peer(b.public_key, b.certificate) == b.cert
    with pytest.raises(CertificateError, match="another key"):
        a.verify_peer(a.public_key, b.certificate)
    a.revoked.add(b.public_key)  # revocation takes effect on the next call
    with pytest.raises(CertificateError, match="revoked"):
        a.verify_peer(b.public_key, b.certificate)
    assert "a" in repr(a) and bytes(a.signing_key).hex() not in repr(a)


def test_node_identity_refuses_a_certificate_for_another_key() -> None:
    with pytest.raises(ValueError, match="another key"):
        NodeIdentity(SigningKey.generate(), VALID, [AUTH.public_key])


def test_load_or_create_is_idempotent(tmp_path: Path) -> None:
    auth = Authority.generate()
    first = NodeIdentity.load_or_create(tmp_path / "n1", "n1", auth, roles=["w"], now=NOW)
    again = NodeIdentity.load_or_create(tmp_path / "n1", "n1", auth, roles=["w"], now=NOW + 1000)
    assert bytes(again.signing_key) == bytes(first.signing_key)
    assert again.certificate == first.certificate  # plenty of lifetime left: reused
    assert (tmp_path / "n1" / "node.cert").read_bytes() == first.certificate
    assert sorted(p.name for p in (tmp_path / "n1").iterdir()) == ["node.cert", "node.key"]


def test_load_or_create_reissues_expired_or_stale_certificates(tmp_path: Path) -> None:
    auth = Authority.generate()
    d = tmp_path / "n1"
    first = NodeIdentity.load_or_create(d, "n1", auth, ttl=1000, now=NOW)
    # Past half its lifetime: re-issued, same key.
    renewed = NodeIdentity.load_or_create(d, "n1", auth, ttl=1000, now=NOW + 501)
    assert renewed.certificate != first.certificate
    assert bytes(renewed.signing_key) == bytes(first.signing_key)
    assert renewed.cert.not_before == NOW + 501
    assert (d / "node.cert").read_bytes() == renewed.certificate
    # Expired outright (written by hand): re-issued.
    (d / "node.cert").write_bytes(auth.issue("n1", renewed.public_key, ttl=10, now=NOW))
    fresh = NodeIdentity.load_or_create(d, "n1", auth, now=NOW + 100)
    assert fresh.cert.expires == NOW + 100 + DEFAULT_CERT_TTL
    verify_certificate(fresh.certificate, fresh.public_key, fresh.trusted, now=NOW + 100)


@pytest.mark.parametrize(
    "change", ["authority", "node_id", "roles", "garbage", "foreign_key", "too_big", "missing"]
)
def test_load_or_create_reissues_a_certificate_that_does_not_fit(tmp_path: Path, change: str) -> None:
    auth = Authority.generate()
    d = tmp_path / "n1"
    first = NodeIdentity.load_or_create(d, "n1", auth, now=NOW)
    kwargs: dict[str, Any] = {}
    node_id = "n1"
    if change == "authority":
        auth = Authority.generate()
    elif change == "node_id":
        node_id = "n2"
    elif change == "roles":
        kwargs["roles"] = ["admin"]
    elif change == "garbage":
        (d / "node.cert").write_bytes(b"garbage")
    elif change == "foreign_key":
        (d / "node.cert").write_bytes(auth.issue("n1", NODE_PUB, now=NOW))
    elif change == "too_big":
        (d / "node.cert").write_bytes(first.certificate + bytes(MAX_CERT_SIZE))
    else:
        (d / "node.cert").unlink()
    again = NodeIdentity.load_or_create(d, node_id, auth, now=NOW + 1, **kwargs)
    assert bytes(again.signing_key) == bytes(first.signing_key)
    assert again.certificate != first.certificate
    assert (d / "node.cert").read_bytes() == again.certificate
    assert verify_certificate(again.certificate, again.public_key, [auth.public_key], now=NOW + 1)


# -- dev identities --------------------------------------------------------------------------------


def test_dev_identity_same_home_trusts_different_home_does_not(tmp_path: Path) -> None:
    a = dev_identity("alpha", tmp_path / "home1")
    b = dev_identity("beta", tmp_path / "home1")
    c = dev_identity("gamma", tmp_path / "home2")
    assert a.verify_peer(b.public_key, b.certificate).node_id == "beta"
    assert b.verify_peer(a.public_key, a.certificate).node_id == "alpha"
    with pytest.raises(CertificateError, match="foreign authority"):
        a.verify_peer(c.public_key, c.certificate)
    with pytest.raises(CertificateError, match="foreign authority"):
        c.verify_peer(a.public_key, a.certificate)
    again = dev_identity("alpha", tmp_path / "home1")
    assert again.public_key == a.public_key and again.certificate == a.certificate


@posix_only
def test_dev_identity_layout_and_modes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    dev_identity("n.1_x-y", home)
    assert _mode(home) == 0o700 and _mode(home / "authority.key") == 0o600
    assert _mode(home / "nodes") == 0o700 and _mode(home / "nodes" / "n.1_x-y") == 0o700
    assert sorted(p.name for p in (home / "nodes" / "n.1_x-y").iterdir()) == ["node.cert", "node.key"]


def test_dev_identity_home_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIMICRO_HOME", str(tmp_path / "envhome"))
    a = dev_identity("alpha")
    assert (tmp_path / "envhome" / "authority.key").exists()
    assert (tmp_path / "envhome" / "nodes" / "alpha" / "node.key").exists()
    b = dev_identity("beta", tmp_path / "envhome")
    assert a.verify_peer(b.public_key, b.certificate).node_id == "beta"


@pytest.mark.parametrize("node_id", ["", ".", "..", "../x", "a/b", "a\\b", "x" * 129, "é", "a b", "a\x00"])
def test_dev_identity_refuses_bad_node_ids(tmp_path: Path, node_id: str) -> None:
    with pytest.raises(ValueError, match="node_id"):
        dev_identity(node_id, tmp_path)
    assert not (tmp_path / "nodes").exists()


# -- the secure handshake --------------------------------------------------------------------------


def _handshake(a: NodeIdentity, b: NodeIdentity) -> tuple[SecureSession, SecureSession]:
    init = SecureHandshake.initiator(a.signing_key, a.certificate, a.verify_peer)
    resp = SecureHandshake.responder(b.signing_key, b.certificate, b.verify_peer)
    m2, done = resp.receive(init.start())
    assert not done
    m3, done = init.receive(m2)
    assert done
    out, done = resp.receive(m3)
    assert done and out == b""
    return init.result(), resp.result()


def test_handshake_between_nodes_of_one_authority() -> None:
    auth = Authority.generate()
    a = NodeIdentity.issue("a", auth, roles=["worker"])
    b = NodeIdentity.issue("b", auth)
    sa, sb = _handshake(a, b)
    assert sa.peer_id_key == b.public_key and sa.peer_info == b.cert
    assert sb.peer_id_key == a.public_key and sb.peer_info == a.cert
    assert isinstance(sb.peer_info, Certificate) and sb.peer_info.roles == ("worker",)
    assert sb.open(sa.seal(b"hello")) == b"hello"


def test_handshake_with_dev_identities(tmp_path: Path) -> None:
    sa, _ = _handshake(dev_identity("a", tmp_path), dev_identity("b", tmp_path))
    assert sa.peer_info.node_id == "b"


def test_handshake_refuses_a_foreign_responder() -> None:
    a = NodeIdentity.issue("a", Authority.generate())
    b = NodeIdentity.issue("b", Authority.generate())
    init = SecureHandshake.initiator(a.signing_key, a.certificate, a.verify_peer)
    resp = SecureHandshake.responder(b.signing_key, b.certificate, b.verify_peer)
    m2, _ = resp.receive(init.start())
    with pytest.raises(HandshakeError, match="foreign authority"):
        init.receive(m2)  # the initiator never reveals its identity


def test_handshake_refuses_a_foreign_initiator() -> None:
    auth = Authority.generate()
    a = NodeIdentity.issue("a", Authority.generate())
    b = NodeIdentity.issue("b", auth)
    # The initiator trusts the responder's authority, but not the other way round.
    a = NodeIdentity(a.signing_key, a.certificate, [auth.public_key])
    with pytest.raises(HandshakeError, match="foreign authority"):
        _handshake(a, b)


def test_handshake_refuses_an_expired_certificate() -> None:
    auth = Authority.generate()
    a = NodeIdentity.issue("a", auth)
    b = NodeIdentity.issue("b", auth, ttl=60, now=time.time() - 3600)
    with pytest.raises(HandshakeError, match="expired"):
        _handshake(a, b)
    with pytest.raises(HandshakeError, match="expired"):
        _handshake(b, a)


def test_handshake_refuses_a_stolen_certificate() -> None:
    """Presenting someone else's certificate with your own key fails: the cert names their key."""
    auth = Authority.generate()
    a = NodeIdentity.issue("a", auth)
    b = NodeIdentity.issue("b", auth)
    thief = NodeIdentity.issue("thief", auth)
    thief.certificate = b.certificate  # bypass the constructor's own check
    with pytest.raises(HandshakeError, match="another key"):
        _handshake(a, thief)


def test_handshake_refuses_a_revoked_peer() -> None:
    auth = Authority.generate()
    a = NodeIdentity.issue("a", auth)
    b = NodeIdentity.issue("b", auth)
    _handshake(a, b)
    a.revoked.add(b.public_key)
    with pytest.raises(HandshakeError, match="revoked"):
        _handshake(a, b)
