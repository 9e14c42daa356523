"""The registry conformance suite: :class:`RegistryConformance`."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from trimicro.cluster.registry import Endpoint, Event, EventType, NodeInfo, Registry, Service
from trimicro.mailbox.errors import NotFound

__all__ = ["RegistryConformance"]


def _name(what: str) -> str:
    """A service name no other test (nor another process on a shared medium) uses."""
    return f"conf-{what}-{uuid.uuid4().hex[:10]}"


def _service(name: str, *node_ids: str, version: str = "1.0.0", tag: str = "a") -> Service:
    """A full record (metadata, endpoints, node metadata): every field must come back as given."""
    return Service(
        name=name,
        version=version,
        metadata={"team": "conformance", "tag": tag},
        endpoints=(
            Endpoint("Greeter.hello", request={"name": "str"}, response={"msg": "str"}),
            Endpoint("Greeter.stream", metadata={"kind": "server"}, stream=True),
        ),
        nodes=tuple(
            NodeInfo(node_id, f"127.0.0.1:{9000 + i}", metadata={"zone": f"z{i}"})
            for i, node_id in enumerate(node_ids)
        ),
    )


def _node_ids(services: list[Service]) -> set[str]:
    return {node.id for svc in services for node in svc.nodes}


class RegistryConformance:
    """What every :class:`~trimicro.cluster.registry.Registry` must do (Go Micro's registry).

    **Fixtures to override.**

    * ``registry`` (required): yields the implementation under test, open and ready, and closes
      it afterwards. Each check uses service names of its own (random), so a registry shared
      with other tests or processes is fine.
    * ``observer`` (optional): a second view of the same registry, as another process sees it
      (for mDNS: a second registry on the same interface). The checks register through
      ``registry`` and look through ``observer``. Default: ``registry`` itself.
    * ``clock`` (optional): the trio clock the checks run under, chosen by pytest-trio because
      a check asks for this fixture. Default ``None``: real time. A registry whose TTLs are
      measured on trio's clock (as :class:`~trimicro.cluster.registry.MemoryRegistry`) returns
      ``trio.testing.MockClock(autojump_threshold=0)``: the TTL checks then take no wall time.

    **Knobs (class attributes).** ``deadline``: seconds any one wait may take (raise it for a
    registry across a slow network). ``ttl``: the TTL the expiry checks register with; on real
    time it must exceed the registry's expiry granularity, and a refresh check relies on a
    re-registration landing within ``0.4 * ttl``. ``ttl_expires``: ``False`` for a registry in
    which a record stays listed for as long as its announcer runs, whatever the TTL (mDNS: the
    announcer answers queries; the TTL only bounds how long peers trust a record after the
    announcer vanished without a goodbye); the checks of TTL expiry are then skipped, saying so.

    **Promises checked.** A registered record comes back whole (metadata, endpoints, nodes);
    registrations of one (name, version) merge their nodes, versions stay apart; deregister
    withdraws exactly the given nodes and ignores unknown ones; registering again updates; an
    unknown name raises ``NotFound``; a registration lapses ``ttl`` seconds after it was last
    made, not before, and registering again refreshes it; a watcher gets, for each node, CREATE
    then UPDATE then DELETE in the order of the changes (a lapse is a DELETE too, seen by a
    waiting watcher without any other call), each event naming the node it is about; a watcher
    of one service sees only that service; every watcher gets every event.
    """

    pytestmark = pytest.mark.trio

    deadline: float = 10.0
    ttl: float = 2.0
    ttl_expires: bool = True

    @pytest.fixture
    def registry(self) -> Registry:
        raise NotImplementedError(
            f"{type(self).__name__}: override the `registry` fixture to yield the registry under test"
        )

    @pytest.fixture
    def observer(self, registry: Registry) -> Registry:
        return registry

    @pytest.fixture
    def clock(self) -> trio.abc.Clock | None:
        return None

    # ---- helpers ------------------------------------------------------------------------------

    async def next_event(self, events: AsyncIterator[Event], name: str) -> Event:
        """The next event about ``name`` (others are ignored: the medium may be shared)."""
        with trio.fail_after(self.deadline):
            async for event in events:
                if event.service.name == name:
                    return event
        raise AssertionError(f"the watch ended before an event about {name} came")

    async def expect(self, events: AsyncIterator[Event], name: str, kind: EventType, node_id: str) -> Event:
        event = await self.next_event(events, name)
        assert (event.type, [n.id for n in event.service.nodes]) == (kind, [node_id])
        return event

    def skip_unless_ttl_expires(self) -> None:
        if not self.ttl_expires:
            pytest.skip(
                f"{type(self).__name__}.ttl_expires is False: records live as long as their announcer"
            )

    # ---- register, look up, deregister --------------------------------------------------------

    async def test_a_registered_service_comes_back_whole(
        self, registry: Registry, observer: Registry
    ) -> None:
        """get_service returns the record as registered: metadata, endpoints, node metadata."""
        name = _name("whole")
        svc = _service(name, "node-1")
        async with observer.watch(name) as events:
            await registry.register(svc)
            await self.expect(events, name, EventType.CREATE, "node-1")
        assert await observer.get_service(name) == [svc]
        assert name in {s.name for s in await observer.list_services()}

    async def test_an_unknown_service_is_not_found(self, observer: Registry) -> None:
        with pytest.raises(NotFound):
            await observer.get_service(_name("unknown"))

    async def test_registrations_of_one_version_merge_their_nodes(
        self, registry: Registry, observer: Registry
    ) -> None:
        """Nodes registered one by one, or several in one call, make one record per version."""
        name = _name("merge")
        async with observer.watch(name) as events:
            await registry.register(_service(name, "node-1"))
            await self.expect(events, name, EventType.CREATE, "node-1")
            await registry.register(_service(name, "node-2", "node-3"))
            seen = {(await self.next_event(events, name)).service.nodes[0].id for _ in range(2)}
            assert seen == {"node-2", "node-3"}
        found = await observer.get_service(name)
        assert len(found) == 1 and _node_ids(found) == {"node-1", "node-2", "node-3"}

    async def test_versions_are_kept_apart(self, registry: Registry, observer: Registry) -> None:
        name = _name("versions")
        async with observer.watch(name) as events:
            await registry.register(_service(name, "node-1", version="1.0.0"))
            await self.expect(events, name, EventType.CREATE, "node-1")
            await registry.register(_service(name, "node-2", version="2.0.0"))
            await self.expect(events, name, EventType.CREATE, "node-2")
        found = await observer.get_service(name)
        assert sorted((s.version, [n.id for n in s.nodes]) for s in found) == [
            ("1.0.0", ["node-1"]),
            ("2.0.0", ["node-2"]),
        ]

    async def test_deregister_withdraws_exactly_the_given_nodes(
        self, registry: Registry, observer: Registry
    ) -> None:
        name = _name("dereg")
        async with observer.watch(name) as events:
            await registry.register(_service(name, "node-1", "node-2"))
            await self.next_event(events, name)
            await self.next_event(events, name)
            await registry.deregister(_service(name, "node-1"))
            await self.expect(events, name, EventType.DELETE, "node-1")
            assert _node_ids(await observer.get_service(name)) == {"node-2"}
            await registry.deregister(_service(name, "node-2"))
            await self.expect(events, name, EventType.DELETE, "node-2")
        with pytest.raises(NotFound):
            await observer.get_service(name)
        assert name not in {s.name for s in await observer.list_services()}

    async def test_deregistering_what_is_not_registered_changes_nothing(
        self, registry: Registry, observer: Registry
    ) -> None:
        name = _name("noop")
        await registry.deregister(_service(_name("never"), "node-1"))  # no error
        async with observer.watch(name) as events:
            await registry.register(_service(name, "node-1"))
            await self.expect(events, name, EventType.CREATE, "node-1")
            await registry.deregister(_service(name, "node-9"))  # a node it never had
            await registry.deregister(_service(name, "node-1", version="9.9.9"))  # another version
            await registry.register(_service(name, "node-2"))
            # The next event is node-2's: the two deregistrations emitted nothing.
            await self.expect(events, name, EventType.CREATE, "node-2")
        assert _node_ids(await observer.get_service(name)) == {"node-1", "node-2"}

    async def test_registering_again_updates_the_record(self, registry: Registry, observer: Registry) -> None:
        name = _name("update")
        async with observer.watch(name) as events:
            await registry.register(_service(name, "node-1", tag="old"))
            await self.expect(events, name, EventType.CREATE, "node-1")
            new = _service(name, "node-1", tag="new")
            await registry.register(new)
            update = await self.expect(events, name, EventType.UPDATE, "node-1")
            assert update.service.metadata["tag"] == "new"
        assert await observer.get_service(name) == [new]

    # ---- watch -----------------------------------------------------------------------------------

    async def test_a_watcher_sees_create_update_delete_in_order(
        self, registry: Registry, observer: Registry
    ) -> None:
        """The events about one node come in the order of its changes, each naming that node."""
        name = _name("order")
        async with observer.watch(name) as events:
            for round_ in range(3):
                svc = _service(name, "node-1", tag=f"r{round_}")
                await registry.register(svc)
                created = await self.expect(events, name, EventType.CREATE, "node-1")
                assert created.service == svc
                await registry.register(_service(name, "node-1", tag=f"r{round_}-changed"))
                await self.expect(events, name, EventType.UPDATE, "node-1")
                await registry.deregister(svc)
                await self.expect(events, name, EventType.DELETE, "node-1")

    async def test_a_watcher_of_one_service_sees_only_that_service(
        self, registry: Registry, observer: Registry
    ) -> None:
        wanted, other = _name("wanted"), _name("other")
        async with observer.watch(wanted) as mine, observer.watch() as everything:
            await registry.register(_service(other, "node-1"))
            await self.expect(everything, other, EventType.CREATE, "node-1")
            await registry.register(_service(wanted, "node-1"))
            await self.expect(everything, wanted, EventType.CREATE, "node-1")
            await registry.deregister(_service(wanted, "node-1"))
            await self.expect(everything, wanted, EventType.DELETE, "node-1")
            with trio.fail_after(self.deadline):
                first, second = await mine.__anext__(), await mine.__anext__()
            assert [(e.service.name, e.type) for e in (first, second)] == [
                (wanted, EventType.CREATE),
                (wanted, EventType.DELETE),
            ]

    async def test_every_watcher_gets_every_event(self, registry: Registry, observer: Registry) -> None:
        name = _name("fanout")
        async with observer.watch(name) as one, observer.watch(name) as two, observer.watch() as three:
            await registry.register(_service(name, "node-1"))
            for events in (one, two, three):
                await self.expect(events, name, EventType.CREATE, "node-1")
            await registry.deregister(_service(name, "node-1"))
            for events in (one, two, three):
                await self.expect(events, name, EventType.DELETE, "node-1")

    # ---- TTL ---------------------------------------------------------------------------------------

    async def test_a_registration_lapses_after_its_ttl_and_not_before(
        self, registry: Registry, observer: Registry, clock: trio.abc.Clock | None
    ) -> None:
        """A watcher waiting on a quiet registry sees the lapse as a DELETE; then it is gone."""
        self.skip_unless_ttl_expires()
        name, keeper = _name("ttl"), _name("keeper")
        await registry.register(_service(keeper, "node-1"))  # no TTL: never lapses
        async with observer.watch(name) as events:
            start = trio.current_time()
            await registry.register(_service(name, "node-1"), ttl=self.ttl)
            await self.expect(events, name, EventType.CREATE, "node-1")
            await trio.sleep_until(start + self.ttl / 2)
            assert _node_ids(await observer.get_service(name)) == {"node-1"}
            with trio.fail_after(self.ttl + self.deadline):
                await self.expect(events, name, EventType.DELETE, "node-1")
            assert trio.current_time() - start >= self.ttl * 0.9, "deleted before its TTL"
        with pytest.raises(NotFound):
            await observer.get_service(name)
        assert name not in {s.name for s in await observer.list_services()}
        assert _node_ids(await observer.get_service(keeper)) == {"node-1"}

    async def test_registering_again_refreshes_the_ttl(
        self, registry: Registry, observer: Registry, clock: trio.abc.Clock | None
    ) -> None:
        """The heartbeat of Go Micro: a node re-registered within its TTL stays listed."""
        self.skip_unless_ttl_expires()
        name = _name("refresh")
        svc = _service(name, "node-1")
        await registry.register(svc, ttl=self.ttl)
        for _ in range(3):
            await trio.sleep(self.ttl * 0.6)
            await registry.register(svc, ttl=self.ttl)
        await trio.sleep(self.ttl * 0.6)
        assert _node_ids(await observer.get_service(name)) == {"node-1"}
