"""Multicast DNS (DNS-SD) registry: Go Micro's default discovery, on python-zeroconf.

**Loopback only unless asked.** :class:`MdnsRegistry` binds zeroconf to ``127.0.0.1`` (IPv4 only) by
default, so announcements and queries never leave the machine: nodes of one host find each other
without leaking service names, node ids and addresses onto a LAN, and tests cannot disturb (or be
disturbed by) other machines. Pass ``interfaces=[...]`` (interface addresses) explicitly to announce
on a real network.

**Record layout**: one DNS-SD instance per (service, version, node, cluster), the whole record in
its TXT strings, encoded and decoded (untrusted) by :mod:`.txt` (see there, and docs/protocol.md,
section 7); :meth:`MdnsRegistry.register` raises :class:`ValueError` for a record too big to announce.

**A record is only a hint.** Anyone on the segment can announce anything; the node id and address
are checked by the secure handshake (the certificate must be for that node id), so a forged or stale
record costs a failed dial, never captured traffic. Staleness is expected too: a node that dies
without sending goodbye packets stays listed until its PTR record expires in peers' caches (zeroconf
raises received PTR TTLs to at least 1125 s), so callers must treat dial failures as normal.

**Threads.** zeroconf runs its own asyncio loop in a background thread. Coroutines are submitted to it
with :func:`asyncio.run_coroutine_threadsafe` and their completion is reported back to trio through a
:class:`trio.lowlevel.TrioToken` (no worker thread is held while waiting); the blocking constructor and
``close`` run in trio worker threads. Browser callbacks run on zeroconf's loop, resolve the instance
there, and post results to trio with ``TrioToken.run_sync_soon`` (never blocking zeroconf's loop on
trio); a per-instance generation counter drops resolutions overtaken by later changes.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import math
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import attrs
import trio
from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    IPVersion,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from trimicro.mailbox.errors import NotFound
from trimicro.mailbox.logs import get_logger

from . import Event, EventType, NodeInfo, Service, Watchers, merge_nodes
from .txt import DEFAULT_SERVICE_TYPE, MAX_TXT_BYTES, MAX_TXT_STRING, decode_txt, encode_txt, instance_label

__all__ = [
    "DEFAULT_SERVICE_TYPE",
    "MAX_TXT_BYTES",
    "MAX_TXT_STRING",
    "MdnsRegistry",
    "decode_txt",
    "encode_txt",
    "instance_label",
]

# The logger keeps its name from before the registry became a package: logging setups name it.
log = get_logger(__package__)

_T = TypeVar("_T")


_DEFAULT_TTL = 120  # seconds, RFC 6762's host-record TTL; used for every record we announce
_MIN_TTL = 10  # liveness comes from zeroconf answering queries, so tiny TTLs only add query traffic
_MAX_TTL = 4500  # zeroconf's default for non-host records (75 minutes)
_RESOLVE_TIMEOUT_MS = 1000
_WARMUP_SECONDS = 0.5
_ASK_MULTICAST = DNSQuestionType.QM  # see _zc_browse
_WATCH_BUFFER = 1024
_CLOSE_TIMEOUT = 10.0


# --------------------------------------------------------------------------- the registry


@attrs.frozen
class _Resolved:
    """What the zeroconf thread hands to trio about one resolved instance."""

    name: str
    properties: dict[bytes, bytes | None]


def _dns_ttl(ttl: float | None) -> int:
    if ttl is None:
        return _DEFAULT_TTL
    if not math.isfinite(ttl):
        return _MAX_TTL if ttl > 0 else _MIN_TTL
    return max(_MIN_TTL, min(_MAX_TTL, math.ceil(ttl)))


def _split_host_port(address: str) -> tuple[str, int]:
    host, sep, port_text = address.rpartition(":")
    if not sep:
        return address, 0
    host = host.removeprefix("[").removesuffix("]")
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else 0
    return host, port if port <= 65535 else 0


def _ip_literal(text: str) -> bool:
    try:
        return not ipaddress.ip_address(text).is_unspecified
    except ValueError:
        return False


class MdnsRegistry:
    """A :class:`~trimicro.cluster.registry.Registry` over multicast DNS-SD (zeroconf).

    Binds to ``interfaces`` (default: loopback only, see the module docstring). Start-up is lazy:
    zeroconf is opened by the first call, and the browser that feeds :meth:`get_service`,
    :meth:`list_services` and :meth:`watch` by the first of those. One instance belongs to one trio
    run; close it with :meth:`aclose` or ``async with``.
    """

    def __init__(
        self,
        interfaces: Sequence[str] = ("127.0.0.1",),
        *,
        domain: str = "local.",
        service_type: str = DEFAULT_SERVICE_TYPE,
    ) -> None:
        if isinstance(interfaces, str):
            interfaces = (interfaces,)
        if not interfaces:
            raise ValueError("mdns: interfaces must name at least one address")
        if not domain.endswith(".") or not service_type.lower().endswith("." + domain.lower()):
            raise ValueError(f"mdns: service type {service_type!r} is not in domain {domain!r}")
        try:  # ServiceInfo checks the type the way zeroconf will use it
            ServiceInfo(service_type, f"probe.{service_type}")
        except BadTypeInNameException as exc:
            raise ValueError(f"mdns: bad service type {service_type!r}: {exc}") from exc
        self._interfaces = tuple(interfaces)
        self._domain = domain
        self._type = service_type
        self._zc: Zeroconf | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._start_lock = trio.Lock()
        self._write_lock = trio.Lock()
        self._closed = False
        # trio side
        self._registered: dict[str, ServiceInfo] = {}  # instance label -> what we announce
        #: Instance label -> zeroconf's task still sending that instance's announcements (used
        #: on zeroconf's loop only): a goodbye must never be overtaken by one of them.
        self._announcing: dict[str, asyncio.Future[Any]] = {}
        self._cache: dict[str, Service] = {}  # lower-case instance name -> one-node record
        self._watchers = Watchers(_WATCH_BUFFER)
        self._browsing = False
        self._warm_until = -math.inf
        # zeroconf-loop side (touched only on zeroconf's thread)
        self._browser: AsyncServiceBrowser | None = None
        self._generation = itertools.count(1)
        self._current: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> MdnsRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _ensure_started(self) -> Zeroconf:
        if self._closed:
            raise trio.ClosedResourceError("mdns registry is closed")
        if self._zc is not None:
            return self._zc
        async with self._start_lock:
            if self._zc is None:
                self._token = trio.lowlevel.current_trio_token()
                all_v4 = all(":" not in i for i in self._interfaces)
                make = functools.partial(
                    Zeroconf,
                    interfaces=list(self._interfaces),
                    ip_version=IPVersion.V4Only if all_v4 else None,
                )
                # Not abandoned on cancel: an abandoned constructor would leak sockets and a thread.
                self._zc = await trio.to_thread.run_sync(make)
            if self._closed:  # closed while we were starting
                raise trio.ClosedResourceError("mdns registry is closed")
            return self._zc

    async def _in_zc(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on zeroconf's loop and wait for it without holding a thread."""
        zc, token = self._zc, self._token
        assert zc is not None and zc.loop is not None and token is not None
        future = asyncio.run_coroutine_threadsafe(coro, zc.loop)
        done = trio.Event()

        def wake(_: object) -> None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        finally:
            if not future.done():
                future.cancel()
        return future.result()

    async def aclose(self) -> None:
        """Withdraw everything registered here (goodbye packets), stop browsing, close zeroconf."""
        if self._closed:
            return
        self._closed = True
        self._watchers.close()
        async with self._start_lock:  # wait out a start in progress
            zc = self._zc
        if zc is None:
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + _CLOSE_TIMEOUT
            await self._in_zc(self._zc_stop())
            # close() sends goodbyes for every registered instance (about 0.25 s), then stops the thread.
            await trio.to_thread.run_sync(zc.close, abandon_on_cancel=True)
        self._registered.clear()
        self._announcing.clear()
        self._cache.clear()

    async def _zc_stop(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in list(self._tasks):
            task.cancel()
        self._current.clear()

    # ----------------------------------------------------------------- registering

    def _service_info(self, service: Service, node: NodeInfo, ttl: float | None) -> ServiceInfo:
        label = instance_label(service.name, service.version, node.id, node.cluster)
        host, port = _split_host_port(node.address)
        addresses = [host] if _ip_literal(host) else [i for i in self._interfaces if _ip_literal(i)]
        seconds = _dns_ttl(ttl)
        return ServiceInfo(
            self._type,
            f"{label}.{self._type}",
            port=port,
            properties=encode_txt(service, node),
            server=f"{label}.{self._domain}",
            host_ttl=seconds,
            other_ttl=seconds,
            parsed_addresses=addresses or ["127.0.0.1"],
        )

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Announce each node of ``service`` (or re-announce it, with any changes).

        ``ttl`` (seconds, clamped to 10..4500, default 120) becomes the DNS TTL of the records. While
        this registry is open zeroconf keeps answering queries for them, so it bounds how long peers
        trust a record after this process vanished without goodbye, not how long it stays listed.
        Returns once the first announcement is sent (two more follow, 225 ms apart).
        """
        infos = [self._service_info(service, node, ttl) for node in service.nodes]  # validate first
        await self._ensure_started()
        async with self._write_lock:
            for info in infos:
                label = info.name[: -len(self._type) - 1]
                known = label in self._registered
                await self._in_zc(self._zc_register(info, label, update=known))
                self._registered[label] = info

    async def _zc_register(self, info: ServiceInfo, label: str, *, update: bool) -> None:
        zc = self._zc
        assert zc is not None
        if update:
            announcing = await zc.async_update_service(info)
        else:
            # The label is derived from the node id, which is unique by construction, so the
            # ~1.7 s of conflict probing is skipped; the returned announcement task runs on its own.
            announcing = await zc.async_register_service(info, cooperating_responders=True)
        self._announcing[label] = asyncio.ensure_future(announcing)

    async def deregister(self, service: Service) -> None:
        """Withdraw the given nodes registered here (goodbye packets: peers drop them at once)."""
        if self._zc is None or self._closed:
            await trio.lowlevel.checkpoint()
            return
        async with self._write_lock:
            for node in service.nodes:
                label = instance_label(service.name, service.version, node.id, node.cluster)
                info = self._registered.pop(label, None)
                if info is not None:
                    await self._in_zc(self._zc_unregister(info, label))
        await trio.lowlevel.checkpoint()

    async def _zc_unregister(self, info: ServiceInfo, label: str) -> None:
        zc = self._zc
        assert zc is not None
        # The announcements of a fresh registration go on for ~0.5 s after it returned: one sent
        # after the goodbye would bring the node back in every peer's cache for the records' TTL
        # (a deregistered node listed for two minutes). Stop them first.
        announcing = self._announcing.pop(label, None)
        if announcing is not None and not announcing.done():
            announcing.cancel()
            await asyncio.gather(announcing, return_exceptions=True)
        await zc.async_unregister_service(info)

    # ----------------------------------------------------------------- browsing

    async def _ensure_browser(self) -> None:
        await self._ensure_started()
        if self._browsing:
            return
        async with self._start_lock:
            if not self._browsing:
                await self._in_zc(self._zc_browse())
                self._browsing = True
                self._warm_until = trio.current_time() + _WARMUP_SECONDS

    async def _zc_browse(self) -> None:
        assert self._zc is not None
        # QM, not zeroconf's QU first query: a unicast answer goes to port 5353, which every
        # zeroconf on the host shares (SO_REUSEPORT), and the kernel hands it to one of them, often
        # not the asker, which then waited for the browser's next query (about a second later).
        self._browser = AsyncServiceBrowser(
            self._zc, [self._type], handlers=[self._on_change], question_type=_ASK_MULTICAST
        )

    async def _warm(self) -> None:
        """Give the browser's first query time to be answered (only in its first half second)."""
        await self._ensure_browser()
        if trio.current_time() < self._warm_until:
            await trio.sleep_until(self._warm_until)
        else:
            await trio.lowlevel.checkpoint()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Browser callback, on zeroconf's loop."""
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._current.pop(key, None)
            self._post(key, None)
            return
        generation = next(self._generation)
        self._current[key] = generation
        task = asyncio.get_running_loop().create_task(
            self._resolve(zeroconf, service_type, name, key, generation)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(
        self, zeroconf: Zeroconf, service_type: str, name: str, key: str, generation: int
    ) -> None:
        info = AsyncServiceInfo(service_type, name)
        try:
            found = await info.async_request(zeroconf, _RESOLVE_TIMEOUT_MS, question_type=_ASK_MULTICAST)
        except Exception as exc:  # a failed resolution is logged and dropped, never fatal
            log.debug("mdns: resolving %s failed: %r", name, exc)
            return
        if self._current.get(key) != generation:
            return  # overtaken by a later change of the same instance
        if not found:
            log.debug("mdns: %s did not resolve within %d ms", name, _RESOLVE_TIMEOUT_MS)
            return
        self._post(key, _Resolved(name, dict(info.properties)))

    def _post(self, key: str, resolved: _Resolved | None) -> None:
        token = self._token
        if token is None:
            return
        with suppress(trio.RunFinishedError):
            token.run_sync_soon(self._apply, key, resolved)

    def _apply(self, key: str, resolved: _Resolved | None) -> None:
        """On trio's thread: fold one browser result into the cache and tell the watchers."""
        if self._closed:
            return
        record: Service | None = None
        if resolved is not None:
            try:
                record = decode_txt(resolved.properties, resolved.name, self._type)
            except ValueError as exc:
                log.debug("mdns: skipping malformed instance %r: %s", resolved.name, exc)
        if record is None:
            gone = self._cache.pop(key, None)
            if gone is not None:
                self._emit(Event(EventType.DELETE, gone))
            return
        old = self._cache.get(key)
        self._cache[key] = record
        if old is None:
            self._emit(Event(EventType.CREATE, record))
        elif old != record:
            self._emit(Event(EventType.UPDATE, record))

    def _emit(self, event: Event) -> None:
        self._watchers.emit(event)

    # ----------------------------------------------------------------- queries

    def _records(self, name: str | None = None) -> Iterable[Service]:
        return (r for r in self._cache.values() if name is None or r.name == name)

    async def get_service(self, name: str) -> list[Service]:
        """Every version of ``name`` with the nodes currently announced; ``NotFound`` if none."""
        await self._warm()
        found = merge_nodes(self._records(name))
        if not found:
            raise NotFound(f"service {name} not found", id="registry")
        return found

    async def list_services(self) -> list[Service]:
        """Every service announced on the bound interfaces, with its nodes."""
        await self._warm()
        return merge_nodes(self._records())

    @asynccontextmanager
    async def watch(self, service: str | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        """CREATE/UPDATE/DELETE events (one node each) from now on; a watcher 1024 behind is dropped."""
        await self._ensure_browser()
        async with self._watchers.watch(service) as events:
            yield events
