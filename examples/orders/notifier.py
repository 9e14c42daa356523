"""The notifier: tells a customer their order was paid, from the ``order.paid`` topic.

It knows nothing of the orders service: it subscribes to a topic (``cluster.subscribe(
"order.paid", ref)``, done by the app) and the broker delivers each paid order to its handler
as a :class:`~trimicro.cluster.broker.Message`. Anyone may publish on a topic (the gateway's
``POST /api/publish/order.paid`` too), so a body that is not an order is logged and dropped,
never allowed to crash the subscriber. (Who may publish there is for the topic rules to say:
docs/auth.md.)
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import cattrs
import trio

from trimicro.actors import Actor
from trimicro.cluster.broker import Message

from .model import Order

log = logging.getLogger(__name__)


@attrs.frozen
class Mail:
    to: str
    subject: str
    text: str


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...


class Notifier(Actor):
    def __init__(self, mailer: Mailer) -> None:
        self.mailer = mailer

    async def order_paid(self, msg: Message) -> None:
        order = msg.body
        if not isinstance(order, Order):
            try:
                order = cattrs.structure(order, Order)
            except (cattrs.BaseValidationError, TypeError, ValueError):
                log.warning("dropped a message on %s that is not an order: %.200r", msg.topic, msg.body)
                return
        euros = f"{order.amount_cents // 100}.{order.amount_cents % 100:02d}"
        await self.mailer.send(
            Mail(
                order.customer, f"order {order.id} paid", f"{order.qty} x {order.item}, {euros} EUR. Thanks!"
            )
        )


class Outbox:
    """A :class:`Mailer` that keeps what it sends (a real one would talk SMTP), and lets a
    caller wait, with a deadline, until a number of mails went out."""

    def __init__(self) -> None:
        self.sent: list[Mail] = []
        self._changed = trio.Event()

    async def send(self, mail: Mail) -> None:
        self.sent.append(mail)
        self._changed.set()
        self._changed = trio.Event()
        await trio.lowlevel.checkpoint()

    async def wait_for(self, count: int, *, timeout: float) -> list[Mail]:
        """The first ``count`` mails; ``trio.TooSlowError`` if fewer went out within ``timeout``."""
        with trio.fail_after(timeout):
            while len(self.sent) < count:
                await self._changed.wait()
        return self.sent[:count]
