"""Length-prefixed framing: layout, chunking, limits, truncation, fuzz."""

from __future__ import annotations

import itertools
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.mailbox.errors import BadRequest
from trimicro.mailbox.framing import (
    DEFAULT_MAX_FRAME_SIZE,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    TruncatedFrame,
    encode_frame,
    encode_frames,
)


def header(n: int) -> bytes:
    return struct.pack(">I", n)


def drain(dec: FrameDecoder) -> list[bytes]:
    return list(dec.frames())


# --- encoding ---------------------------------------------------------------------------------


def test_frame_layout_is_big_endian_length_then_payload() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"x" * 258) == b"\x00\x00\x01\x02" + b"x" * 258


def test_encode_frame_accepts_any_bytes_like() -> None:
    assert encode_frame(bytearray(b"ab")) == encode_frame(memoryview(b"ab")) == b"\0\0\0\x02ab"
    assert type(encode_frame(bytearray(b"ab"))) is bytes


def test_encode_frames_is_the_concatenation() -> None:
    payloads: list[bytes | bytearray] = [b"a", b"", b"bc", bytearray(b"d")]
    assert encode_frames(payloads) == b"".join(encode_frame(p) for p in payloads)
    assert encode_frames([]) == b""
    assert encode_frames(iter([b"x"])) == encode_frame(b"x")


def test_errors_carry_go_micro_fields() -> None:
    assert issubclass(ProtocolError, BadRequest)
    assert issubclass(FrameTooLarge, ProtocolError)
    assert issubclass(TruncatedFrame, ProtocolError)
    err = FrameTooLarge("too big")
    assert err.code == 400
    assert err.to_fields()["detail"] == "too big"


# --- decoding ---------------------------------------------------------------------------------


def test_decodes_several_frames_from_one_chunk() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frames([b"one", b"", b"three"]))
    assert dec.next_frame() == b"one"
    assert dec.next_frame() == b""
    assert dec.next_frame() == b"three"
    assert dec.next_frame() is None
    assert dec.buffered == 0
    dec.eof()


def test_frame_returned_only_when_complete_byte_by_byte() -> None:
    data = encode_frame(b"hello")
    dec = FrameDecoder()
    for i, byte in enumerate(data):
        assert dec.next_frame() is None
        dec.feed(bytes([byte]))
        assert dec.buffered == i + 1
    assert drain(dec) == [b"hello"]
    assert dec.buffered == 0


def test_frames_are_bytes_even_when_fed_other_buffers() -> None:
    dec = FrameDecoder()
    dec.feed(memoryview(encode_frame(b"ab")))
    dec.feed(bytearray(encode_frame(b"x" * 100_000)))
    frames = drain(dec)
    assert frames == [b"ab", b"x" * 100_000]
    assert all(type(f) is bytes for f in frames)


def test_empty_feed_is_harmless() -> None:
    dec = FrameDecoder()
    dec.feed(b"")
    assert dec.next_frame() is None
    dec.eof()


def test_frame_of_exactly_max_size_is_accepted() -> None:
    dec = FrameDecoder(max_frame_size=10)
    dec.feed(encode_frame(b"x" * 10))
    assert drain(dec) == [b"x" * 10]


def test_max_frame_size_must_fit_the_header() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=-1)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=2**32)


@settings(max_examples=300)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_any_split_decodes_to_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = encode_frames(payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder(max_frame_size=300)
    out: list[bytes] = []
    for start, stop in itertools.pairwise(points):
        chunk = stream[start:stop]
        dec.feed(chunk)
        out.extend(dec.frames())
        # Drained: at most one partial frame is left.
        assert dec.buffered < 300 + 4
        assert len(dec._buf) <= 300 + 4 + len(chunk)
    dec.eof()
    assert out == payloads


def test_buffer_stays_within_the_documented_bound() -> None:
    max_size, chunk_size = 1 << 16, 5000
    stream = encode_frames([bytes([i]) * (max_size - i) for i in range(8)])
    dec = FrameDecoder(max_frame_size=max_size)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk_size):
        dec.feed(stream[i : i + chunk_size])
        assert len(dec._buf) <= max_size + 4 + chunk_size
        out.extend(dec.frames())
    assert out == [bytes([i]) * (max_size - i) for i in range(8)]


# --- limits -----------------------------------------------------------------------------------


def test_oversize_header_refused_before_the_body_is_buffered() -> None:
    dec = FrameDecoder(max_frame_size=100)
    with pytest.raises(FrameTooLarge):
        dec.feed(header(101) + b"x" * 50)
    assert dec.buffered == 0


def test_oversize_header_split_across_feeds_is_refused_when_complete() -> None:
    dec = FrameDecoder(max_frame_size=100)
    dec.feed(b"\x00\x00")
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x00\x65" + b"x" * 50)  # 101
    assert dec.buffered == 0


def test_header_claiming_2_to_the_31_is_refused_without_allocating() -> None:
    dec = FrameDecoder()
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge):
            dec.feed(b"\x80\x00\x00\x00")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert DEFAULT_MAX_FRAME_SIZE == 4 * 1024 * 1024


def test_oversize_header_behind_good_frames_fails_after_them() -> None:
    dec = FrameDecoder(max_frame_size=10)
    dec.feed(encode_frame(b"ok") + header(11) + b"z")
    assert dec.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge):
        dec.next_frame()


def test_protocol_errors_are_final() -> None:
    dec = FrameDecoder(max_frame_size=10)
    with pytest.raises(FrameTooLarge):
        dec.feed(header(11))
    with pytest.raises(FrameTooLarge):
        dec.feed(encode_frame(b"fine"))
    with pytest.raises(FrameTooLarge):
        dec.next_frame()
    with pytest.raises(FrameTooLarge):
        dec.eof()


# --- end of stream ----------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 3, 4, 6])
def test_truncated_stream_is_an_error_at_eof(cut: int) -> None:
    data = encode_frame(b"abcdef")
    dec = FrameDecoder()
    dec.feed(encode_frame(b"whole") + data[:cut])
    assert drain(dec) == [b"whole"]
    with pytest.raises(TruncatedFrame):
        dec.eof()


def test_eof_keeps_complete_frames_available() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frames([b"a", b"b"]))
    dec.eof()
    assert drain(dec) == [b"a", b"b"]
    dec.eof()  # idempotent


def test_eof_with_undrained_complete_frames_then_partial_is_truncated() -> None:
    dec = FrameDecoder()
    dec.feed(encode_frames([b"a", b"b"]) + b"\x00")
    with pytest.raises(TruncatedFrame):
        dec.eof()


def test_feed_after_eof_is_a_usage_error() -> None:
    dec = FrameDecoder()
    dec.eof()
    with pytest.raises(RuntimeError):
        dec.feed(b"x")


# --- fuzz -------------------------------------------------------------------------------------


@settings(max_examples=500)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20), max_size=st.integers(0, 70))
def test_arbitrary_bytes_give_frames_or_protocol_error(chunks: list[bytes], max_size: int) -> None:
    dec = FrameDecoder(max_frame_size=max_size)
    try:
        for chunk in chunks:
            dec.feed(chunk)
            for frame in dec.frames():
                assert type(frame) is bytes
                assert len(frame) <= max_size
        dec.eof()
    except ProtocolError:
        pass


@given(chunks=st.lists(st.binary(max_size=40), max_size=12), max_size=st.integers(0, 30))
def test_has_frame_says_exactly_whether_next_frame_answers(chunks: list[bytes], max_size: int) -> None:
    """``has_frame`` (used to decide whether a reader may batch on) never disagrees with
    ``next_frame``: True exactly when a payload (or the error) comes without more bytes."""
    dec = FrameDecoder(max_size)
    stream = encode_frames([c for c in chunks if len(c) <= max_size]) + b"".join(chunks[:1])
    for i in range(0, len(stream), 7):
        try:
            dec.feed(stream[i : i + 7])
        except ProtocolError:
            assert dec.has_frame()
            return
        while True:
            ready = dec.has_frame()
            try:
                frame = dec.next_frame()
            except ProtocolError:
                assert ready
                return
            assert ready == (frame is not None)
            if frame is None:
                break
