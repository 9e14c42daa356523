"""A trimicro registry kept in one JSON file that the processes of a machine share.

An example plugin (see docs/plugins.md): install this distribution and select it by URL, with
no change to trimicro::

    trimicro --registry jsonfile:///tmp/registry.json run examples/services.py
    trimicro --registry jsonfile:///tmp/registry.json call greeter Greeter.hello '{"name": "Ada"}'
    start_cluster(registry="jsonfile:///tmp/registry.json")

Why it is correct across processes:

- Every change is a read-modify-write under an exclusive ``fcntl.flock`` on a lock file beside
  the registry (``registry.json.lock``); readers take a shared lock. The new content is written
  to a temporary file in the same folder and renamed over the old one, so a process killed
  mid-write leaves the previous version, never half a file.
- TTL is wall-clock time (``time.time()``): an expiry written by one process means the same in
  another (trio's clock is per process). Expired entries are never returned and are dropped by
  the next write; a node that dies without deregistering disappears after its TTL.
- ``watch`` polls the file (every ``poll`` seconds, ``?poll=0.5`` in the URL) and turns the
  difference between two readings into CREATE/UPDATE/DELETE events.
- File work runs in a worker thread (``trio.to_thread``): a slow disk never stalls the trio loop.

Limits, since the file is shared: at most ``MAX_BYTES`` are read, at most ``MAX_ENTRIES``
entries are kept (a register beyond that is refused with 503), a watcher falling ``WATCH_BUFFER``
events behind is dropped (its iterator ends, as trimicro's own registries do). A file that is
not a registry of this format is an error (500), never overwritten.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from trimicro.cluster.registry import Endpoint, Event, EventType, NodeInfo, Service, merge_nodes
from trimicro.mailbox.errors import InternalServerError, NotFound, ServiceUnavailable

__all__ = ["JsonFileRegistry", "registry_from_url"]

FORMAT = "trimicro-jsonfile/1"
MAX_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 10_000
WATCH_BUFFER = 1024
#: Snapshots of the file kept for this registry's watchers (see :meth:`JsonFileRegistry.watch`).
SNAPSHOTS = 256

#: An entry's key: (service name, version, cluster, node id).
Key = tuple[str, str, str, str]
#: The entries of one reading: key -> (a one-node record, expiry in unix seconds or inf).
Entries = dict[Key, tuple[Service, float]]


def _service_json(service: Service, node: NodeInfo, expires: float) -> dict[str, Any]:
    return {
        "name": service.name,
        "version": service.version,
        "metadata": dict(service.metadata),
        "endpoints": [attrs.asdict(e) for e in service.endpoints],
        "node": {"id": node.id, "address": node.address, "metadata": node.metadata, "cluster": node.cluster},
        "expires": None if math.isinf(expires) else expires,
    }


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected an object of strings")
    return value


def _entry(item: Any) -> tuple[Key, Service, float]:
    node = item["node"]
    info = NodeInfo(str(node["id"]), str(node["address"]), _str_map(node["metadata"]), str(node["cluster"]))
    endpoints = tuple(
        Endpoint(
            str(e["name"]),
            _str_map(e["request"]),
            _str_map(e["response"]),
            _str_map(e["metadata"]),
            bool(e["stream"]),
        )
        for e in item["endpoints"]
    )
    record = Service(str(item["name"]), str(item["version"]), _str_map(item["metadata"]), endpoints, (info,))
    expires = math.inf if item["expires"] is None else float(item["expires"])
    return (record.name, record.version, info.cluster, info.id), record, expires


class JsonFileRegistry:
    """A :class:`~trimicro.cluster.registry.Registry` in the JSON file at ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, poll: float = 0.5) -> None:
        if not poll > 0:
            raise ValueError("poll must be a positive number of seconds")
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.poll = poll
        #: The file as this registry's watchers last read it, numbered, shared by all of them:
        #: every watcher turns the same sequence of snapshots into events, so a change that one
        #: watcher saw is seen by every other one too (polled separately, a change undone
        #: between two of one watcher's reads would be missed by it alone).
        self._snapshots: deque[tuple[int, Entries]] = deque(maxlen=SNAPSHOTS)
        self._generation = 0
        self._reading = trio.Lock()

    # ---- the file, under its lock (worker threads) --------------------------------------------

    def _locked(self, exclusive: bool) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _read_file(self) -> Entries:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        if len(data) > MAX_BYTES:
            raise InternalServerError(f"{self.path}: larger than {MAX_BYTES} bytes", id="jsonfile")
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            entries: Entries = {}
            for item in doc["entries"][:MAX_ENTRIES]:
                key, record, expires = _entry(item)
                entries[key] = (record, expires)
            return entries
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise InternalServerError(f"{self.path}: not a registry file: {exc}", id="jsonfile") from None

    def _write_file(self, entries: Entries) -> None:
        doc = {
            "format": FORMAT,
            "entries": [_service_json(r, r.nodes[0], expires) for r, expires in entries.values()],
        }
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _read(self) -> Entries:
        fd = self._locked(exclusive=False)
        try:
            entries = self._read_file()
        finally:
            os.close(fd)  # closing the descriptor releases the lock
        now = time.time()
        return {k: v for k, v in entries.items() if v[1] > now}

    def _update(self, change: Callable[[Entries], None]) -> None:
        fd = self._locked(exclusive=True)
        try:
            now = time.time()
            entries = {k: v for k, v in self._read_file().items() if v[1] > now}
            change(entries)
            if len(entries) > MAX_ENTRIES:
                raise ServiceUnavailable(f"{self.path}: full ({MAX_ENTRIES} entries)", id="jsonfile")
            self._write_file(entries)
        finally:
            os.close(fd)

    # ---- the Registry interface ------------------------------------------------------------------

    async def register(self, service: Service, ttl: float | None = None) -> None:
        expires = math.inf if ttl is None else time.time() + ttl

        def add(entries: Entries) -> None:
            for node in service.nodes:
                entries[service.name, service.version, node.cluster, node.id] = (
                    service.with_nodes([node]),
                    expires,
                )

        await trio.to_thread.run_sync(self._update, add)

    async def deregister(self, service: Service) -> None:
        def remove(entries: Entries) -> None:
            for node in service.nodes:
                entries.pop((service.name, service.version, node.cluster, node.id), None)

        await trio.to_thread.run_sync(self._update, remove)

    async def get_service(self, name: str) -> list[Service]:
        entries = await trio.to_thread.run_sync(self._read)
        found = merge_nodes(record for (svc, *_), (record, _) in entries.items() if svc == name)
        if not found:
            raise NotFound(f"service {name} not found", id="registry")
        return found

    async def list_services(self) -> list[Service]:
        entries = await trio.to_thread.run_sync(self._read)
        return merge_nodes(record for record, _ in entries.values())

    async def _snapshot(self) -> tuple[int, Entries]:
        """Read the file once more and add it to the shared, numbered snapshots."""
        async with self._reading:
            entries = await trio.to_thread.run_sync(self._read)
            self._generation += 1
            self._snapshots.append((self._generation, entries))
            return self._generation, entries

    @asynccontextmanager
    async def watch(self, service: str | None = None) -> AsyncIterator[AsyncIterator[Event]]:
        """Events from polling the file every :attr:`poll` seconds, for one service or all.

        Each watcher reads the file on its own schedule, and turns every snapshot any watcher
        of this registry read since its last turn into events, in order. A watcher more than
        ``SNAPSHOTS`` behind compares with the oldest one kept (changes in between coalesce).
        """
        send, receive = trio.open_memory_channel[Event](WATCH_BUFFER)
        first = await self._snapshot()  # changes after this call are events

        async def poll() -> None:
            seen_generation, seen = first
            async with send:
                while True:
                    await trio.sleep(self.poll)
                    await self._snapshot()
                    for generation, now in list(self._snapshots):
                        if generation <= seen_generation:
                            continue
                        for event in _changes(seen, now, service):
                            try:
                                send.send_nowait(event)
                            except trio.WouldBlock:
                                return  # too far behind: the iterator ends
                        seen_generation, seen = generation, now

        async with trio.open_nursery() as nursery, receive:
            nursery.start_soon(poll)
            yield receive
            nursery.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Nothing to release: the file is opened and closed by each operation."""
        await trio.lowlevel.checkpoint()


def _changes(before: Entries, after: Entries, service: str | None) -> list[Event]:
    events = []
    for key, (record, _) in after.items():
        if service is not None and key[0] != service:
            continue
        old = before.get(key)
        if old is None:
            events.append(Event(EventType.CREATE, record))
        elif old[0] != record:
            events.append(Event(EventType.UPDATE, record))
    events.extend(
        Event(EventType.DELETE, record)
        for key, (record, _) in before.items()
        if key not in after and (service is None or key[0] == service)
    )
    return events


# --8<-- [start:factory]
def registry_from_url(url: Any, **options: Any) -> JsonFileRegistry:
    """The entry point: ``jsonfile:///abs/registry.json`` (or ``jsonfile://rel/registry.json``),
    optionally ``?poll=SECONDS``. ``url`` is trimicro's parsed plugin URL."""
    unknown = set(url.params) - {"poll"}
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} (known: poll)")
    if "poll" in url.params:
        options.setdefault("poll", float(url.params["poll"]))
    return JsonFileRegistry(url.file_path(), **options)


# --8<-- [end:factory]
