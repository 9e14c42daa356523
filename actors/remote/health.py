"""``SYSTEM health``: ask another node whether it is live and ready, and answer such asks.

A node answers on the link itself, not through an actor: the answer proves that its process and
event loop run (liveness) even when every actor's mailbox is full, and a readiness report comes
from its :class:`~trimicro.actors.health.Health` checks (docs/protocol.md §4.4):

- the asker sends ``SYSTEM`` ``health`` with a new ``corr`` of its own (§3.3); the body is empty
  (a full report) or ``{"checks": false}`` (liveness only: answered at once, no probe runs);
- the node answers ``REPLY`` with that ``corr`` and the report's map
  (:meth:`~trimicro.actors.health.Report.to_dict`), or ``ERROR`` 429 when more than
  :data:`MAX_ANSWERING` reports are being computed for its peers already. A ``corr`` of 0 is
  not answered.

Any node that passed the handshake may ask (as for ``swim``): a report says what is wrong with
the node, not what it holds. An older node ignores the operation; the asker's deadline ends it.
"""

from __future__ import annotations

import trio

from trimicro.mailbox.codec import Codec
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import MicroError, RequestTimeout, TooManyRequests

from ..health import Health, Report
from ..mail import Reply
from .outbox import Outbox
from .peer import Peer

__all__ = ["HEALTH_OP", "MAX_ANSWERING", "HealthAnswers", "ask_health"]

HEALTH_OP = "health"
#: Reports computed at once for other nodes (each runs every probe); more asks get 429.
MAX_ANSWERING = 8


class HealthAnswers:
    """The ``health`` handler a node installs in ``remote.system_handlers``."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.answering = 0

    def __call__(self, link: Outbox, env: Envelope) -> None:
        corr = env.corr
        if not corr:
            return
        remoting = link.remoting
        codec = remoting.codec
        if env.body and _live_only(remoting.codecs.get(env.content_type), env.body):
            _reply(link, corr, codec, self.health.live())
        elif self.answering >= MAX_ANSWERING:
            busy = TooManyRequests(
                f"more than {MAX_ANSWERING} health reports at once", id=self.health.node_id
            )
            link.send_error(corr, busy, codec)
        else:
            self.answering += 1
            remoting.node.spawn_system(self._answer, link, corr, codec)

    async def _answer(self, link: Outbox, corr: int, codec: Codec) -> None:
        try:
            report = await self.health.report()
        finally:
            self.answering -= 1
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
