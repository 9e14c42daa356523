"""Codecs, limits and the type registry: round trips, refusals, and nothing but DecodeError."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import tracemalloc
from typing import Any

import attrs
import cbor2
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trimicro.mailbox.codec import (
    CBOR,
    CBOR_TYPE_TAG,
    JSON,
    MSGPACK,
    MSGPACK_EXT_CODE,
    CborCodec,
    Codec,
    CodecSet,
    DecodeError,
    EncodeError,
    JsonCodec,
    MsgpackCodec,
    TypeRegistry,
    UnsupportedContentType,
    cbor_prescan,
    default_registry,
)
from trimicro.mailbox.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    error_from_fields,
)
from trimicro.mailbox.limits import DEFAULT_LIMITS, DecodeLimits
from trimicro.mailbox.refs import ActorRef

settings.register_profile(
    "codecs", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.load_profile("codecs")

# --------------------------------------------------------------------------------------------
# message classes and registry
# --------------------------------------------------------------------------------------------


@attrs.frozen
class Point:
    x: int
    y: int = 0


@attrs.define
class Envelope:
    to: ActorRef
    body: Any
    points: list[Point] = attrs.Factory(list)
    meta: dict[str, Any] = attrs.Factory(dict)
    error: MicroError | None = None
    _secret: bytes = b""
    derived: int = attrs.field(init=False, default=7)


@attrs.frozen
class Chain:
    child: Any = None


@attrs.frozen
class Positive:
    n: int = attrs.field(validator=attrs.validators.gt(0))


def make_registry() -> TypeRegistry:
    registry = default_registry()
    registry.register(Point)
    registry.register(Envelope, "test.Envelope")
    registry.message("chain")(Chain)
    registry.register(Positive)
    return registry


REGISTRY = make_registry()
CODECS = CodecSet.default(REGISTRY)
ALL = [MSGPACK, CBOR, JSON]


def codec_for(content_type: str, limits: DecodeLimits | None = None) -> Codec:
    if limits is None:
        return CODECS.get(content_type)
    return CodecSet.default(REGISTRY, limits).get(content_type)


# --------------------------------------------------------------------------------------------
# strict comparison: == says True == 1 and [1] == (1,), the wire must not blur those
# --------------------------------------------------------------------------------------------


def expected(value: Any) -> Any:
    """What a round trip should give: tuples arrive as lists, errors as their code's class."""
    if isinstance(value, tuple | list):
        return [expected(v) for v in value]
    if isinstance(value, dict):
        return {k: expected(v) for k, v in value.items()}
    if isinstance(value, MicroError):
        return error_from_fields(value.to_fields())
    if attrs.has(type(value)) and not isinstance(value, ActorRef):
        fields = attrs.fields(type(value))
        return attrs.evolve(value, **{a.alias: expected(getattr(value, a.name)) for a in fields if a.init})
    return value


def assert_same(got: Any, want: Any, path: str = "$") -> None:
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, MicroError):
        assert got.to_fields() == want.to_fields(), path
    elif attrs.has(type(want)):
        for a in attrs.fields(type(want)):
            assert_same(getattr(got, a.name), getattr(want, a.name), f"{path}.{a.name}")
    elif isinstance(want, float):
        assert got == want and math.copysign(1, got) == math.copysign(1, want), path
    else:
        assert got == want, path


def roundtrip(codec: Codec, value: Any) -> None:
    data = codec.encode(value)
    assert type(data) is bytes
    assert_same(codec.decode(data), expected(value))


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------

# Keys and strings that look like the JSON codec's own markers, to exercise its escaping.
tricky_text = st.sampled_from(["$type", "$fields", "$bytes", "$map", "$ref", "$err", '"$', "$"])
text = st.text(max_size=12) | tricky_text
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def scalars(json_safe: bool) -> st.SearchStrategy[Any]:
    return (
        st.none()
        | st.booleans()
        | ints
        | st.floats(allow_nan=False, allow_infinity=not json_safe)
        | text
        | st.binary(max_size=24)
    )


def values(json_safe: bool = False) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(json_safe),
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
        max_leaves=25,
    )


refs = st.builds(ActorRef, text, text, st.integers(min_value=0, max_value=2**63 - 1))
error_classes = st.sampled_from(
    [
        MicroError,
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        RequestTimeout,
        Conflict,
        TooManyRequests,
        InternalServerError,
        ServiceUnavailable,
        DecodeError,
        EncodeError,
    ]
)
errors = st.builds(lambda cls, detail, id: cls(detail, id=id), error_classes, text, text)


def messages(json_safe: bool = False) -> st.SearchStrategy[Any]:
    points = st.builds(Point, ints, ints)
    leaf = values(json_safe) | refs | errors | points
    body = st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(text, inner, max_size=4)
            | st.builds(Chain, inner)
            | st.tuples(inner, inner)
        ),
        max_leaves=12,
    )
    envelope = st.builds(
        Envelope,
        to=refs,
        body=body,
        points=st.lists(points, max_size=3),
        meta=st.dictionaries(text, body, max_size=3),
        error=st.none() | errors,
        secret=st.binary(max_size=8),
    )
    return envelope | body


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [MSGPACK, CBOR])
@given(value=values())
def test_plain_values_roundtrip(content_type: str, value: Any) -> None:
    roundtrip(CODECS.get(content_type), value)


@given(value=values(json_safe=True))
def test_plain_values_roundtrip_json(value: Any) -> None:
    roundtrip(CODECS.get(JSON), value)


@pytest.mark.parametrize("content_type", [MSGPACK, CBOR])
@given(value=messages())
def test_messages_roundtrip(content_type: str, value: Any) -> None:
    roundtrip(CODECS.get(content_type), value)


@given(value=messages(json_safe=True))
def test_messages_roundtrip_json(value: Any) -> None:
    roundtrip(CODECS.get(JSON), value)


@pytest.mark.parametrize("content_type", ALL)
def test_envelope_example(content_type: str) -> None:
    codec = CODECS.get(content_type)
    env = Envelope(
        ActorRef("node-1", "/user/greeter", 3, binding=object()),
        {"$type": "not a tag", "items": (1, 2.5, "x", b"\x00\xff", None, True)},
        [Point(1, 2), Point(-3)],
        {"nested": Chain(Chain(NotFound("gone", id="svc")))},
        Conflict("busy"),
        secret=b"s3cret",
    )
    got = codec.decode(codec.encode(env))
    assert got == expected(env)  # the binding is not part of a ref's value
    assert got.to.binding is None
    assert got.body["items"] == [1, 2.5, "x", b"\x00\xff", None, True]
    assert type(got.meta["nested"].child.child) is NotFound
    assert got.derived == 7


@pytest.mark.parametrize("content_type", ALL)
def test_top_level_builtins(content_type: str) -> None:
    codec = CODECS.get(content_type)
    ref = ActorRef("n", "/a/b", 9)
    assert codec.decode(codec.encode(ref)) == ref
    err = TooManyRequests("full", id="mailbox")
    got = codec.decode(codec.encode(err))
    assert type(got) is TooManyRequests and got == err


@pytest.mark.parametrize("content_type", [CBOR, JSON])
def test_big_ints_beyond_64_bits(content_type: str) -> None:
    codec = CODECS.get(content_type)
    for n in (2**64, -(2**63) - 1, 3**100, -(7**90)):
        assert codec.decode(codec.encode([n])) == [n]


def test_msgpack_wire_form_is_ext_pair() -> None:
    data = CODECS.get(MSGPACK).encode(Point(1, 2))
    assert msgpack.unpackb(data) == [msgpack.ExtType(MSGPACK_EXT_CODE, b"Point"), {"x": 1, "y": 2}]


def test_cbor_wire_form_is_tagged_pair() -> None:
    data = CODECS.get(CBOR).encode(Point(1, 2))
    tagged = cbor2.loads(data)
    assert tagged.tag == CBOR_TYPE_TAG
    assert tagged.value[0] == "Point" and dict(tagged.value[1]) == {"x": 1, "y": 2}


def test_json_wire_form() -> None:
    codec = CODECS.get(JSON)
    data = codec.encode({"p": Point(1, 2), "b": b"hi", "r": ActorRef("n", "/p", 1)})
    assert json.loads(data) == {
        "p": {"$type": "Point", "$fields": {"x": 1, "y": 2}},
        "b": {"$bytes": "aGk="},
        "r": {"$type": "$ref", "$fields": ["n", "/p", 1]},
    }
    assert b" " not in data
    # A user map that looks like a marker is wrapped, so it comes back as the map it was.
    tricky = {"$type": "Point", "$fields": {"x": 1}}
    assert json.loads(codec.encode(tricky)) == {"$map": ["$type", "Point", "$fields", {"x": 1}]}
    assert codec.decode(codec.encode(tricky)) == tricky
    # Other '$' keys are plain keys, readable by any JSON client.
    assert json.loads(codec.encode({"$schema": 1})) == {"$schema": 1}
    assert codec.encode("é") == '"é"'.encode()


def test_private_attribute_travels_under_its_init_name() -> None:
    tag, fields = REGISTRY.to_wire(Envelope(ActorRef("n", "/p"), None, secret=b"x"))
    assert tag == "test.Envelope"
    assert fields["secret"] == b"x" and "_secret" not in fields
    assert "derived" not in fields  # init=False: recomputed by __init__, not sent


def test_codecs_are_safe_to_share_between_threads() -> None:
    codec = CODECS.get(MSGPACK)
    want = [Envelope(ActorRef("n", f"/p/{i}"), list(range(i))) for i in range(50)]
    wire = [codec.encode(m) for m in want]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                for m, data in zip(want, wire, strict=True):
                    assert codec.encode(m) == data
                    assert codec.decode(data) == m
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# --------------------------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------------------------


def nest(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_limits_defaults_and_validation() -> None:
    assert DecodeLimits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_size == 4 * 1024 * 1024
    assert DEFAULT_LIMITS.max_depth == 64
    assert DEFAULT_LIMITS.max_len == 1_000_000
    assert DEFAULT_LIMITS.max_str == 4 * 1024 * 1024
    assert DEFAULT_LIMITS.len_cap(10) == 10
    assert DEFAULT_LIMITS.len_cap(10**9) == 1_000_000
    with pytest.raises(ValueError):
        DecodeLimits(max_depth=0)
    with pytest.raises(TypeError):
        DecodeLimits(max_size="big")  # type: ignore[arg-type]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DEFAULT_LIMITS.max_depth = 3  # type: ignore[misc]


@pytest.mark.parametrize("content_type", ALL)
def test_oversize_input_refused(content_type: str) -> None:
    codec = codec_for(content_type, DecodeLimits(max_size=100))
    small = codec.encode("x" * 50)
    assert codec.decode(small) == "x" * 50
    with pytest.raises(DecodeError, match="max_size"):
        codec.decode(codec.encode("x" * 200))


@pytest.mark.parametrize("content_type", ALL)
def test_depth_limit_is_the_same_for_every_codec(content_type: str) -> None:
    codec = codec_for(content_type)
    assert codec.decode(codec.encode(nest(64))) == nest(64)
    with pytest.raises(DecodeError, match="max_depth"):
        codec.decode(codec.encode(nest(65)))
    # A registered value is two levels on the wire: the pair (or object) and its fields.
    chain: Any = None
    for _ in range(32):
        chain = Chain(chain)
    assert codec.decode(codec.encode(chain)) == chain
    with pytest.raises(DecodeError, match="max_depth"):
        codec.decode(codec.encode(Chain(chain)))
    # bytes are scalars everywhere, even where JSON wraps them in an object
    assert codec.decode(codec.encode(_nest_bytes(64))) == _nest_bytes(64)


def _nest_bytes(depth: int) -> Any:
    value: Any = b"\x01"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("content_type", "deep"),
    [
        (MSGPACK, b"\x91" * 200_000 + b"\x00"),
        (CBOR, b"\x81" * 200_000 + b"\x00"),
        (CBOR, b"\x9f" * 200_000 + b"\xff" * 200_000),
        (JSON, b"[" * 200_000 + b"]" * 200_000),
        (JSON, b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    ],
)
def test_absurd_depth_refused(content_type: str, deep: bytes) -> None:
    with pytest.raises(DecodeError):
        CODECS.get(content_type).decode(deep)


def test_cbor_indefinite_length_containers() -> None:
    codec = CODECS.get(CBOR)
    assert codec.decode(b"\x9f\x01\x02\xff") == [1, 2]
    assert codec.decode(b"\xbf\x61a\x01\xff") == {"a": 1}
    assert codec.decode(b"\x7f\x61a\x61b\xff") == "ab"
    assert codec.decode(b"\x5f\x41a\x41b\xff") == b"ab"
    innermost: Any = []
    for _ in range(63):
        innermost = [innermost]
    assert codec.decode(b"\x9f" * 64 + b"\xff" * 64) == innermost
    with pytest.raises(DecodeError, match="max_depth"):
        codec.decode(b"\x9f" * 65 + b"\xff" * 65)
    small = codec_for(CBOR, DecodeLimits(max_len=3))
    assert small.decode(b"\x9f\x01\x02\x03\xff") == [1, 2, 3]
    with pytest.raises(DecodeError, match="max_len"):
        small.decode(b"\x9f\x01\x02\x03\x04\xff")
    with pytest.raises(DecodeError):
        codec.decode(b"\x7f\x61a\x41b\xff")  # a byte-string chunk in a text string


@pytest.mark.parametrize("content_type", ALL)
def test_array_and_map_length_limits(content_type: str) -> None:
    codec = codec_for(content_type, DecodeLimits(max_len=10))
    assert codec.decode(codec.encode(list(range(10)))) == list(range(10))
    with pytest.raises(DecodeError):
        codec.decode(codec.encode(list(range(11))))
    ok = {str(i): i for i in range(10)}
    assert codec.decode(codec.encode(ok)) == ok
    with pytest.raises(DecodeError):
        codec.decode(codec.encode({str(i): i for i in range(11)}))


@pytest.mark.parametrize("content_type", ALL)
def test_string_length_limits(content_type: str) -> None:
    codec = codec_for(content_type, DecodeLimits(max_str=5))
    assert codec.decode(codec.encode(["abcde", b"12345"])) == ["abcde", b"12345"]
    for too_long in ("abcdef", b"123456", {"abcdef": 1}):
        with pytest.raises(DecodeError):
            codec.decode(codec.encode([too_long]))


@pytest.mark.parametrize(
    ("content_type", "header"),
    [
        (MSGPACK, b"\xdd\x80\x00\x00\x00"),  # array32 of 2**31 elements
        (MSGPACK, b"\xdf\x80\x00\x00\x00"),  # map32 of 2**31 pairs
        (MSGPACK, b"\xdb\x80\x00\x00\x00"),  # str32 of 2**31 bytes
        (MSGPACK, b"\xc6\x80\x00\x00\x00"),  # bin32 of 2**31 bytes
        (CBOR, b"\x9a\x80\x00\x00\x00"),  # array of 2**31 elements
        (CBOR, b"\xba\x80\x00\x00\x00"),  # map of 2**31 pairs
        (CBOR, b"\x9b\x00\x00\x00\x01\x00\x00\x00\x00"),  # array of 2**32 elements
        (CBOR, b"\x7a\x80\x00\x00\x00"),  # text of 2**31 bytes
        (CBOR, b"\x81\x9a\x80\x00\x00\x00"),  # nested
    ],
)
def test_lying_length_headers_refused_without_allocating(content_type: str, header: bytes) -> None:
    codec = CODECS.get(content_type)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeError):
            codec.decode(header)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 1024 * 1024


def test_max_len_never_exceeds_input_size() -> None:
    # max_len is huge, but five bytes cannot hold 2**31 elements.
    limits = DecodeLimits(max_len=2**40, max_size=2**40)
    with pytest.raises(DecodeError):
        MsgpackCodec(REGISTRY, limits).decode(b"\xdd\x80\x00\x00\x00")
    with pytest.raises(DecodeError):
        CborCodec(REGISTRY, limits).decode(b"\x9a\x80\x00\x00\x00")


def test_cbor_prescan_directly() -> None:
    cbor_prescan(cbor2.dumps([1, "a", {"b": [2.5, None]}]), DEFAULT_LIMITS)
    cbor_prescan(cbor2.dumps([*range(70_000), [1] * 9]), DEFAULT_LIMITS)
    with pytest.raises(DecodeError, match="max_len"):
        cbor_prescan(b"\x9a\x80\x00\x00\x00", DEFAULT_LIMITS)
    with pytest.raises(DecodeError, match="bytes left"):
        cbor_prescan(b"\x98\x20" + b"\x01" * 31, DEFAULT_LIMITS)
    with pytest.raises(DecodeError, match="after the CBOR item"):
        cbor_prescan(b"\x01\x02", DEFAULT_LIMITS)
    # a run of scalars must not be counted past its own array
    cbor_prescan(cbor2.dumps([[1, 2, 3, 4, 5, 6], 7, 8, 9]), DEFAULT_LIMITS)
    cbor_prescan(cbor2.dumps([[1000] * 6, 1000, 1000, [1000]]), DEFAULT_LIMITS)
    with pytest.raises(DecodeError, match="truncated"):
        cbor_prescan(
            b"\x86\x19\x01\x00\x19\x01\x00\x19\x01\x00\x19\x01\x00\x19\x01\x00\x19\x01",
            DEFAULT_LIMITS,
        )


# --------------------------------------------------------------------------------------------
# malformed input: DecodeError, never anything else
# --------------------------------------------------------------------------------------------


def decode_or_refuse(codec: Codec, data: bytes) -> None:
    try:
        codec.decode(data)
    except DecodeError as exc:
        assert exc.code == 400 and exc.detail


@pytest.mark.parametrize("content_type", ALL)
@given(data=st.binary(max_size=64))
def test_fuzz_random_bytes(content_type: str, data: bytes) -> None:
    decode_or_refuse(CODECS.get(content_type), data)


@given(data=st.text(alphabet='[]{}",:0123456789.-+eE$ \\abtypefildsmrunx', max_size=40))
def test_fuzz_json_like_text(data: str) -> None:
    decode_or_refuse(CODECS.get(JSON), data.encode())


@pytest.mark.parametrize("content_type", ALL)
@given(
    value=messages(json_safe=True),
    edits=st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 3),
)
def test_fuzz_mutated_encodings(
    content_type: str, value: Any, edits: list[tuple[int, int]], cut: int
) -> None:
    codec = CODECS.get(content_type)
    data = bytearray(codec.encode(value))
    for where, byte in edits:
        data[where % len(data)] = byte
    decode_or_refuse(codec, bytes(data[: len(data) - cut]))


@pytest.mark.parametrize(
    ("content_type", "data"),
    [
        (MSGPACK, b""),
        (MSGPACK, b"\xc1"),  # never used
        (MSGPACK, b"\x01\x02"),  # trailing bytes
        (MSGPACK, b"\xa2\xff\xfe"),  # invalid UTF-8
        (MSGPACK, b"\x81\x01\x02"),  # int map key
        (MSGPACK, msgpack.packb(msgpack.ExtType(5, b"x"))),  # unknown ext type
        (MSGPACK, msgpack.packb(msgpack.ExtType(1, b"Point"))),  # tag not in a pair
        (MSGPACK, msgpack.packb([1, msgpack.ExtType(1, b"Point")])),  # tag out of place
        (MSGPACK, msgpack.packb([msgpack.ExtType(1, b"Point"), {"x": 1}, 3])),  # pair of three
        (MSGPACK, msgpack.packb([msgpack.ExtType(1, b"\xff"), {}])),  # tag not UTF-8
        (MSGPACK, msgpack.packb([msgpack.ExtType(1, b"Nope"), {}])),  # unknown tag
        (MSGPACK, msgpack.packb([msgpack.ExtType(1, b"Point"), [1, 2]])),  # fields not a map
        (MSGPACK, msgpack.packb([msgpack.ExtType(1, b"Point"), {b"x": 1}])),  # bytes field name
        (CBOR, b""),
        (CBOR, b"\x01\x02"),
        (CBOR, b"\x62\xff\xfe"),
        (CBOR, b"\xa1\x01\x02"),  # int map key
        (CBOR, b"\xf7"),  # undefined
        (CBOR, b"\xf8\x20"),  # simple value
        (CBOR, b"\xff"),
        (CBOR, b"\x1c"),  # reserved additional information
        (CBOR, cbor2.dumps(cbor2.CBORTag(1, 0))),  # a datetime tag
        (CBOR, cbor2.dumps({1, 2})),  # a set (tag 258)
        (CBOR, b"\xd8\x1c\x81\xd8\x1d\x00"),  # shared references
        (CBOR, cbor2.dumps(cbor2.CBORTag(CBOR_TYPE_TAG, "Point"))),
        (CBOR, cbor2.dumps(cbor2.CBORTag(CBOR_TYPE_TAG, ["Nope", {}]))),
        (CBOR, cbor2.dumps(cbor2.CBORTag(CBOR_TYPE_TAG, [1, {}]))),
        (CBOR, cbor2.dumps(cbor2.CBORTag(2, "not bytes"))),
        (JSON, b""),
        (JSON, b"{"),
        (JSON, b"1 x"),
        (JSON, b'"\xff"'),
        (JSON, b"NaN"),
        (JSON, b"[-Infinity]"),
        (JSON, b"1" * 5000),  # int too long to convert
        (JSON, "\ufeff1".encode()),
        (JSON, "1".encode("utf-16")),
        (JSON, b'{"$type": 1, "$fields": {}}'),
        (JSON, b'{"$type": "Point"}'),
        (JSON, b'{"$type": "Point", "$fields": {"x": 1}, "more": 1}'),
        (JSON, b'{"$type": "Nope", "$fields": {}}'),
        (JSON, b'{"$bytes": "!!"}'),
        (JSON, b'{"$bytes": 1}'),
        (JSON, b'{"$bytes": "aGk=", "x": 1}'),
        (JSON, b'{"$map": ["a"]}'),
        (JSON, b'{"$map": [1, 2]}'),
        (JSON, b'{"$map": {}}'),
        (JSON, b'{"$type": "$ref", "$fields": ["n", "/p"]}'),
        (JSON, b'{"$type": "$err", "$fields": {"code": "404"}}'),
        (JSON, b'{"$type": "$err", "$fields": {"oops": 1}}'),
        (JSON, b'{"$type": "$err", "$fields": [1]}'),
    ],
)
def test_malformed_inputs_raise_decode_error(content_type: str, data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        CODECS.get(content_type).decode(data)
    assert info.value.code == 400
    assert isinstance(info.value, BadRequest)


@pytest.mark.parametrize("content_type", ALL)
def test_non_bytes_input_is_a_decode_error(content_type: str) -> None:
    codec = CODECS.get(content_type)
    for junk in ("text", None, 12, object()):
        with pytest.raises(DecodeError):
            codec.decode(junk)  # type: ignore[arg-type]
    assert codec.decode(bytearray(codec.encode([1]))) == [1]  # type: ignore[arg-type]
    assert codec.decode(memoryview(codec.encode([1]))) == [1]  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# fields: what a peer sends may not match what this side's class expects
# --------------------------------------------------------------------------------------------


@attrs.frozen
class PointV2:
    x: int
    y: int
    z: int


@attrs.frozen
class PointV0:
    y: int


@pytest.mark.parametrize("content_type", ALL)
def test_wrong_field_sets_are_decode_errors(content_type: str) -> None:
    newer = default_registry()
    newer.register(PointV2, "Point")
    older = default_registry()
    older.register(PointV0, "Point")
    here = codec_for(content_type)
    with pytest.raises(DecodeError, match="unknown fields 'z'"):
        here.decode(CodecSet.default(newer).get(content_type).encode(PointV2(1, 2, 3)))
    with pytest.raises(DecodeError, match="missing fields x"):
        here.decode(CodecSet.default(older).get(content_type).encode(PointV0(2)))


@pytest.mark.parametrize("content_type", ALL)
def test_validators_run_on_decode(content_type: str) -> None:
    lax = default_registry()

    @lax.message("Positive")
    @attrs.frozen
    class Unchecked:
        n: int

    data = CodecSet.default(lax).get(content_type).encode(Unchecked(-1))
    with pytest.raises(DecodeError, match="refused by __init__"):
        codec_for(content_type).decode(data)
    assert codec_for(content_type).decode(CODECS.get(content_type).encode(Positive(5))) == Positive(5)


@pytest.mark.parametrize("content_type", ALL)
def test_unknown_tag_is_a_decode_error(content_type: str) -> None:
    data = CODECS.get(content_type).encode(Point(1, 2))
    stranger = CodecSet.default(default_registry()).get(content_type)
    with pytest.raises(DecodeError, match="unknown type tag 'Point'"):
        stranger.decode(data)


@pytest.mark.parametrize("content_type", ALL)
def test_unknown_tags_as_maps_is_opt_in(content_type: str) -> None:
    """A gateway's registry decodes types it never registered as their fields, nested ones too
    (at any depth, inside known values); built-in tags and malformed fields stay errors."""
    lenient = CodecSet.default(default_registry(unknown_as_maps=True)).get(content_type)
    value = {"env": Envelope(ActorRef("n", "/user/a", 1), Chain(Point(3)), [Point(1, 2)])}
    got = lenient.decode(CODECS.get(content_type).encode(value))
    assert got == {
        "env": {
            "to": ActorRef("n", "/user/a", 1),
            "body": {"child": {"x": 3, "y": 0}},
            "points": [{"x": 1, "y": 2}],
            "meta": {},
            "error": None,
            "secret": b"",
        }
    }
    for _ in range(2):  # the second time from any cache the codec keeps
        assert lenient.decode(CODECS.get(content_type).encode([Point(5)])) == [{"x": 5, "y": 0}]
    assert lenient.registry.decodes("Point") and not lenient.registry.decodes("$nope")
    assert not default_registry().decodes("Point")
    with pytest.raises(DecodeError, match="needs a map of fields"):
        lenient.registry.from_wire("Point", [1, 2])
    with pytest.raises(DecodeError, match="unknown type tag"):
        lenient.registry.from_wire("$nope", {})
    with pytest.raises(DecodeError, match="unknown type tag 'Point'"):
        CodecSet.default(default_registry()).get(content_type).decode(
            CODECS.get(content_type).encode(Point(1))
        )


# --------------------------------------------------------------------------------------------
# encoding failures
# --------------------------------------------------------------------------------------------


@attrs.frozen
class Unregistered:
    a: int


@pytest.mark.parametrize("content_type", ALL)
def test_unencodable_values_raise_encode_error(content_type: str) -> None:
    codec = CODECS.get(content_type)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for bad in (Unregistered(1), [object()], {"k": Unregistered(2)}, cyclic, "\ud800"):
        with pytest.raises(EncodeError) as info:
            codec.encode(bad)
        assert info.value.code == 500


def test_msgpack_int_range() -> None:
    codec = CODECS.get(MSGPACK)
    assert codec.decode(codec.encode([2**64 - 1, -(2**63)])) == [2**64 - 1, -(2**63)]
    with pytest.raises(EncodeError):
        codec.encode(2**64)


def test_json_refuses_non_finite_floats() -> None:
    codec = CODECS.get(JSON)
    for bad in (math.inf, [-math.inf], {"x": math.nan}):
        with pytest.raises(EncodeError):
            codec.encode(bad)


def test_registered_error_classes_and_refs_as_values() -> None:
    class Teapot(MicroError):
        default_code = 418

    assert REGISTRY.to_wire(Teapot("short", id="pot")) == (
        "$err",
        {"id": "pot", "code": 418, "detail": "short", "status": "I'm a Teapot"},
    )
    assert REGISTRY.to_wire(ActorRef("n", "/p", 2)) == ("$ref", ["n", "/p", 2])
    got = CODECS.get(MSGPACK).decode(CODECS.get(MSGPACK).encode(Teapot("short")))
    assert type(got) is MicroError and got.code == 418  # no class for 418: the base class


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_register_and_tags() -> None:
    registry = default_registry()
    assert registry.register(Point) is Point
    assert "Point" in registry and Point in registry
    assert registry.register(Point) is Point  # idempotent
    assert registry.register(Point, "Point") is Point
    assert registry.to_wire(Point(1)) == ("Point", {"x": 1, "y": 0})
    assert registry.from_wire("Point", {"x": 3}) == Point(3)
    assert "$ref" in registry and "$err" in registry and ActorRef in registry
    assert NotFound in registry and MicroError in registry
    assert Chain not in registry and "chain" not in registry


def test_registry_message_decorator() -> None:
    registry = default_registry()

    @registry.message("greet")
    @attrs.frozen
    class Greet:
        name: str

    @registry.message()
    @attrs.frozen
    class Bye:
        pass

    assert registry.to_wire(Greet("bob")) == ("greet", {"name": "bob"})
    assert registry.from_wire(Bye.__qualname__, {}) == Bye()


def test_registry_refusals() -> None:
    registry = default_registry()
    registry.register(Point, "p")
    with pytest.raises(ValueError, match="already taken"):
        registry.register(Chain, "p")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Point, "other")
    with pytest.raises(TypeError):
        registry.register(dict)

    class Plain:
        pass

    with pytest.raises(TypeError):
        registry.register(Plain)
    with pytest.raises(TypeError):
        registry.register(Point(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        registry.register(Chain, "$chain")
    with pytest.raises(ValueError):
        registry.register(Chain, "")
    with pytest.raises(ValueError, match="built in"):
        registry.register(ActorRef)
    with pytest.raises(DecodeError, match="unknown type tag"):
        registry.from_wire("nope", {})
    with pytest.raises(DecodeError):
        registry.from_wire(None, {})  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="map of fields"):
        registry.from_wire("p", [1])
    with pytest.raises(DecodeError):
        registry.from_wire("$ref", {"node": "n"})
    with pytest.raises(EncodeError, match="not registered"):
        registry.to_wire(Unregistered(1))
    with pytest.raises(EncodeError, match="no wire form"):
        registry.to_wire(object())


def test_registries_are_independent() -> None:
    one, two = default_registry(), default_registry()
    assert one is not two
    one.register(Point)
    assert "Point" in one and "Point" not in two
    assert isinstance(TypeRegistry(), TypeRegistry) and "$ref" in TypeRegistry()


def test_subclass_of_registered_class_is_not_silently_the_base() -> None:
    registry = default_registry()
    registry.register(Point)

    @attrs.frozen
    class Point3(Point):
        z: int = 0

    with pytest.raises(EncodeError, match="not registered"):
        registry.to_wire(Point3(1, 2, 3))


@given(fields=st.dictionaries(st.text(max_size=3) | st.integers(), values(), max_size=4))
def test_from_wire_with_any_fields_builds_or_refuses(fields: dict[Any, Any]) -> None:
    for tag in ("Point", "test.Envelope", "chain", "Positive", "$ref", "$err"):
        with contextlib.suppress(DecodeError):
            REGISTRY.from_wire(tag, fields)


# --------------------------------------------------------------------------------------------
# errors and codec set
# --------------------------------------------------------------------------------------------


def test_codec_errors_carry_go_micro_fields() -> None:
    err = DecodeError("bad bytes")
    assert isinstance(err, BadRequest) and err.code == 400 and err.status == "Bad Request"
    assert err.to_fields()["detail"] == "bad bytes"
    assert EncodeError("x").code == 500


def test_codec_set_lookup() -> None:
    codecs = CodecSet.default()
    assert isinstance(codecs.default_codec, MsgpackCodec)
    assert codecs.get() is codecs.default_codec and codecs.get("") is codecs.default_codec
    assert isinstance(codecs.get(JSON), JsonCodec)
    assert isinstance(codecs.get("Application/JSON; charset=utf-8"), JsonCodec)
    assert isinstance(codecs.get(CBOR), CborCodec)
    assert codecs.content_types == (MSGPACK, CBOR, JSON)
    assert JSON in codecs and "text/plain" not in codecs
    assert [c.content_type for c in codecs] == [MSGPACK, CBOR, JSON]
    with pytest.raises(UnsupportedContentType, match="text/plain") as info:
        codecs.get("text/plain")
    assert isinstance(info.value, BadRequest) and info.value.code == 400
    # all codecs of the default set share one registry
    registry = default_registry()
    shared = CodecSet.default(registry)
    registry.register(Point)
    for codec in shared:
        assert codec.decode(codec.encode(Point(4))) == Point(4)


def test_codec_set_construction() -> None:
    json_only = CodecSet([JsonCodec()])
    assert isinstance(json_only.default_codec, JsonCodec)
    with pytest.raises(ValueError):
        CodecSet([JsonCodec(), JsonCodec()])
    with pytest.raises(ValueError):
        CodecSet([])
    with pytest.raises(ValueError):
        CodecSet([JsonCodec()], default=MSGPACK)
    assert isinstance(CodecSet([JsonCodec(), MsgpackCodec()], default=MSGPACK).get(), MsgpackCodec)


def test_codecs_satisfy_the_protocol() -> None:
    codecs: list[Codec] = [MsgpackCodec(), CborCodec(), JsonCodec()]
    assert [c.content_type for c in codecs] == [MSGPACK, CBOR, JSON]
