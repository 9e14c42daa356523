"""Length-prefixed framing, sans I/O: bytes in, frames out; frames in, bytes out.

A frame is a 4-byte big-endian unsigned payload length followed by that many payload bytes
(see ``docs/protocol.md``). Nothing here touches a socket, so the same code serves trio
streams, tests and fuzzers, in the style of h11. Every malformed stream ends in a
:class:`ProtocolError`, which is a :class:`~trimicro.mailbox.errors.BadRequest` so it crosses
boundaries with Go Micro's four error fields like any other error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from trimicro.mailbox.errors import BadRequest

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "FrameDecoder",
    "FrameTooLarge",
    "ProtocolError",
    "TruncatedFrame",
    "encode_frame",
    "encode_frames",
]

#: Bytes in a frame header (the big-endian ``uint32`` payload length).
HEADER_SIZE = 4

#: Largest payload accepted by default: big enough for any sane message, small enough that a
#: hostile peer cannot make us hold much memory per connection.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024

#: The largest length the header can express.
_MAX_UINT32 = 0xFFFFFFFF

#: Up to this payload size, copying through a bytearray slice is faster than a memoryview.
_SMALL_FRAME = 16 * 1024

_HEADER = struct.Struct(">I")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack


class ProtocolError(BadRequest):
    """The peer broke the wire protocol; the connection cannot continue and should be closed."""


class FrameTooLarge(ProtocolError):
    """A frame header announced more than the allowed payload size (refused before its body)."""


class TruncatedFrame(ProtocolError):
    """The stream ended inside a frame: a cut connection, not a clean end."""


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """One frame: the payload's length as a big-endian ``uint32``, then the payload."""
    n = len(payload)
    if n > _MAX_UINT32:
        raise ValueError(f"a frame payload is at most {_MAX_UINT32} bytes, not {n}")
    return _pack_header(n) + payload


def encode_frames(payloads: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Many frames joined into one buffer, so a burst of messages costs one ``send_all``."""
    parts: list[bytes | bytearray | memoryview] = []
    append = parts.append
    for payload in payloads:
        n = len(payload)
        if n > _MAX_UINT32:
            raise ValueError(f"a frame payload is at most {_MAX_UINT32} bytes, not {n}")
        append(_pack_header(n))
        append(payload)
    return b"".join(parts)


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into frame payloads.

    Use it as ``feed(chunk)`` after every read, then drain with :meth:`next_frame` (or iterate
    :meth:`frames`) until it returns ``None``; call :meth:`eof` when the stream ends.

    Memory bound: if the caller drains after every feed (the loop above), what is left over
    between reads is less than one frame, so the buffer never holds more than
    ``max_frame_size + 4 + len(chunk)`` bytes. A header announcing more than
    ``max_frame_size`` is refused as soon as its four bytes are known, so the body of an
    oversized frame is never accumulated across reads.

    Consumed bytes are skipped with an offset, and the buffer is compacted once per
    :meth:`feed` (moving at most the unfinished frame), so decoding is linear in the stream. A
    chunk fed when nothing is left over is decoded in place (each frame is copied out once).

    Errors are final: after a :class:`ProtocolError` every later call raises it again,
    because a length-prefixed stream cannot resynchronise.
    """

    __slots__ = ("_buf", "_closed", "_error", "_pos", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not 0 <= max_frame_size <= _MAX_UINT32:
            raise ValueError(f"max_frame_size must be in [0, {_MAX_UINT32}], not {max_frame_size}")
        self.max_frame_size = max_frame_size
        #: What was received and not yet decoded from ``_pos`` on: the last chunk itself while it
        #: holds whole frames (bytes), a bytearray while a frame spans chunks.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._error: ProtocolError | None = None
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (at most one partial frame if drained)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; raises :class:`FrameTooLarge` once an oversized header is known."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._closed:
            raise RuntimeError("feed() after eof()")
        if not data:
            return
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            # Nothing left over (the usual case: whole frames per read): decode from the chunk
            # itself, not from a copy of it in the buffer.
            if len(data) >= HEADER_SIZE:
                (length,) = _unpack_header(data)  # (pre-checked as below, for the same error)
                if length > self.max_frame_size:
                    self._buf, self._pos = b"", 0
                    raise self._fail(FrameTooLarge(self._too_large(length)))
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if isinstance(buf, bytearray):
            if pos:  # compact once per read: drop what was consumed, moving only the leftover
                del buf[:pos]
        else:  # a chunk with a frame's start left over: the buffer grows from here
            buf = self._buf = bytearray(buf[pos:])
        self._pos = 0
        have = len(buf)
        if have < HEADER_SIZE and have + len(data) >= HEADER_SIZE:
            # Check the pending frame's header before its body enters the buffer.
            header = bytes(buf) + bytes(data[: HEADER_SIZE - have])
            (length,) = _unpack_header(header)
            if length > self.max_frame_size:
                buf.clear()
                raise self._fail(FrameTooLarge(self._too_large(length)))
        buf += data

    def has_frame(self) -> bool:
        """Whether :meth:`next_frame` would return a payload (or raise) without more bytes."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return self._error is not None
        (length,) = _unpack_header(buf, pos)
        return bool(pos + HEADER_SIZE + length <= len(buf) or length > self.max_frame_size)

    def next_frame(self) -> bytes | None:
        """The next complete payload, or ``None`` until more bytes are fed."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if end - pos < HEADER_SIZE:
            return None
        (length,) = _unpack_header(buf, pos)
        if length > self.max_frame_size:
            raise self._fail(FrameTooLarge(self._too_large(length)))
        start = pos + HEADER_SIZE
        stop = start + length
        if stop > end:
            return None
        self._pos = stop
        if length <= _SMALL_FRAME:
            return bytes(buf[start:stop])  # two small copies beat a memoryview's setup
        with memoryview(buf) as view:  # one copy, and the export ends before any resize
            return view[start:stop].tobytes()

    def frames(self) -> Iterator[bytes]:
        """Every complete payload currently buffered, in order."""
        while (frame := self.next_frame()) is not None:
            yield frame

    def eof(self) -> None:
        """Mark the end of the stream; raises :class:`TruncatedFrame` if it ended mid-frame.

        Complete frames still buffered remain available from :meth:`next_frame`.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        self._closed = True
        buf = self._buf
        pos = self._pos
        end = len(buf)
        while pos < end:
            if end - pos < HEADER_SIZE:
                raise self._fail(
                    TruncatedFrame(f"stream ended inside a frame header ({end - pos} of 4 bytes)")
                )
            (length,) = _unpack_header(buf, pos)
            if length > self.max_frame_size:
                raise self._fail(FrameTooLarge(self._too_large(length)))
            stop = pos + HEADER_SIZE + length
            if stop > end:
                got = end - pos - HEADER_SIZE
                raise self._fail(TruncatedFrame(f"stream ended inside a frame ({got} of {length} bytes)"))
            pos = stop

    def _too_large(self, length: int) -> str:
        return f"frame of {length} bytes exceeds the limit of {self.max_frame_size} bytes"

    def _fail(self, error: ProtocolError) -> ProtocolError:
        self._error = error
        return error
