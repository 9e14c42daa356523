"""Pub/sub across real processes: a queue group keeps every message when a member is SIGKILLed
mid-stream (acknowledged mode), and delivers each message to one member only (default mode);
plain subscriptions fan out to every subscriber in publish order; wildcard patterns route as
NATS does; a subscription dies with its actor and the other nodes stop sending to it."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import trio
from procs import Proc, python_process

from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.registry import MdnsRegistry

PEER = str(Path(__file__).resolve().parent / "pubsub_peer.py")
ACTOR_PEER = str(Path(__file__).resolve().parent / "pubsub_actor_peer.py")


async def got_lines(proc: Proc) -> list[int]:
    """Every ``got N`` the process printed, up to its exit."""
    seen: list[int] = []
    with trio.move_on_after(10):
        while True:
            try:
                line = await proc.line()
            except EOFError:
                break
            if line.startswith("got "):
                seen.append(int(line.split()[1]))
    return seen


async def interest_from(cluster: Cluster, *node_ids: str) -> None:
    with trio.fail_after(15):
        while not all(cluster.pubsub.remote_interest.get(n) for n in node_ids):
            await cluster.pubsub.wait_interest()


def service_type() -> str:
    return f"_t{uuid.uuid4().hex[:10]}._tcp.local."


async def ready(*procs: Proc) -> None:
    for proc in procs:
        with trio.fail_after(30):
            assert await proc.line() == "ready"


async def interest_is(cluster: Cluster, node_id: str, expected: list[tuple[str, str, int]]) -> None:
    """Wait until ``node_id``'s interest, as ``cluster`` knows it, is exactly ``expected``."""
    with trio.fail_after(15):
        while cluster.pubsub.remote_interest.get(node_id) != expected:
            await cluster.pubsub.wait_interest()


Got = tuple[str, str, str]  # (label, topic, body) of a ``got`` line of pubsub_actor_peer.py


def parse_got(lines: list[str]) -> list[Got]:
    out: list[Got] = []
    for line in lines:
        if line.startswith("got "):
            _, label, topic, body = line.split(" ", 3)
            out.append((label, topic, body))
    return out


async def lines_until(proc: Proc, done: Callable[[list[str]], bool]) -> list[str]:
    """The lines ``proc`` prints until ``done(lines_so_far)`` holds."""
    lines: list[str] = []
    with trio.fail_after(15):
        while not done(lines):
            lines.append(await proc.line())
    return lines


def bodies_of(lines: list[str], label: str) -> list[str]:
    return [body for lab, _, body in parse_got(lines) if lab == label]


async def test_queue_group_member_killed_mid_stream(tmp_path: Path) -> None:
    stype = f"_t{uuid.uuid4().hex[:10]}._tcp.local."
    args = [str(tmp_path), stype, "jobs", "workers"]
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("pub", registry=registry, home=tmp_path) as me,
        python_process(PEER, str(tmp_path), "w1", *args[1:]) as w1,
        python_process(PEER, str(tmp_path), "w2", *args[1:]) as w2,
    ):
        for proc in (w1, w2):
            with trio.fail_after(30):
                assert await proc.line() == "ready"
        await interest_from(me, "w1", "w2")

        # Default mode (at most once): each message to exactly one member.
        for i in range(200):
            await me.publish("jobs", i)
        # Acknowledged mode: kill a member mid-stream; nothing may be lost.
        for i in range(1000, 1300):
            if i == 1100:
                w1.signal(signal.SIGKILL)
            assert await me.publish("jobs", i, ack=True, ack_timeout=2) == 1
        w2.signal(signal.SIGKILL)
        seen1, seen2 = await got_lines(w1), await got_lines(w2)

    default = [i for i in seen1 + seen2 if i < 1000]
    assert sorted(default) == list(range(200))  # none lost on a healthy cluster, none duplicated
    assert {i for i in seen1 if i < 1000} and {i for i in seen2 if i < 1000}  # both took a share
    acked = {i for i in seen1 + seen2 if i >= 1000}
    assert acked == set(range(1000, 1300))  # every acknowledged message arrived somewhere


async def test_fan_out_to_every_subscriber_in_order(tmp_path: Path) -> None:
    """Plain subscriptions on three other processes (one with two subscribers) each get all
    messages, in publish order; the publisher sends each message once per node."""
    stype, home = service_type(), str(tmp_path)
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("pub", registry=registry, home=tmp_path) as me,
        python_process(ACTOR_PEER, home, "f1", stype, "a=feed", "b=feed") as f1,
        python_process(ACTOR_PEER, home, "f2", stype, "c=feed") as f2,
        python_process(ACTOR_PEER, home, "f3", stype, "d=feed") as f3,
    ):
        await ready(f1, f2, f3)
        await interest_is(me, "f1", [("feed", "", 2)])
        await interest_is(me, "f2", [("feed", "", 1)])
        await interest_is(me, "f3", [("feed", "", 1)])

        n = 100
        for i in range(n):
            assert await me.publish("feed", i) == 3  # one send per subscribing node
        expected = [str(i) for i in range(n)]
        for proc, labels in ((f1, "ab"), (f2, "c"), (f3, "d")):
            lines = await lines_until(
                proc, lambda ls, labels=labels: all(len(bodies_of(ls, lab)) == n for lab in labels)
            )
            for label in labels:
                assert bodies_of(lines, label) == expected  # all of them, in publish order
            assert {lab for lab, _, _ in parse_got(lines)} == set(labels)


async def test_wildcard_routing(tmp_path: Path) -> None:
    """``*`` matches one token, ``>`` one or more; a node gets only what its patterns match."""
    stype, home = service_type(), str(tmp_path)
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("pub", registry=registry, home=tmp_path) as me,
        python_process(ACTOR_PEER, home, "w1", stype, "star=orders.*", "pay=payments.*") as w1,
        python_process(ACTOR_PEER, home, "w2", stype, "gt=orders.>") as w2,
    ):
        await ready(w1, w2)
        await interest_is(me, "w1", [("orders.*", "", 1), ("payments.*", "", 1)])
        await interest_is(me, "w2", [("orders.>", "", 1)])

        sent = {
            topic: await me.publish(topic, topic)
            for topic in ("orders.created", "orders.eu.created", "payments.done", "other.x", "orders")
        }
        # Deliveries are counted per node: orders.created goes to both, other.x and orders to none.
        assert sent == {
            "orders.created": 2,
            "orders.eu.created": 1,
            "payments.done": 1,
            "other.x": 0,
            "orders": 0,
        }
        # An end marker per subscription: each one's messages arrive in order, so once its marker
        # is printed everything published to it before has been too.
        assert await me.publish("orders.end", "end") == 2
        assert await me.publish("payments.end", "end") == 1
        lines1 = await lines_until(
            w1, lambda ls: "end" in bodies_of(ls, "star") and "end" in bodies_of(ls, "pay")
        )
        lines2 = await lines_until(w2, lambda ls: "end" in bodies_of(ls, "gt"))

    got = parse_got(lines1) + parse_got(lines2)
    assert sorted(got) == sorted(
        [
            ("star", "orders.created", "orders.created"),
            ("star", "orders.end", "end"),
            ("gt", "orders.created", "orders.created"),
            ("gt", "orders.eu.created", "orders.eu.created"),
            ("gt", "orders.end", "end"),
            ("pay", "payments.done", "payments.done"),
            ("pay", "payments.end", "end"),
        ]
    )


async def test_subscription_dies_with_its_actor(tmp_path: Path) -> None:
    """When a subscribed actor in another process stops itself, that process withdraws the
    interest and the publisher stops sending: the pattern's count drops, then the pattern goes."""
    stype, home = service_type(), str(tmp_path)
    async with (
        MdnsRegistry(service_type=stype) as registry,
        start_cluster("pub", registry=registry, home=tmp_path) as me,
        python_process(ACTOR_PEER, home, "s1", stype, "a=news", "b=news", "c=alerts") as s1,
    ):
        await ready(s1)
        await interest_is(me, "s1", [("alerts", "", 1), ("news", "", 2)])

        # ``a`` stops itself on its message; ``b`` (same pattern) and ``c`` carry on.
        assert await me.publish("news", "stop a") == 1
        lines = await lines_until(s1, lambda ls: "stopped a" in ls and "stop a" in bodies_of(ls, "b"))
        assert bodies_of(lines, "a") == ["stop a"]
        await interest_is(me, "s1", [("alerts", "", 1), ("news", "", 1)])

        assert await me.publish("news", "one") == 1
        lines = await lines_until(s1, lambda ls: "one" in bodies_of(ls, "b"))
        assert parse_got(lines) == [("b", "news", "one")]  # nothing more for the stopped ``a``

        # The last subscriber of ``news`` stops: the pattern leaves s1's interest altogether.
        assert await me.publish("news", "stop b") == 1
        lines = await lines_until(s1, lambda ls: "stopped b" in ls)
        assert parse_got(lines) == [("b", "news", "stop b")]
        await interest_is(me, "s1", [("alerts", "", 1)])

        assert await me.publish("news", "late") == 0  # not sent to s1 at all
        assert await me.publish("alerts", "ping") == 1
        # One link, in order: had "late" gone out, it would be printed before "ping".
        lines = await lines_until(s1, lambda ls: "ping" in bodies_of(ls, "c"))
        assert lines == ["got c alerts ping"]
