"""``SYSTEM health``: ask another node whether it is live and ready, and answer such asks.

A node answers on the link itself, not through an actor: the answer proves that its process and
event loop run (liveness) even when every actor's mailbox is full, and a readiness report comes
from its :class:`~trimicro.actors.health.Health` checks (docs/protocol.md §4.4):

- the asker sends ``SYSTEM`` ``health`` with a new ``corr`` of its own (§3.3); the body is empty
  (a full report) or ``{"checks": false}`` (liveness only: answered at once, no probe runs);
- the node answers ``REPLY`` with that ``corr`` and the report's map
  (:meth:`~trimicro.actors.health.Report.to_dict`), or ``ERROR`` 429 when :data:`MAX_WAITING`
  asks wait for a report already. A ``corr`` of 0 is not answered.

A report runs every probe, so asks do not each pay for one: a report made less than
:data:`MAX_AGE` seconds ago answers at once, and asks that come while a report is being made
wait for that one (one probe run at a time per node, however many peers ask).

Any node that passed the handshake may ask (as for ``swim``): a report says what is wrong with
the node, not what it holds. An older node ignores the operation; the asker's deadline ends it.
"""

from __future__ import annotations

import trio

from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import InternalServerError, MicroError, RequestTimeout, TooManyRequests
from trimicro.mailbox.logs import get_logger

from ..health import Health, Report
from ..mail import Reply
from .outbox import Outbox
from .peer import Peer

log = get_logger(__package__)

__all__ = ["HEALTH_OP", "MAX_AGE", "MAX_WAITING", "HealthAnswers", "ask_health"]

HEALTH_OP = "health"
#: Seconds a report answers later asks before the probes run again.
MAX_AGE = 1.0
#: Asks that may wait for the report being made; more get 429 (the waiting list is bounded).
MAX_WAITING = 64


class HealthAnswers:
    """The ``health`` handler a node installs in ``remote.system_handlers``."""

    def __init__(self, health: Health, *, max_age: float = MAX_AGE) -> None:
        self.health = health
        self.max_age = max_age
        #: The last report, when it was made (trio's clock), and the node's state and set of
        #: checks then: a node that starts stopping, or gains a check, is not answered from it.
        self._last: tuple[float, tuple[str, int], Report] | None = None
        #: Asks waiting for the report being made; ``None`` when no report is being made.
        self._waiting: list[tuple[Outbox, int, Codec]] | None = None

    def __call__(self, link: Outbox, env: Envelope) -> None:
        corr = env.corr
        if not corr:
            return
        remoting = link.remoting
        codec = remoting.codec
        if env.body and _live_only(remoting.codecs.get(env.content_type), env.body):
            _reply(link, corr, codec, self.health.live())
        elif (last := self._last) is not None and self._fresh(last):
            _reply(link, corr, codec, last[2])
        elif self._waiting is None:
            self._waiting = [(link, corr, codec)]
            remoting.node.spawn_system(self._answer)
        elif len(self._waiting) < MAX_WAITING:
            self._waiting.append((link, corr, codec))
        else:
            busy = TooManyRequests(
                f"more than {MAX_WAITING} health asks wait for a report", id=self.health.node_id
            )
            link.send_error(corr, busy, codec)

    def _fresh(self, last: tuple[float, tuple[str, int], Report]) -> bool:
        made, version, _ = last
        now = (self.health.state, self.health.changes)
        return version == now and trio.current_time() - made < self.max_age

    async def _answer(self) -> None:
        version = (self.health.state, self.health.changes)
        try:
            report = await self.health.report()
        except Exception as exc:  # every waiter gets an answer, not its deadline
            waiting, self._waiting = self._waiting or [], None
            detail = f"health report failed: {type(exc).__name__}"
            failed = InternalServerError(detail, id=self.health.node_id)
            for link, corr, codec in waiting:
                link.send_error(corr, failed, codec)
            log.warning("node %s: a health report failed", self.health.node_id, exc_info=True)
            return
        except BaseException:
            self._waiting = None
            raise
        waiting, self._waiting = self._waiting or [], None
        self._last = (trio.current_time(), version, report)
        for link, corr, codec in waiting:
            _reply(link, corr, codec, report)


def _live_only(codec: Codec, body: bytes) -> bool:
    try:
        request = codec.decode(body)
    except MicroError:
        return False
    return isinstance(request, dict) and request.get("checks") is False


def _reply(link: Outbox, corr: int, codec: Codec, report: Report) -> None:
    body = codec.encode(report.to_dict())
    link.push(encode_envelope(Envelope(Kind.REPLY, corr, None, None, "", codec.content_type, {}, 0, body)))


async def ask_health(peer: Peer, timeout: float, *, checks: bool = True) -> Report:
    """The health report of the node ``peer`` (dialed if needed), within ``timeout`` seconds.

    ``checks=False`` asks for liveness only. Raises ``RequestTimeout`` (no answer in time),
    ``Unreachable`` (no link), the node's 429, or ``BadRequest`` (a malformed report)."""
    remoting = peer.remoting
    wheel = remoting.node.timeouts
    deadline = trio.current_time() + timeout
    link = None
    with trio.move_on_at(deadline):
        link = await peer.connect(timeout)
    if link is None:
        raise RequestTimeout(f"no connection to node {peer.node_id} within {timeout:g}s", id=peer.node_id)
    codec = remoting.codec
    body = b"" if checks else codec.encode({"checks": False})
    corr = link.new_corr()
    reply = Reply()
    reply.label = f"node {peer.node_id}"
    reply.timeout = timeout
    link.pending[corr] = reply
    reply.slot = wheel.add(deadline, reply)
    try:
        env = Envelope(Kind.SYSTEM, corr, None, None, HEALTH_OP, codec.content_type, {}, 0, body)
        link.push(encode_envelope(env))
        value = await reply.wait()
    except BaseException:
        link.pending.pop(corr, None)
        raise
    finally:
        if reply.slot is not None:
            wheel.remove(reply.slot, reply)
            reply.slot = None
    return Report.from_dict(value)
