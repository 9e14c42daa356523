"""Transports: TCP and in-process frame connections, and the secure channel over them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from trimicro.mailbox.framing import FrameTooLarge, ProtocolError, TruncatedFrame
from trimicro.mailbox.secure.stream import (
    HandshakeFailed,
    HandshakeTimeout,
    SecureConnection,
    SecureStreamError,
    secure_client,
    secure_server,
)
from trimicro.mailbox.transport import (
    Connection,
    InprocTransport,
    Listener,
    TcpTransport,
    Transport,
    TransportError,
    serve,
)


def accept_any(id_key: bytes, cert: bytes) -> bytes:
    return cert


async def closed_by_peer(conn: Connection) -> bool:
    """True once the peer closed (clean EOF) or reset (it left our bytes unread)."""
    try:
        return await conn.receive_frame() is None
    except TransportError:
        return True


async def echo(conn: Connection) -> None:
    while (frame := await conn.receive_frame()) is not None:
        await conn.send_frames([frame])


@pytest.fixture(params=["tcp", "inproc"])
async def transport_listener(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Transport, Listener]]:
    transport: Transport = TcpTransport() if request.param == "tcp" else InprocTransport()
    listener = await transport.listen("127.0.0.1:0" if request.param == "tcp" else "node-a")
    yield transport, listener
    await listener.aclose()


async def test_round_trip_and_coalesced_burst(transport_listener: tuple[Transport, Listener]) -> None:
    transport, listener = transport_listener
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, listener, echo)
        conn = await transport.dial(listener.address, timeout=5)
        await conn.send_frames([b"hello"])
        assert await conn.receive_frame() == b"hello"
        burst = [bytes([i % 256]) * (i * 37 % 5000) for i in range(200)] + [b"x" * 200_000]
        got: list[bytes | None] = []
        async with trio.open_nursery() as inner:  # send while reading: echo would fill both buffers
            inner.start_soon(conn.send_frames, burst)
            got = [await conn.receive_frame() for _ in burst]
        assert got == burst
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_tcp_send_frames_is_one_write() -> None:
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    writes: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, listener, echo)
        conn = await transport.dial(listener.address)
        stream = conn._stream
        original = stream.send_all

        async def counting_send_all(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            await original(data)

        stream.send_all = counting_send_all  # type: ignore[method-assign]
        await conn.send_frames([b"a", b"bb", b"ccc"])
        assert writes == [4 + 1 + 4 + 2 + 4 + 3]
        assert [await conn.receive_frame() for _ in range(3)] == [b"a", b"bb", b"ccc"]
        await conn.aclose()
        nursery.cancel_scope.cancel()
    await listener.aclose()


@pytest.mark.parametrize("kind", ["tcp", "inproc"])
async def test_oversize_frame_refused_listener_keeps_serving(kind: str) -> None:
    transport: Transport = (
        TcpTransport(max_frame_size=1024) if kind == "tcp" else InprocTransport(max_frame_size=1024)
    )
    listener = await transport.listen("127.0.0.1:0" if kind == "tcp" else "node-b")
    errors: list[ProtocolError] = []
    refused = trio.Event()

    async def handler(conn: Connection) -> None:
        try:
            await echo(conn)
        except ProtocolError as exc:
            errors.append(exc)
            refused.set()
            raise

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, listener, handler)
        bad = await transport.dial(listener.address)
        await bad.send_frames([b"x" * 2000])
        assert await closed_by_peer(bad)
        await refused.wait()
        assert isinstance(errors[0], FrameTooLarge)
        good = await transport.dial(listener.address)
        await good.send_frames([b"y" * 1024])
        assert await good.receive_frame() == b"y" * 1024
        await good.aclose()
        await bad.aclose()
        nursery.cancel_scope.cancel()
    await listener.aclose()


async def test_tcp_eof_mid_frame_is_truncated() -> None:
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _send_raw_then_close(listener.address, b"\x00\x00\x00\x10abc"))
        conn = await listener.accept()
        with pytest.raises(TruncatedFrame):
            await conn.receive_frame()
    await listener.aclose()


async def _send_raw_then_close(address: str, data: bytes) -> None:
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(data)
    await stream.aclose()


async def test_inproc_dial_unknown_address_refused() -> None:
    with pytest.raises(TransportError):
        await InprocTransport().dial("nowhere")


async def test_inproc_registries_are_per_instance() -> None:
    a, b = InprocTransport(), InprocTransport()
    listener = await a.listen("shared")
    with pytest.raises(TransportError):
        await b.dial("shared")
    with pytest.raises(TransportError):
        await a.listen("shared")
    await listener.aclose()


# -- secure channel


async def test_secure_mutual_auth_over_tcp() -> None:
    client_key, server_key = SigningKey.generate(), SigningKey.generate()
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    seen: dict[str, bytes] = {}

    async def server_side() -> None:
        raw = await listener.accept()
        conn = await secure_server(raw, server_key, b"server-cert", accept_any)
        seen["client_id"] = conn.peer_id_key
        seen["client_cert"] = conn.peer_info
        await echo(conn)
        await conn.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        conn = await secure_client(
            await transport.dial(listener.address), client_key, b"client-cert", accept_any
        )
        assert conn.peer_id_key == bytes(server_key.verify_key)
        assert conn.peer_info == b"server-cert"
        big = b"z" * 200_000  # spans several Noise transport messages
        await conn.send_frames([b"one", big, b"three"])
        assert [await conn.receive_frame() for _ in range(3)] == [b"one", big, b"three"]
        await conn.aclose()
    assert seen == {"client_id": bytes(client_key.verify_key), "client_cert": b"client-cert"}
    await listener.aclose()


async def test_secure_wrong_cert_refused_both_sides() -> None:
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")

    def only_trusted(id_key: bytes, cert: bytes) -> bytes:
        if cert != b"trusted":
            raise ValueError("untrusted certificate")
        return cert

    async def server_side() -> None:
        raw = await listener.accept()
        with pytest.raises((HandshakeFailed, TransportError)):
            await secure_server(raw, SigningKey.generate(), b"rogue", accept_any)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        raw = await transport.dial(listener.address)
        with pytest.raises(HandshakeFailed, match="untrusted"):
            await secure_client(raw, SigningKey.generate(), b"trusted", only_trusted)
    await listener.aclose()


async def test_secure_server_refuses_client_cert_tcp() -> None:
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")

    def refuse(id_key: bytes, cert: bytes) -> None:
        raise ValueError("no")

    async def server_side() -> None:
        raw = await listener.accept()
        with pytest.raises(HandshakeFailed):
            await secure_server(raw, SigningKey.generate(), b"s", refuse)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        conn = await secure_client(
            await transport.dial(listener.address), SigningKey.generate(), b"c", accept_any
        )
        assert await closed_by_peer(conn)  # dropped by the server
    await listener.aclose()


async def test_silent_peer_dropped_at_deadline_tcp() -> None:
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        silent = await transport.dial(listener.address)
        raw = await listener.accept()

        async def server_side() -> None:
            with pytest.raises(HandshakeTimeout):
                await secure_server(raw, SigningKey.generate(), b"s", accept_any, handshake_timeout=0.3)

        nursery.start_soon(server_side)
        assert await silent.receive_frame() is None  # dropped at the deadline
        await silent.aclose()
    await listener.aclose()


async def test_silent_peer_dropped_at_deadline_inproc(autojump_clock: trio.testing.MockClock) -> None:
    transport = InprocTransport()
    listener = await transport.listen("node")
    silent = await transport.dial("node")
    raw = await listener.accept()
    start = trio.current_time()
    with pytest.raises(HandshakeTimeout):
        await secure_client(raw, SigningKey.generate(), b"c", accept_any)
    assert trio.current_time() - start == pytest.approx(5.0)
    assert await silent.receive_frame() is not None  # the initiator's first message
    assert await silent.receive_frame() is None  # then the drop
    await listener.aclose()


async def test_oversize_handshake_message_refused_inproc() -> None:
    transport = InprocTransport()
    listener = await transport.listen("node")
    peer = await transport.dial("node")
    raw = await listener.accept()
    await peer.send_frames([b"\x00" * 70_000])
    with pytest.raises(HandshakeFailed, match="exceeds"):
        await secure_server(raw, SigningKey.generate(), b"s", accept_any)
    await listener.aclose()


class Tamper:
    """Wraps a connection and flips one ciphertext bit in outgoing frames once armed."""

    def __init__(self, inner: Connection) -> None:
        self.inner = inner
        self.armed = False

    @property
    def peer(self) -> object:
        return self.inner.peer

    @property
    def max_frame_size(self) -> int:
        return self.inner.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self.inner.max_frame_size = value

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        if self.armed:
            frames = [f[:-1] + bytes([f[-1] ^ 1]) for f in frames]
        await self.inner.send_frames(frames)

    async def receive_frame(self) -> bytes | None:
        return await self.inner.receive_frame()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_tampered_ciphertext_raises_and_closes() -> None:
    transport = InprocTransport()
    listener = await transport.listen("node")
    tamper = Tamper(await transport.dial("node"))
    raw = await listener.accept()
    async with trio.open_nursery() as nursery:
        results: dict[str, object] = {}

        async def server_side() -> None:
            results["server"] = await secure_server(raw, SigningKey.generate(), b"s", accept_any)

        nursery.start_soon(server_side)
        client = await secure_client(tamper, SigningKey.generate(), b"c", accept_any)
    server = results["server"]
    assert hasattr(server, "receive_frame")
    await client.send_frames([b"fine"])
    assert await server.receive_frame() == b"fine"  # type: ignore[attr-defined]
    tamper.armed = True
    await client.send_frames([b"evil"])
    with pytest.raises(SecureStreamError):
        await server.receive_frame()  # type: ignore[attr-defined]
    assert await client.receive_frame() is None  # the server closed the connection
    await listener.aclose()


async def test_write_now_keeps_what_the_socket_refuses_and_the_next_send_writes_it_first() -> None:
    """``write_now`` never waits: with the peer not reading, the socket buffer fills and the
    rest waits as backlog; the next ``send_frames`` sends it before its own frames, in order,
    sealed in order (no nonce skipped or reused)."""
    client_key, server_key = SigningKey.generate(), SigningKey.generate()
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    received: list[bytes] = []
    reading = trio.Event()

    async def server_side() -> None:
        conn = await secure_server(await listener.accept(), server_key, b"s", accept_any)
        await reading.wait()
        for _ in range(10_000):  # bounded: until the end marker
            frame = await conn.receive_frame()
            assert frame is not None
            received.append(frame)
            if frame == b"end":
                break
        await conn.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            conn = await secure_client(await transport.dial(listener.address), client_key, b"c", accept_any)
            sent = await fill_until_backlog(conn)
            reading.set()
            await conn.send_frames([b"after", b"end"])
            assert not conn.backlog
            assert conn.can_write_now()
    assert received == [*sent, b"after", b"end"]
    await listener.aclose()


async def fill_until_backlog(conn: SecureConnection) -> list[bytes]:
    sent: list[bytes] = []
    for i in range(200):  # 200 x 64 KiB: more than loopback buffers hold unread
        assert conn.can_write_now() or conn.backlog
        if conn.backlog:
            break
        frame = bytes([i % 256]) * 65_000
        conn.write_now([frame])
        sent.append(frame)
    assert conn.backlog, "the socket buffer never filled"
    assert not conn.can_write_now()  # nothing overtakes the backlog
    return sent


async def test_next_frame_nowait_only_when_a_frame_is_buffered() -> None:
    client_key, server_key = SigningKey.generate(), SigningKey.generate()
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        accepted: list[Connection] = []

        async def server_side() -> None:
            accepted.append(await secure_server(await listener.accept(), server_key, b"s", accept_any))

        nursery.start_soon(server_side)
        conn = await secure_client(await transport.dial(listener.address), client_key, b"c", accept_any)
    server = accepted[0]
    assert isinstance(server, SecureConnection)
    assert server.next_frame_nowait() is None
    await conn.send_frames([b"a", b"b"])
    assert await server.receive_frame() == b"a"  # both arrived in one write
    assert server.next_frame_nowait() == b"b"
    assert server.next_frame_nowait() is None
    await conn.aclose()
    await server.aclose()
    await listener.aclose()


async def test_tcp_reads_that_find_data_yield_only_every_few_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that need not wait is no scheduler pass (trio's ``receive_some`` made two), yet a
    reader that always finds data still lets other tasks run, and sees a cancellation, every
    YIELD_EVERY reads."""
    from trimicro.mailbox.framing import encode_frames
    from trimicro.mailbox.transport import tcp

    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    conn = await transport.dial(listener.address)  # (never accepted: the reads are stood in for)
    payload = b"x" * (tcp.RECEIVE_CHUNK - 4)
    chunk = encode_frames([payload])  # a full read every time: the socket is never "drained"
    monkeypatch.setattr(tcp, "_read", lambda fd, n: chunk)  # a peer that floods
    turns = 0

    async def other_task() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()
        turns = 0
        reads = 4 * tcp.YIELD_EVERY
        for _ in range(reads):
            assert await conn.receive_frame() == payload
        assert 1 <= turns <= reads // tcp.YIELD_EVERY + 1
        with trio.CancelScope() as scope:
            scope.cancel()
            for _ in range(tcp.YIELD_EVERY + 1):
                await conn.receive_frame()
        assert scope.cancelled_caught
        nursery.cancel_scope.cancel()
    monkeypatch.undo()
    await conn.aclose()
    await listener.aclose()


async def test_tcp_a_cancelled_receive_loses_no_data() -> None:
    """Cancellation is seen before a read takes bytes from the socket, never after."""
    transport = TcpTransport()
    listener = await transport.listen("127.0.0.1:0")
    conn = await transport.dial(listener.address)
    server = await listener.accept()
    await server.send_frames([b"one", b"two", b"three"])
    for _ in range(3):
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.receive_frame()
        assert scope.cancelled_caught
    assert [await conn.receive_frame() for _ in range(3)] == [b"one", b"two", b"three"]
    await conn.aclose()
    await server.aclose()
    await listener.aclose()
