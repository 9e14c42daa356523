"""MdnsRegistry: two registries on 127.0.0.1 find each other; malformed announcements are skipped.

Everything stays on loopback. The multicast group is shared with anything else on the machine, so
each test uses its own service names and ignores events for other names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from trimicro.cluster.registry import Endpoint, Event, EventType, NodeInfo, Service, cluster_fingerprint
from trimicro.cluster.registry.mdns import (
    DEFAULT_SERVICE_TYPE,
    MAX_TXT_STRING,
    MdnsRegistry,
    decode_txt,
    encode_txt,
    instance_label,
)
from trimicro.mailbox.errors import NotFound

WAIT = 5.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def greeter(name: str, node_id: str = "node-a", port: int = 9001) -> Service:
    return Service(
        name=name,
        version="1.2.0",
        metadata={"team": "core", "region": "lab"},
        endpoints=(
            Endpoint("Greeter.hello", request={"name": "str"}, response={"msg": "str"}),
            Endpoint("Greeter.stream", metadata={"kind": "server"}, stream=True),
        ),
        nodes=(NodeInfo(node_id, f"127.0.0.1:{port}", metadata={"zone": "z1"}),),
    )


async def next_event(events: AsyncIterator[Event], name: str) -> Event:
    """The next event for ``name`` (others on the shared group are ignored), bounded in time."""
    with trio.fail_after(WAIT):
        async for event in events:
            if event.service.name == name:
                return event
    raise AssertionError("watch ended")


@pytest.fixture
async def pair() -> AsyncIterator[tuple[MdnsRegistry, MdnsRegistry]]:
    async with MdnsRegistry() as a, MdnsRegistry() as b:
        yield a, b


async def test_register_discover_deregister(pair: tuple[MdnsRegistry, MdnsRegistry]) -> None:
    a, b = pair
    name = unique("greeter")
    svc = greeter(name)
    async with b.watch(name) as events:
        await a.register(svc, ttl=30)
        created = await next_event(events, name)
        assert created.type is EventType.CREATE
        assert created.service == svc
        assert await b.get_service(name) == [svc]
        listed = [s for s in await b.list_services() if s.name == name]
        assert listed == [svc]
        # The registering side browses its own announcements too.
        assert await a.get_service(name) == [svc]

        # Re-registering with a change is an UPDATE; a second node merges into the same service.
        changed = svc.with_nodes([NodeInfo("node-a", "127.0.0.1:9002", metadata={"zone": "z2"})])
        await a.register(changed)
        updated = await next_event(events, name)
        assert updated.type is EventType.UPDATE
        assert updated.service == changed
        second = greeter(name, node_id="node-b", port=9003)
        await a.register(second)
        assert (await next_event(events, name)).type is EventType.CREATE
        [merged] = await b.get_service(name)
        assert {n.id: n.address for n in merged.nodes} == {
            "node-a": "127.0.0.1:9002",
            "node-b": "127.0.0.1:9003",
        }

        await a.deregister(changed)
        deleted = await next_event(events, name)
        assert deleted.type is EventType.DELETE
        assert deleted.service == changed
        await a.deregister(second)
        assert (await next_event(events, name)).type is EventType.DELETE
    with pytest.raises(NotFound):
        await b.get_service(name)


async def test_long_endpoint_list_is_split_and_round_trips(
    pair: tuple[MdnsRegistry, MdnsRegistry],
) -> None:
    a, b = pair
    name = unique("wide")
    endpoints = tuple(
        Endpoint(
            f"Wide.method_{i:02d}", request={"field_a": "str", "field_b": "int"}, response={"ok": "bool"}
        )
        for i in range(30)
    )
    svc = Service(name, "2", endpoints=endpoints, nodes=(NodeInfo("n1", "127.0.0.1:9100"),))
    txt = encode_txt(svc, svc.nodes[0])
    chunk_keys = [k for k in txt if k.startswith(b"e")]
    assert len(chunk_keys) > 3
    assert chunk_keys == [b"e%d" % i for i in range(len(chunk_keys))]
    assert all(len(k) + 1 + len(v) <= MAX_TXT_STRING for k, v in txt.items())
    assert decode_txt(txt) == svc

    async with b.watch(name) as events:
        await a.register(svc)
        event = await next_event(events, name)
    assert event.type is EventType.CREATE
    assert event.service == svc
    assert await b.get_service(name) == [svc]


async def test_record_over_cap_is_refused() -> None:
    name = unique("huge")
    endpoints = tuple(Endpoint(f"Huge.m{i}", request={f"f{j}": "str" for j in range(20)}) for i in range(60))
    svc = Service(name, endpoints=endpoints, nodes=(NodeInfo("n1", "127.0.0.1:1"),))
    with pytest.raises(ValueError, match="cap"):
        encode_txt(svc, svc.nodes[0])
    async with MdnsRegistry() as reg:
        with pytest.raises(ValueError, match="cap"):
            await reg.register(svc)
    too_long_name = Service("x" * 300, nodes=(NodeInfo("n1", "127.0.0.1:1"),))
    with pytest.raises(ValueError):
        encode_txt(too_long_name, too_long_name.nodes[0])


def _raw_info(name: str, node_id: str, props: dict[bytes, bytes]) -> ServiceInfo:
    label = instance_label(name, "1", node_id)
    return ServiceInfo(
        DEFAULT_SERVICE_TYPE,
        f"{label}.{DEFAULT_SERVICE_TYPE}",
        port=9200,
        properties=props,
        server=f"{label}.local.",
        parsed_addresses=["127.0.0.1"],
    )


def register_raw(raw: Zeroconf, infos: list[ServiceInfo]) -> None:
    """Register on a raw zeroconf without waiting for the follow-up announcements (worker thread)."""
    assert raw.loop is not None
    for info in infos:
        coro = raw.async_register_service(info, cooperating_responders=True)
        asyncio.run_coroutine_threadsafe(coro, raw.loop).result(WAIT)


async def test_malformed_instances_are_skipped(
    pair: tuple[MdnsRegistry, MdnsRegistry], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trimicro.cluster.registry")
    a, b = pair
    name = unique("bad")
    base = {b"n": name.encode(), b"v": b"1", b"a": b"127.0.0.1:9200", b"md": b"{}", b"e0": b"[]"}
    bad = [
        _raw_info(name, "json", {**base, b"id": b"json", b"e0": b"[{not json"}),
        _raw_info(name, "types", {**base, b"id": b"types", b"md": json.dumps({"s": [1, 2]}).encode()}),
        _raw_info(name, "ep", {**base, b"id": b"ep", b"e0": b'[{"n": 5}]'}),
        _raw_info(name, "flag", {**base, b"id": b"flag", b"e0": b'[{"n": "x", "s": "yes"}]'}),
        _raw_info(name, "utf8", {**base, b"id": b"utf8", b"v": b"\xff\xfe"}),
        _raw_info(name, "noname", {k: v for k, v in {**base, b"id": b"noname"}.items() if k != b"n"}),
        _raw_info(name, "cluster", {**base, b"id": b"cluster", b"c": b"ABC"}),  # not a fingerprint
        # Well-formed TXT, but announced under an instance name that is not its own.
        _raw_info(name, "other", {**base, b"id": b"mismatch"}),
    ]
    good = greeter(name, node_id="good")
    raw = await trio.to_thread.run_sync(
        lambda: Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    )
    try:
        async with b.watch(name) as events:
            await trio.to_thread.run_sync(register_raw, raw, bad)
            await a.register(good)
            event = await next_event(events, name)  # the bad ones, announced first, produced nothing
        assert event.type is EventType.CREATE
        assert event.service == good
        assert await b.get_service(name) == [good]
        # They did reach B (announcements on one socket arrive in order) and were skipped, not lost.
        skipped = [r.getMessage() for r in caplog.records if "skipping malformed" in r.getMessage()]
        assert all(any(repr(info.name) in m for m in skipped) for info in bad), skipped
    finally:
        await trio.to_thread.run_sync(raw.close)


async def test_aclose_withdraws_everything() -> None:
    name = unique("closing")
    svc = greeter(name)
    async with MdnsRegistry() as b:
        a = MdnsRegistry()
        async with b.watch(name) as events:
            await a.register(svc)
            assert (await next_event(events, name)).type is EventType.CREATE
            with trio.fail_after(WAIT):
                await a.aclose()
            gone = await next_event(events, name)
        assert gone.type is EventType.DELETE
        assert gone.service == svc
        with pytest.raises(NotFound):
            await b.get_service(name)
        await a.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await a.register(svc)


async def test_watcher_iterator_ends_on_aclose() -> None:
    reg = MdnsRegistry()
    async with reg.watch() as events:
        await reg.aclose()
        with trio.fail_after(WAIT):
            assert [e async for e in events] == []


async def test_queries_ask_for_multicast_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every zeroconf on the host listens on port 5353 (SO_REUSEPORT), and the kernel hands a
    unicast datagram to one of them only: an answer sent unicast (to zeroconf's default QU first
    query) often reached another process, and the asker found nothing until its next query, about a
    second later (the CLI's first lookup then sometimes ran out of its wait)."""
    sent: list[tuple[Zeroconf, Any]] = []
    real_send = Zeroconf.async_send

    def spy(self: Zeroconf, out: Any, *args: Any, **kwargs: Any) -> None:
        sent.append((self, out))
        real_send(self, out, *args, **kwargs)

    monkeypatch.setattr(Zeroconf, "async_send", spy)
    name = unique("asker")
    svc = greeter(name)
    async with MdnsRegistry() as a, MdnsRegistry() as bystander, MdnsRegistry() as b:
        await a.register(svc)
        await bystander.list_services()  # a third socket on the port, as with several processes
        async with b.watch(name) as events:  # b's browser starts here, after the announcement
            assert (await next_event(events, name)).service == svc
        assert await b.get_service(name) == [svc]
        b_zc = b._zc
        questions = [q for zc, out in sent if zc is b_zc for q in out.questions]
    assert questions, "the late registry asked nothing"
    assert not [q for q in questions if q.unicast], questions


CLUSTER_X = cluster_fingerprint(b"x" * 32)
CLUSTER_Y = cluster_fingerprint(b"y" * 32)


@given(
    name=st.text(min_size=1, max_size=40),
    version=st.text(max_size=10),
    node_id=st.text(min_size=1, max_size=40),
    key=st.binary(min_size=32, max_size=32),
)
def test_the_cluster_round_trips_and_keeps_nodes_of_two_clusters_apart(
    name: str, version: str, node_id: str, key: bytes
) -> None:
    """The same (name, version, node id) in two clusters are two DNS-SD instances: one instance
    name for both made each cluster's announcements overwrite the other's in every cache."""
    cluster = cluster_fingerprint(key)
    svc = Service(name, version, nodes=(NodeInfo(node_id, "127.0.0.1:1", cluster=cluster),))
    txt = encode_txt(svc, svc.nodes[0])
    assert txt[b"c"] == cluster.encode()
    label = instance_label(name, version, node_id, cluster)
    assert decode_txt(txt, f"{label}.{DEFAULT_SERVICE_TYPE}") == svc
    assert label != instance_label(name, version, node_id, CLUSTER_X if cluster != CLUSTER_X else CLUSTER_Y)
    assert label != instance_label(name, version, node_id)  # a record naming no cluster


@pytest.mark.parametrize(
    "value", [b"", b"ABCDEF0123456789ABCDEF0123456789", b"0" * 31, b"0" * 33, b"g" * 32, None]
)
def test_a_cluster_that_is_not_a_fingerprint_is_refused(value: bytes | None) -> None:
    svc = greeter("bad-cluster")
    props: dict[bytes, bytes | None] = {**encode_txt(svc, svc.nodes[0]), b"c": value}
    with pytest.raises(ValueError, match=r"b'c'|cluster"):
        decode_txt(props)
    if value:  # an empty cluster is left out: the record names none
        wrong = svc.with_nodes([NodeInfo("n1", "127.0.0.1:1", cluster=value.decode("latin-1"))])
        with pytest.raises(ValueError, match="cluster"):
            encode_txt(wrong, wrong.nodes[0])


async def test_two_clusters_announcing_the_same_node_id_are_both_seen(
    pair: tuple[MdnsRegistry, MdnsRegistry],
) -> None:
    a, b = pair
    name = unique("twins")
    x, y = (
        Service(name, "1", nodes=(NodeInfo("svc", f"127.0.0.1:{port}", cluster=cluster),))
        for port, cluster in ((9301, CLUSTER_X), (9302, CLUSTER_Y))
    )
    async with b.watch(name) as events:
        await a.register(x)
        await a.register(y)
        seen = {(await next_event(events, name)).service for _ in range(2)}
    assert seen == {x, y}
    assert sorted(await b.get_service(name), key=lambda s: s.nodes[0].address) == [x, y]
