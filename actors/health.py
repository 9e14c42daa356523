"""A node's health: live (it answers) and ready (every readiness check passes).

Liveness needs no check: a node that answers a health request (``SYSTEM health`` on a link,
:mod:`trimicro.actors.remote.health`; an HTTP probe of the gateway) has a running process and a
running event loop, which is all "live" means. Readiness is a set of named checks that the
layers above plug in (``node.health.add("store", probe)``: the cluster adds ``membership``,
``registry`` and ``store``), plus the node's own state (``node``: ``running``, or ``starting``
/ ``stopping``, when traffic should go elsewhere).

A probe is an async callable that returns a short detail when the thing it checks is fine and
raises (best a :class:`~trimicro.mailbox.errors.MicroError`, whose detail is shown) when it is
not. Every probe runs at once with its own deadline (``timeout``), so one that hangs costs a
report that deadline, names itself, and cannot hold the others back. Reports are data
(:class:`Report`): the CLI, the gateway and other nodes read the same fields.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from trimicro.mailbox.errors import BadRequest, MicroError

__all__ = ["MAX_CHECKS", "Check", "Health", "NotReady", "Probe", "Report"]

Probe = Callable[[], Awaitable[str]]

#: Checks one node may have, and how long a detail may be: a report crosses the wire, and one
#: from another node is read with these bounds.
MAX_CHECKS = 32
MAX_DETAIL = 512
MAX_NAME = 64


class NotReady(MicroError):
    """A probe's way to say "not ready" with a reason (503)."""

    default_code = 503


@attrs.frozen
class Check:
    """One readiness check's outcome."""

    name: str
    ok: bool
    detail: str = ""


@attrs.frozen
class Report:
    """What a node says about itself: ``ready`` when every check is ok (``None``: not asked,
    a liveness-only answer)."""

    node: str
    live: bool
    ready: bool | None
    checks: tuple[Check, ...] = ()

    def failing(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "live": self.live,
            "ready": self.ready,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: object) -> Report:
        """A report another node sent: checked and bounded (``BadRequest`` if malformed)."""
        if not isinstance(data, Mapping):
            raise BadRequest("a health report is a map", id="health")
        node, live, ready, checks = (data.get(k) for k in ("node", "live", "ready", "checks"))
        if not (isinstance(node, str) and isinstance(live, bool) and isinstance(ready, bool | None)):
            raise BadRequest("a health report needs node, live and ready", id="health")
        if not isinstance(checks, list) or len(checks) > MAX_CHECKS:
            raise BadRequest(f"a health report has at most {MAX_CHECKS} checks", id="health")
        parsed = []
        for check in checks:
            if not isinstance(check, Mapping):
                raise BadRequest("a health check is a map", id="health")
            name, ok, detail = check.get("name"), check.get("ok"), check.get("detail", "")
            if not (isinstance(name, str) and isinstance(ok, bool) and isinstance(detail, str)):
                raise BadRequest("a health check needs name, ok and detail", id="health")
            parsed.append(Check(name[:MAX_NAME], ok, detail[:MAX_DETAIL]))
        return cls(node[: MAX_NAME * 4], live, ready, tuple(parsed))


class Health:
    """A node's readiness checks (``node.health``)."""

    def __init__(self, node_id: str, *, timeout: float = 2.0) -> None:
        self.node_id = node_id
        #: Each probe's deadline, in seconds.
        self.timeout = timeout
        #: ``starting`` until ``start_node`` yields the node, ``running``, then ``stopping``.
        self.state = "starting"
        self._probes: dict[str, Probe] = {}
        #: Bumped when a check is added or removed, so a cached report is not served past it.
        self.changes = 0

    def add(self, name: str, probe: Probe) -> None:
        """Add (or replace) the check ``name``; at most :data:`MAX_CHECKS`."""
        if not name or len(name) > MAX_NAME or name == "node":
            raise ValueError(f"a check's name is 1 to {MAX_NAME} characters, not 'node'")
        if name not in self._probes and len(self._probes) >= MAX_CHECKS - 1:
            raise ValueError(f"a node has at most {MAX_CHECKS} checks")
        self._probes[name] = probe
        self.changes += 1

    def remove(self, name: str) -> None:
        self._probes.pop(name, None)
        self.changes += 1

    @property
    def names(self) -> list[str]:
        return ["node", *self._probes]

    def live(self) -> Report:
        """The answer that proves liveness alone (no probe runs)."""
        return Report(self.node_id, True, None, ())

    async def report(self) -> Report:
        """Run every probe at once (each within :attr:`timeout`) and say whether all passed."""
        results: dict[str, Check] = {}
        async with trio.open_nursery() as nursery:
            for name, probe in list(self._probes.items()):
                nursery.start_soon(self._run, name, probe, results)
        node = Check("node", self.state == "running", self.state)
        checks = (node, *(results[name] for name in self._probes if name in results))
        return Report(self.node_id, True, all(c.ok for c in checks), checks)

    async def _run(self, name: str, probe: Probe, results: dict[str, Check]) -> None:
        detail = f"no answer within {self.timeout:g}s"
        ok = False
        with trio.move_on_after(self.timeout):
            try:
                detail = await probe()
                ok = True
            except MicroError as exc:
                detail = exc.detail
            except Exception as exc:  # a probe's bug is a failing check, not a failing report
                detail = f"{type(exc).__name__}: {exc}"
        results[name] = Check(name, ok, str(detail)[:MAX_DETAIL])
