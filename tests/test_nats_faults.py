"""The NATS server killed (SIGKILL) and restarted in the middle of traffic.

Two nodes on a server of this test's own: the publisher keeps publishing acknowledged messages
(JetStream), at-most-once ticks (core NATS) and store writes (KV) while the server is killed and
started again on the same port and folder. The nodes reconnect by themselves; every publish and
write that was acknowledged (returned without error) is there afterwards; ticks are lost only
while the server was away. The figures are printed (``-s``) for docs/nats.md.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import trio
from nats_server import NatsServer

from trimicro.actors import Actor
from trimicro.cluster import plugins
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.registry import NodeInfo, Service
from trimicro.cluster.store import Record
from trimicro.mailbox.errors import MicroError

PHASE = 40  # acknowledged operations of each kind before the kill, and again after the restart


class Seen:
    """What a subscriber received, and a wait until it holds a given set."""

    def __init__(self) -> None:
        self.bodies: set[object] = set()
        self._changed = trio.Event()

    def add(self, body: object) -> None:
        self.bodies.add(body)
        self._changed.set()
        self._changed = trio.Event()

    async def until_holds(self, wanted: set[object], deadline: float) -> None:
        with trio.fail_after(deadline):
            while not wanted <= self.bodies:
                await self._changed.wait()


class Collector(Actor):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def on_message(self, msg: Message) -> None:
        self.seen.add(msg.body)


class Traffic:
    """One kind of traffic: what was acknowledged, what failed, and a wait for "n more acked"."""

    def __init__(self) -> None:
        self.acked: list[object] = []
        self.failed = 0
        self._waiters: list[tuple[int, trio.Event]] = []

    def ok(self, item: object) -> None:
        self.acked.append(item)
        for n, event in self._waiters:
            if len(self.acked) >= n:
                event.set()

    async def until(self, n: int, deadline: float = 60.0) -> None:
        event = trio.Event()
        self._waiters.append((n, event))
        if len(self.acked) >= n:
            event.set()
        with trio.fail_after(deadline):
            await event.wait()


async def test_killing_and_restarting_the_server_loses_nothing_acknowledged(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "js")
    server.start()
    tag = uuid.uuid4().hex[:8]
    options = "timeout=2&reconnect_wait=0.2"
    chosen = {
        "registry": f"{server.url}?bucket=reg_{tag}&{options}",
        "broker": f"{server.url}?prefix=f{tag}&stream=F{tag}&ack_wait=2&{options}",
        "store": f"{server.url}?bucket_prefix=f{tag}&{options}",
    }
    acked, writes, ticks = Traffic(), Traffic(), Traffic()
    got_acked, got_ticks = Seen(), Seen()
    try:
        async with (
            start_cluster("pub", **chosen, home=tmp_path, membership=False) as pub,
            start_cluster("sub", **chosen, home=tmp_path, membership=False) as sub,
        ):
            await sub.pubsub.subscribe("orders", await sub.node.spawn(Collector, got_acked, name="orders"))
            await sub.pubsub.subscribe("ticks", await sub.node.spawn(Collector, got_ticks, name="ticks"))
            with trio.fail_after(10):
                while "sub" not in pub.pubsub.remote_interest:
                    await pub.pubsub.wait_interest()

            async def publish_acked() -> None:
                for i in range(1_000_000):
                    try:
                        await pub.publish("orders", i, ack=True, ack_timeout=1.0, max_deliveries=20)
                    except MicroError:
                        acked.failed += 1
                    else:
                        acked.ok(i)

            async def write() -> None:
                for i in range(1_000_000):
                    try:
                        await pub.store.write(Record(f"k{i}", str(i).encode()))
                    except MicroError:
                        writes.failed += 1
                    else:
                        writes.ok(f"k{i}")

            async def tick() -> None:
                for i in range(1_000_000):
                    try:
                        await pub.publish("ticks", i)
                    except MicroError:
                        ticks.failed += 1
                    else:
                        ticks.ok(i)
                    await trio.sleep(0.002)  # a steady rate, not a synchronisation

            async with trio.open_nursery() as nursery:
                for traffic in (publish_acked, write, tick):
                    nursery.start_soon(traffic)
                await acked.until(PHASE)
                await writes.until(PHASE)
                connections = (pub.pubsub.conn, sub.pubsub.conn, pub.store.conn, pub.registry.conn)
                back = [trio.Event() for _ in connections]
                for connection, event in zip(connections, back, strict=True):
                    connection.on_reconnect.append(event.set)
                ticks_before = len(ticks.acked)
                killed_at = time.monotonic()
                server.kill()
                server.start()
                with trio.fail_after(60):
                    for event in back:
                        await event.wait()
                back_after = time.monotonic() - killed_at
                ticks_down = len(ticks.acked) - ticks_before
                first_tick_after = len(ticks.acked)
                await acked.until(len(acked.acked) + PHASE)
                await writes.until(len(writes.acked) + PHASE)
                await ticks.until(first_tick_after + 200)
                nursery.cancel_scope.cancel()

            # Every acknowledged publish reaches the subscriber (redelivered if need be).
            await got_acked.until_holds(set(acked.acked), 60)
            # Ticks published once every connection was back all arrive; the lost ones were in flight.
            after = set(ticks.acked[first_tick_after:])
            await got_ticks.until_holds(after, 10)
            lost_ticks = len(set(ticks.acked) - got_ticks.bodies)
            # The registry works again: a registration made now is seen by the other node.
            async with pub.registry.watch("after-restart") as events:
                await sub.registry.register(Service("after-restart", nodes=(NodeInfo("sub", "127.0.0.1:1"),)))
                with trio.fail_after(10):
                    await anext(events)
            assert [n.id for n in (await pub.registry.get_service("after-restart"))[0].nodes] == ["sub"]
        store = plugins.load("store", chosen["store"])
        try:
            missing = [k for k in writes.acked if not await _has(store, str(k))]
        finally:
            await store.aclose()
        assert missing == []
        print(
            f"\nNATS restart: connections back after {back_after:.2f} s; "
            f"acked publishes {len(acked.acked)} ok / {acked.failed} failed / 0 lost; "
            f"store writes {len(writes.acked)} ok / {writes.failed} failed / 0 lost; "
            f"ticks {len(ticks.acked)} published ({ticks_down} while down), {lost_ticks} lost, "
            f"all {len(after)} after the reconnect delivered"
        )
    finally:
        server.stop()


async def _has(store: object, key: str) -> bool:
    try:
        await store.read(key)  # type: ignore[attr-defined]
    except MicroError:
        return False
    return True
