"""The authenticated secure channel: identities, refusals, tampering, rekeying, fuzzing."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from trimicro.mailbox.secure.channel import (
    DEFAULT_PROLOGUE,
    DEFAULT_REKEY_INTERVAL,
    MAX_PLAINTEXT,
    SIGNATURE_PREFIX,
    SecureChannelError,
    SecureHandshake,
    SecureSession,
)
from trimicro.mailbox.secure.noise import HandshakeError, HandshakeState, generate_private_key, public_key


class Node:
    """A test identity: an Ed25519 key and a 'certificate' that our verifier understands."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = SigningKey.generate()
        self.id_key = bytes(self.key.verify_key)
        self.cert = b"cert:" + name.encode() + b":" + self.id_key


def verify_peer(id_key: bytes, cert: bytes) -> dict[str, Any]:
    """Accept a cert naming ``id_key``; return what we learned about the peer."""
    prefix, name, key = cert.split(b":", 2)
    if prefix != b"cert" or key != id_key:
        raise PermissionError("certificate does not match the identity key")
    return {"name": name.decode()}


def refuse(id_key: bytes, cert: bytes) -> Any:
    raise PermissionError("not on the allow list")


def handshake_pair(
    a: Node | None = None,
    b: Node | None = None,
    **kwargs: Any,
) -> tuple[SecureHandshake, SecureHandshake]:
    a = a or Node("alice")
    b = b or Node("bob")
    return (
        SecureHandshake.initiator(a.key, a.cert, verify_peer, **kwargs),
        SecureHandshake.responder(b.key, b.cert, verify_peer, **kwargs),
    )


def run(init: SecureHandshake, resp: SecureHandshake) -> tuple[SecureSession, SecureSession]:
    m1 = init.start()
    m2, done = resp.receive(m1)
    assert not done
    m3, done = init.receive(m2)
    assert done
    out, done = resp.receive(m3)
    assert done and out == b""
    return init.result(), resp.result()


def connected(**kwargs: Any) -> tuple[SecureSession, SecureSession]:
    return run(*handshake_pair(**kwargs))


# -- success ---------------------------------------------------------------------------------------


def test_mutual_authentication() -> None:
    alice, bob = Node("alice"), Node("bob")
    init, resp = handshake_pair(alice, bob, prologue=b"trimicro/1")
    a, b = run(init, resp)
    assert init.done and resp.done
    assert a.peer_id_key == bob.id_key and a.peer_info == {"name": "bob"}
    assert b.peer_id_key == alice.id_key and b.peer_info == {"name": "alice"}
    assert a.handshake_hash == b.handshake_hash and len(a.handshake_hash) == 64
    for i in range(10):
        assert b.open(a.seal(b"ping %d" % i)) == b"ping %d" % i
        assert a.open(b.seal(b"pong %d" % i)) == b"pong %d" % i
    assert b.open(a.seal(b"")) == b""
    assert a.rekey_interval == DEFAULT_REKEY_INTERVAL == 2**20


def test_handshake_messages_are_plain_bytes_and_accept_bytearrays() -> None:
    init, resp = handshake_pair()
    m1 = init.start()
    assert len(m1) == 32  # -> e, empty payload
    m2, _ = resp.receive(bytearray(m1))
    m3, _ = init.receive(memoryview(m2))
    resp.receive(m3)
    a, b = init.result(), resp.result()
    assert b.open(bytearray(a.seal(bytearray(b"hi")))) == b"hi"


def test_identity_payload_shape() -> None:
    """What goes on the wire inside message 3, decrypted with the responder's own state."""
    alice = Node("alice")
    bob_static = generate_private_key()
    noise_resp = HandshakeState.new_responder(bob_static, prologue=DEFAULT_PROLOGUE)
    init = SecureHandshake.initiator(alice.key, alice.cert, verify_peer)
    noise_resp.read_message(init.start())
    m2 = _signed_payload(Node("bob"), noise_resp.static_public)
    m3, _ = init.receive(noise_resp.write_message(m2))
    fields = msgpack.unpackb(noise_resp.read_message(m3))
    assert set(fields) == {"id_key", "sig", "cert"}
    assert fields["id_key"] == alice.id_key and fields["cert"] == alice.cert
    alice.key.verify_key.verify(SIGNATURE_PREFIX + noise_resp.remote_static, fields["sig"])


def test_prologue_mismatch_fails() -> None:
    init, _ = handshake_pair(prologue=b"trimicro/1")
    _, resp = handshake_pair(prologue=b"trimicro/2")
    m2, _ = resp.receive(init.start())
    with pytest.raises(HandshakeError, match="bad MAC"):
        init.receive(m2)


# -- identity refusals -----------------------------------------------------------------------------


def _signed_payload(node: Node, static_public: bytes, *, signer: SigningKey | None = None) -> bytes:
    sig = (signer or node.key).sign(SIGNATURE_PREFIX + static_public).signature
    return bytes(msgpack.packb({"id_key": node.id_key, "sig": sig, "cert": node.cert}))


def _forged_responder_reply(payload_for: Any) -> tuple[SecureHandshake, bytes]:
    """A genuine initiator, and message 2 from a raw Noise responder carrying a crafted payload."""
    alice = Node("alice")
    init = SecureHandshake.initiator(alice.key, alice.cert, verify_peer)
    noise_resp = HandshakeState.new_responder(generate_private_key(), prologue=DEFAULT_PROLOGUE)
    noise_resp.read_message(init.start())
    return init, noise_resp.write_message(payload_for(noise_resp.static_public))


def test_genuine_raw_responder_is_accepted() -> None:
    bob = Node("bob")
    init, m2 = _forged_responder_reply(lambda static: _signed_payload(bob, static))
    _, done = init.receive(m2)
    assert done and init.result().peer_info == {"name": "bob"}


def test_foreign_key_signature_refused() -> None:
    """Mallory signs with her own key but claims Bob's identity key and certificate."""
    bob, mallory = Node("bob"), Node("mallory")
    init, m2 = _forged_responder_reply(lambda static: _signed_payload(bob, static, signer=mallory.key))
    with pytest.raises(HandshakeError, match="signature"):
        init.receive(m2)
    assert not init.done


def test_signature_over_another_static_key_refused() -> None:
    """Bob's genuine proof for some other Noise key (say, replayed from another session)."""
    bob = Node("bob")
    other_static = public_key(generate_private_key())
    init, m2 = _forged_responder_reply(lambda static: _signed_payload(bob, other_static))
    with pytest.raises(HandshakeError, match="signature"):
        init.receive(m2)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # reserved msgpack byte
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"id_key": bytes(32), "sig": bytes(64)}),
        msgpack.packb({"id_key": bytes(32), "sig": bytes(64), "cert": b"", "extra": 1}),
        msgpack.packb({"id_key": "text", "sig": bytes(64), "cert": b""}),
        msgpack.packb({"id_key": bytes(31), "sig": bytes(64), "cert": b""}),
        msgpack.packb({"id_key": bytes(32), "sig": bytes(63), "cert": b""}),
        msgpack.packb({"id_key": bytes(32), "sig": bytes(64), "cert": b""}),
        msgpack.packb({1: b"x"}),
        b"\x91" * 5000,  # deeply nested arrays
    ],
    ids=lambda p: p[:12].hex() or "empty",
)
def test_malformed_identity_payload_refused(payload: bytes) -> None:
    init, m2 = _forged_responder_reply(lambda static: payload)
    with pytest.raises(HandshakeError):
        init.receive(m2)


def test_initiator_refuses_responder_cert() -> None:
    alice, bob = Node("alice"), Node("bob")
    init = SecureHandshake.initiator(alice.key, alice.cert, refuse)
    resp = SecureHandshake.responder(bob.key, bob.cert, verify_peer)
    m2, _ = resp.receive(init.start())
    with pytest.raises(HandshakeError, match=r"certificate refused.*allow list"):
        init.receive(m2)
    with pytest.raises(HandshakeError, match="already failed"):
        init.receive(m2)


def test_responder_refuses_initiator_cert() -> None:
    alice, bob = Node("alice"), Node("bob")
    init = SecureHandshake.initiator(alice.key, alice.cert, verify_peer)
    resp = SecureHandshake.responder(bob.key, bob.cert, refuse)
    m2, _ = resp.receive(init.start())
    m3, done = init.receive(m2)
    assert done  # the initiator cannot know yet; the responder drops the connection
    with pytest.raises(HandshakeError, match="certificate refused"):
        resp.receive(m3)
    with pytest.raises(HandshakeError, match="not complete"):
        resp.result()


def test_cert_naming_another_key_refused() -> None:
    alice, bob = Node("alice"), Node("bob")
    bob.cert = alice.cert  # Bob presents Alice's certificate with his own key
    init, resp = handshake_pair(alice, bob)
    m2, _ = resp.receive(init.start())
    with pytest.raises(HandshakeError, match="certificate refused"):
        init.receive(m2)


# -- tampering, replay, truncation (handshake) -----------------------------------------------------


def _flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


@pytest.mark.parametrize("pos", [0, 40, 90, -1])
def test_tampered_message_2(pos: int) -> None:
    init, resp = handshake_pair()
    m2, _ = resp.receive(init.start())
    with pytest.raises(HandshakeError):
        init.receive(_flip(m2, pos))


@pytest.mark.parametrize("pos", [0, 50, -1])
def test_tampered_message_3(pos: int) -> None:
    init, resp = handshake_pair()
    m2, _ = resp.receive(init.start())
    m3, _ = init.receive(m2)
    with pytest.raises(HandshakeError, match="bad MAC"):
        resp.receive(_flip(m3, pos))


def test_tampered_message_1() -> None:
    init, resp = handshake_pair()
    m2, _ = resp.receive(_flip(init.start(), 5))
    with pytest.raises(HandshakeError):
        init.receive(m2)


def test_message_1_with_payload_refused() -> None:
    _, resp = handshake_pair()
    with pytest.raises(HandshakeError, match="empty payload"):
        resp.receive(public_key(generate_private_key()) + b"early data")


def test_replayed_messages_refused() -> None:
    init, resp = handshake_pair()
    m1 = init.start()
    m2, _ = resp.receive(m1)
    with pytest.raises(HandshakeError):
        resp.receive(m1)  # message 1 again where message 3 belongs
    init2, resp2 = handshake_pair()
    m1 = init2.start()
    m2, _ = resp2.receive(m1)
    m3, _ = init2.receive(m2)
    resp2.receive(m3)
    with pytest.raises(HandshakeError, match="already complete"):
        resp2.receive(m3)
    with pytest.raises(HandshakeError, match="already complete"):
        init2.receive(m2)


def test_replay_of_a_whole_initiator_run_into_a_fresh_responder() -> None:
    """Recorded messages 1 and 3 do not authenticate against a new responder ephemeral."""
    alice, bob = Node("alice"), Node("bob")
    init, resp = handshake_pair(alice, bob)
    m1 = init.start()
    m2, _ = resp.receive(m1)
    m3, _ = init.receive(m2)
    resp.receive(m3)
    fresh = SecureHandshake.responder(bob.key, bob.cert, verify_peer)
    fresh.receive(m1)  # message 1 is unauthenticated: accepted, as in any XX responder
    with pytest.raises(HandshakeError, match="bad MAC"):
        fresh.receive(m3)


@pytest.mark.parametrize("cut", [0, 31, 95, -1])
def test_truncated_handshake_message(cut: int) -> None:
    init, resp = handshake_pair()
    m2, _ = resp.receive(init.start())
    with pytest.raises(HandshakeError):
        init.receive(m2[:cut])


def test_api_misuse() -> None:
    init, resp = handshake_pair()
    with pytest.raises(HandshakeError, match="start"):
        init.receive(b"x" * 100)
    with pytest.raises(HandshakeError, match="initiator"):
        resp.start()
    init.start()
    with pytest.raises(HandshakeError, match="twice"):
        init.start()
    with pytest.raises(HandshakeError, match="not complete"):
        init.result()
    assert init.is_initiator and not resp.is_initiator
    with pytest.raises(ValueError, match="too large"):
        SecureHandshake.initiator(SigningKey.generate(), bytes(70000), verify_peer)
    with pytest.raises(ValueError, match="rekey_interval"):
        SecureHandshake.initiator(SigningKey.generate(), b"", verify_peer, rekey_interval=0)


# -- transport -------------------------------------------------------------------------------------


def test_tampered_transport_message() -> None:
    a, b = connected()
    ct = a.seal(b"important")
    with pytest.raises(SecureChannelError, match="bad MAC"):
        b.open(_flip(ct, 0))
    with pytest.raises(SecureChannelError, match="closed after an earlier failure"):
        b.open(ct)  # the receive direction stays closed once it has been attacked
    assert a.open(b.seal(b"other direction still fine")) == b"other direction still fine"


def test_reordered_transport_messages() -> None:
    a, b = connected()
    a.seal(b"first")
    second = a.seal(b"second")
    with pytest.raises(SecureChannelError):
        b.open(second)


def test_replayed_transport_message() -> None:
    a, b = connected()
    ct = a.seal(b"once")
    assert b.open(ct) == b"once"
    with pytest.raises(SecureChannelError):
        b.open(ct)


def test_reflected_transport_message() -> None:
    """A message sent by a cannot be bounced back to a: the two directions use different keys."""
    a, _ = connected()
    with pytest.raises(SecureChannelError):
        a.open(a.seal(b"echo"))


@pytest.mark.parametrize("cut", [0, 15, 16, -1])
def test_truncated_transport_message(cut: int) -> None:
    a, b = connected()
    with pytest.raises(SecureChannelError):
        b.open(a.seal(b"some payload")[:cut])


def test_message_size_limit_and_chunks() -> None:
    a, b = connected()
    assert len(a.seal(bytes(MAX_PLAINTEXT))) == 65535
    with pytest.raises(SecureChannelError, match="seal_chunks"):
        a.seal(bytes(MAX_PLAINTEXT + 1))
    with pytest.raises(SecureChannelError):
        b.open(bytes(65536))
    a, b = connected()
    data = bytes(range(256)) * 1000  # 256000 bytes: four chunks
    chunks = a.seal_chunks(data)
    assert len(chunks) == 4 and all(len(c) <= 65535 for c in chunks)
    assert b"".join(b.open(c) for c in chunks) == data
    assert a.seal_chunks(b"") == []


def test_rekey_keeps_working_across_the_boundary() -> None:
    a, b = connected(rekey_interval=3)
    for i in range(20):
        assert b.open(a.seal(b"a%d" % i)) == b"a%d" % i
        if i % 2:
            assert a.open(b.seal(b"b%d" % i)) == b"b%d" % i
    assert a.send.n == b.recv.n == 20


def test_rekey_really_changes_the_key() -> None:
    """Ends that disagree on the interval fail exactly at the first boundary."""
    alice, bob = Node("alice"), Node("bob")
    init = SecureHandshake.initiator(alice.key, alice.cert, verify_peer, rekey_interval=3)
    resp = SecureHandshake.responder(bob.key, bob.cert, verify_peer, rekey_interval=4)
    a, b = run(init, resp)
    for i in range(3):
        assert b.open(a.seal(b"%d" % i)) == b"%d" % i
    with pytest.raises(SecureChannelError, match="bad MAC"):
        b.open(a.seal(b"after a's rekey"))


def test_nonce_exhaustion_is_refused() -> None:
    a, _ = connected()
    a.send.set_nonce(2**64 - 1)
    with pytest.raises(SecureChannelError, match="nonce exhausted"):
        a.seal(b"too late")


# -- fuzzing ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(st.binary(max_size=400), st.binary(min_size=32, max_size=32)))
def test_fuzz_fresh_responder_only_raises_handshake_error(data: bytes) -> None:
    _, resp = handshake_pair()
    try:
        out, done = resp.receive(data)
    except HandshakeError:
        return
    assert not done and len(out) > 96


_INIT_FOR_FUZZ = Node("fuzz-initiator")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_fuzz_responder_message_3_only_raises_handshake_error(data: bytes) -> None:
    init = SecureHandshake.initiator(_INIT_FOR_FUZZ.key, _INIT_FOR_FUZZ.cert, verify_peer)
    _, resp = handshake_pair()
    resp.receive(init.start())
    with pytest.raises(HandshakeError):
        resp.receive(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400))
def test_fuzz_initiator_only_raises_handshake_error(data: bytes) -> None:
    init, _ = handshake_pair()
    init.start()
    with pytest.raises(HandshakeError):
        init.receive(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_fuzz_open_only_raises_secure_channel_error(data: bytes) -> None:
    _, b = connected()
    with pytest.raises(SecureChannelError):
        b.open(data)
