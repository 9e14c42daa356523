"""The message envelope: wire layout, round trips, strict validation, hostile input."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.mailbox.envelope import (
    PROTOCOL_VERSION,
    Envelope,
    Kind,
    MalformedEnvelope,
    UnknownKind,
    UnsupportedVersion,
    decode_envelope,
    encode_envelope,
    encode_parts,
    ref_fields,
)
from trimicro.mailbox.errors import BadRequest, NotFound, error_from_fields
from trimicro.mailbox.framing import FrameDecoder, ProtocolError, encode_frame
from trimicro.mailbox.refs import ActorRef

VALID: list[Any] = [
    1,
    2,
    7,
    ["n1", "/user/a", 3],
    None,
    "Greeter.Hello",
    "application/json",
    {},
    0,
    b"",
]


def wire(**changes: Any) -> list[Any]:
    """The valid field list above with some fields replaced (by name)."""
    names = ["version", "kind", "corr", "target", "sender", "endpoint", "content_type"]
    names += ["headers", "deadline_ms", "body"]
    fields = list(VALID)
    for name, value in changes.items():
        fields[names.index(name)] = value
    return fields


def packed(fields: Any) -> bytes:
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


# --- layout -----------------------------------------------------------------------------------


def test_kinds_and_version_are_the_specified_numbers() -> None:
    assert PROTOCOL_VERSION == 1
    assert {k.name: int(k) for k in Kind} == {
        "TELL": 1,
        "ASK": 2,
        "REPLY": 3,
        "ERROR": 4,
        "CANCEL": 5,
        "STREAM_OPEN": 6,
        "STREAM_DATA": 7,
        "STREAM_CREDIT": 8,
        "STREAM_CLOSE": 9,
        "SYSTEM": 10,
    }


def test_defaults() -> None:
    env = Envelope(Kind.TELL)
    assert (env.corr, env.target, env.sender, env.endpoint) == (0, None, None, "")
    assert env.content_type == "application/msgpack"
    assert (env.headers, env.deadline_ms, env.body) == ({}, 0, b"")


def test_minimal_tell_has_these_exact_bytes() -> None:
    # A golden vector for other-language clients (see docs/protocol.md).
    assert encode_envelope(Envelope(Kind.TELL)) == (
        b"\x9a\x01\x01\x00\xc0\xc0\xa0\xb3application/msgpack\x80\x00\xc4\x00"
    )


def test_wire_form_is_the_documented_array() -> None:
    env = Envelope(
        Kind.ASK,
        corr=7,
        target=ActorRef("n1", "/user/a", 3),
        sender=ActorRef("n2", "/user/b", 0),
        endpoint="Greeter.Hello",
        content_type="application/json",
        headers={"trace-id": "abc"},
        deadline_ms=1500,
        body=b'{"name":"x"}',
    )
    fields = msgpack.unpackb(encode_envelope(env), raw=False)
    assert fields == [
        1,
        2,
        7,
        ["n1", "/user/a", 3],
        ["n2", "/user/b", 0],
        "Greeter.Hello",
        "application/json",
        {"trace-id": "abc"},
        1500,
        b'{"name":"x"}',
    ]
    # body is msgpack bin (not str) so that any codec's bytes survive.
    assert encode_envelope(env).endswith(b"\xc4\x0c" + b'{"name":"x"}')


ASK_FRAME = bytes.fromhex(
    "00 00 00 59 9a 01 02 01 93 a2 6e 32 ad 2f 75 73 65 72 2f 67 72 65 65 74 65 72 07 93 a2 6e"
    "31 aa 2f 74 65 6d 70 2f 61 73 6b 31 00 ad 47 72 65 65 74 65 72 2e 48 65 6c 6c 6f b3 61 70"
    "70 6c 69 63 61 74 69 6f 6e 2f 6d 73 67 70 61 63 6b 80 cd 07 d0 c4 0a 81 a4 6e 61 6d 65 a3"
    "41 6e 6e"
)
ERROR_FRAME = bytes.fromhex(
    "00 00 00 67 9a 01 04 01 93 a2 6e 31 aa 2f 74 65 6d 70 2f 61 73 6b 31 00 c0 a0 b3 61 70 70"
    "6c 69 63 61 74 69 6f 6e 2f 6d 73 67 70 61 63 6b 80 00 c4 39 84 a2 69 64 a7 67 72 65 65 74"
    "65 72 a4 63 6f 64 65 cd 01 94 a6 64 65 74 61 69 6c ac 6e 6f 20 73 75 63 68 20 75 73 65 72"
    "a6 73 74 61 74 75 73 a9 4e 6f 74 20 46 6f 75 6e 64"
)


def test_documented_examples_match() -> None:
    # The hex vectors printed in docs/protocol.md section 5.
    ask = Envelope(
        Kind.ASK,
        corr=1,
        target=ActorRef("n2", "/user/greeter", 7),
        sender=ActorRef("n1", "/temp/ask1", 0),
        endpoint="Greeter.Hello",
        deadline_ms=2000,
        body=packed({"name": "Ann"}),
    )
    error = NotFound("no such user", id="greeter")
    answer = Envelope(Kind.ERROR, corr=1, target=ask.sender, body=packed(error.to_fields()))
    assert encode_frame(encode_envelope(ask)) == ASK_FRAME
    assert encode_frame(encode_envelope(answer)) == ERROR_FRAME
    dec = FrameDecoder()
    dec.feed(ASK_FRAME + ERROR_FRAME)
    assert [decode_envelope(f) for f in dec.frames()] == [ask, answer]
    fields = msgpack.unpackb(answer.body)
    assert error_from_fields(fields) == error


def test_binding_is_not_part_of_the_wire_form() -> None:
    ref = ActorRef("n1", "/user/a", 3)
    bound = Envelope(Kind.TELL, target=ref.bind(object()))
    assert encode_envelope(bound) == encode_envelope(Envelope(Kind.TELL, target=ref))
    decoded = decode_envelope(encode_envelope(bound))
    assert decoded.target == ref
    assert decoded.target is not None and decoded.target.binding is None


def test_envelopes_compare_by_value() -> None:
    env = Envelope(Kind.TELL, headers={"a": "b"})
    assert env == Envelope(Kind.TELL, headers={"a": "b"})
    assert env != Envelope(Kind.TELL, corr=1, headers={"a": "b"})


# --- round trip -------------------------------------------------------------------------------

refs = st.none() | st.builds(
    ActorRef, st.text(max_size=20), st.text(max_size=40), st.integers(-(2**63), 2**64 - 1)
)
envelopes = st.builds(
    Envelope,
    kind=st.sampled_from(Kind),
    corr=st.integers(0, 2**64 - 1),
    target=refs,
    sender=refs,
    endpoint=st.text(max_size=40),
    content_type=st.sampled_from(["application/msgpack", "application/cbor", "text/plain", ""]),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=8),
    deadline_ms=st.integers(0, 2**64 - 1),
    body=st.binary(max_size=200),
)


@settings(max_examples=300)
@given(envelopes)
def test_round_trip(env: Envelope) -> None:
    data = encode_envelope(env)
    assert type(data) is bytes
    back = decode_envelope(data)
    assert back == env
    assert type(back.kind) is Kind
    assert decode_envelope(bytearray(data)) == env
    assert decode_envelope(memoryview(data)) == env


@settings(max_examples=300)
@given(envelopes)
def test_parts_encode_to_the_documented_array(env: Envelope) -> None:
    """The hot paths encode fields without an Envelope: the bytes must be the wire form itself
    (the documented array, packed independently), so peers cannot tell the two apart."""
    target, sender = ref_fields(env.target), ref_fields(env.sender)
    data = encode_parts(
        int(env.kind),
        env.corr,
        target,
        sender,
        env.endpoint,
        env.content_type,
        env.headers,
        env.deadline_ms,
        env.body,
    )
    fields = [PROTOCOL_VERSION, int(env.kind), env.corr, target, sender, env.endpoint, env.content_type]
    assert data == packed([*fields, env.headers, env.deadline_ms, env.body])
    assert data == encode_envelope(env)
    assert decode_envelope(data) == env


# --- validation -------------------------------------------------------------------------------


def test_valid_reference_vector_decodes() -> None:
    env = decode_envelope(packed(VALID))
    assert env == Envelope(
        Kind.ASK, 7, ActorRef("n1", "/user/a", 3), None, "Greeter.Hello", "application/json"
    )


@pytest.mark.parametrize("version", [0, 2, 255, 2**64 - 1, -1])
def test_other_versions_are_unsupported(version: int) -> None:
    with pytest.raises(UnsupportedVersion):
        decode_envelope(packed(wire(version=version)))


def test_a_future_layout_is_reported_as_unsupported_version_not_garbage() -> None:
    with pytest.raises(UnsupportedVersion):
        decode_envelope(packed([2, *VALID[1:], "new", [1, 2, 3], {"x": [1] * 20}]))
    with pytest.raises(UnsupportedVersion):
        decode_envelope(packed([2]))


@pytest.mark.parametrize("kind", [0, 11, 255, 2**32])
def test_unknown_kinds_are_refused(kind: int) -> None:
    with pytest.raises(UnknownKind):
        decode_envelope(packed(wire(kind=kind)))


BAD_FIELDS: list[tuple[str, Any]] = [
    ("version", "1"),
    ("version", True),
    ("version", None),
    ("kind", True),
    ("kind", "ASK"),
    ("kind", 2.0),
    ("corr", -1),
    ("corr", "7"),
    ("corr", None),
    ("corr", False),
    ("target", ["n1", "/user/a"]),
    ("target", ["n1", "/user/a", "3"]),
    ("target", ["n1", b"/user/a", 3]),
    ("target", ["n1", "/user/a", 3, 4]),
    ("target", "n1/user/a"),
    ("target", ["n1", "/user/a", True]),
    ("sender", {}),
    ("sender", 0),
    ("endpoint", None),
    ("endpoint", b"Greeter.Hello"),
    ("content_type", None),
    ("content_type", 5),
    ("headers", None),
    ("headers", []),
    ("headers", {"a": 1}),
    ("headers", {"a": b"b"}),
    ("headers", {b"a": "b"}),
    ("headers", {"a": None}),
    ("deadline_ms", -5),
    ("deadline_ms", 1.5),
    ("deadline_ms", None),
    ("body", "text"),
    ("body", None),
    ("body", [1, 2]),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_wrong_field_types_are_malformed(field: str, value: Any) -> None:
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(wire(**{field: value})))


@pytest.mark.parametrize("count", [0, 1, 9, 11])
def test_wrong_field_count_is_malformed(count: int) -> None:
    fields = (VALID * 2)[:count]
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(fields))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x9a\x01",  # truncated array
        packed(VALID) + b"\x00",  # trailing bytes
        packed(VALID)[:-1],
        packed({"version": 1}),
        packed(1),
        packed(None),
        packed(tuple(VALID)) + packed(VALID),
        b"\xd4\x05\x00",  # an ext type
        b"\xd6\xff\x00\x00\x00\x00",  # the timestamp ext
        b"\xa2\xff\xfe",  # invalid UTF-8 str
        b"\x91" * 5000 + b"\x01",  # deep nesting
    ],
)
def test_malformed_input_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        decode_envelope(data)


def test_header_limits() -> None:
    many = {f"k{i}": "v" for i in range(64)}
    assert decode_envelope(packed(wire(headers=many))).headers == many
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(wire(headers={**many, "one": "more"})))
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(wire(headers={"a": "b"})), max_headers=0)

    exactly = {"k": "v" * (8 * 1024 - 1)}
    assert decode_envelope(packed(wire(headers=exactly))).headers == exactly
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(wire(headers={"k": "v" * 8 * 1024})))
    # Counted in UTF-8 bytes, not characters.
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(wire(headers={"k": "é" * 4096})))
    assert decode_envelope(packed(wire(headers={"k": "é" * 4095})), max_header_bytes=8191)
    with pytest.raises(MalformedEnvelope):
        decode_envelope(packed(wire(headers={"ab": "cd"})), max_header_bytes=3)


def test_errors_are_bad_requests() -> None:
    for cls in (UnsupportedVersion, UnknownKind, MalformedEnvelope):
        assert issubclass(cls, ProtocolError)
        assert issubclass(cls, BadRequest)
    with pytest.raises(UnknownKind) as info:
        decode_envelope(packed(wire(kind=99)))
    assert info.value.code == 400
    assert "99" in info.value.detail


# --- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\x80\x00\x00\x00",  # array claiming 2**31 elements
        b"\xdf\x80\x00\x00\x00",  # map claiming 2**31 entries
        b"\xdb\x80\x00\x00\x00",  # str claiming 2**31 bytes
        b"\xc6\x80\x00\x00\x00",  # bin claiming 2**31 bytes
        b"\xc9\x80\x00\x00\x00\x05",  # ext claiming 2**31 bytes
        b"\x9a\x01\x01\x00\xc0\xc0\xa0\xa0\xdf\x7f\xff\xff\xff",  # headers map claiming 2**31-1
        b"\x9a\x01\x01\x00\xc0\xc0\xa0\xa0\x80\x00\xc6\x7f\xff\xff\xff",  # body claiming 2 GiB
    ],
)
def test_huge_length_claims_are_refused_without_allocating(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError):
            decode_envelope(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_array_claiming_2_to_the_31_elements_is_malformed() -> None:
    with pytest.raises(MalformedEnvelope):
        decode_envelope(b"\xdd\x80\x00\x00\x00")


def _outcome(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except ProtocolError:
        return
    assert type(env) is Envelope
    assert encode_envelope(env) == data or decode_envelope(encode_envelope(env)) == env


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _outcome(data)


@settings(max_examples=500)
@given(st.binary(min_size=0, max_size=10))
def test_fuzz_bytes_after_a_valid_prefix(tail: bytes) -> None:
    _outcome(b"\x9a\x01" + tail)
    _outcome(packed(VALID)[:20] + tail)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.binary(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(st.dictionaries(st.integers(0, 9), msgpack_values, min_size=1, max_size=3))
def test_fuzz_valid_layout_with_random_fields(replaced: dict[int, Any]) -> None:
    fields = list(VALID)
    for index, value in replaced.items():
        fields[index] = value
    _outcome(packed(fields))


@settings(max_examples=200)
@given(st.lists(msgpack_values, max_size=12))
def test_fuzz_arbitrary_arrays(fields: list[Any]) -> None:
    _outcome(packed(fields))


@settings(max_examples=500)
@given(envelopes, st.integers(min_value=0), st.integers(0, 255))
def test_fuzz_mutated_valid_envelopes(env: Envelope, where: int, byte: int) -> None:
    data = bytearray(encode_envelope(env))
    data[where % len(data)] = byte
    _outcome(bytes(data))
    _outcome(bytes(data[: where % len(data)]))
