"""The payment service: charges an order once, however many times the request arrives.

A caller that sees a 503 cannot know whether the charge happened: the failure may have come
before the handler ran (the node was busy) or after (the reply was lost on the way back). So
every :class:`~.model.Charge` carries an idempotency key (the orders service uses the order's
id). The first request with a key claims it in the store, with a compare-and-swap
(``if_version=0``: only if the key is absent), and only then charges: a new payment, with an id
of its own, in the ledger. A request whose key is claimed gets the first one's receipt back
and charges nothing. Because the claim is atomic, two payment nodes sharing a store, racing on
one key, still charge once: the loser returns the winner's receipt. A charge that fails
releases its claim, so a retry charges.

Because of that, ``charge`` is marked :func:`~trimicro.cluster.idempotent`: the cluster's
client may retry it after a 503 even though the first attempt may have been delivered (for an
endpoint without the mark it retries only what surely never arrived).
"""

from __future__ import annotations

import uuid
from typing import Any

import trio

from trimicro.actors import Actor, Conflict, NotFound, ServiceUnavailable
from trimicro.cluster import idempotent
from trimicro.cluster.store import Record, Store

from .model import Charge, Ledger, Receipt, dump, load

#: The store tables: idempotency key -> receipt, and the ledger (payment id -> receipt), in
#: which every entry is money taken.
KEYS = "idempotency"
LEDGER = "payments"


class Payments(Actor):
    service_name = "Payments"

    def __init__(self) -> None:
        #: Requests that reached the handler (retries included): compare with the ledger.
        self.requests = 0

    @property
    def store(self) -> Store:
        """The payment service's store: the one of this node's cluster (``trimicro run --store``)."""
        store: Store | None = self.context.node.extensions["cluster"].store
        if store is None:
            raise ServiceUnavailable("the payment service needs a store (start_cluster(store=...))")
        return store

    @idempotent
    async def charge(self, msg: Charge) -> Receipt:
        self.requests += 1
        receipt = Receipt(f"pay-{uuid.uuid4().hex[:12]}", msg.order_id, msg.amount_cents)
        try:
            await self.store.write(Record(msg.idempotency_key, dump(receipt)), if_version=0, table=KEYS)
        except Conflict:  # charged before (or by another node just now): that charge stands
            return self._same_charge(await self._claimed(msg.idempotency_key), msg)
        try:
            await self.store.write(Record(receipt.payment_id, dump(receipt)), table=LEDGER)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.store.delete(msg.idempotency_key, table=KEYS)  # not charged: a retry may charge
            raise
        return receipt

    async def ledger(self, _: Any = None) -> Ledger:
        """Every payment taken, and the requests that reached :meth:`charge`."""
        charges = []
        for key in await self.store.list(table=LEDGER):
            try:
                (record,) = await self.store.read(key, table=LEDGER)
            except NotFound:
                continue
            charges.append(load(Receipt, record.value))
        return Ledger(charges, self.requests)

    async def _claimed(self, key: str) -> Receipt:
        try:
            (record,) = await self.store.read(key, table=KEYS)
        except NotFound:  # its charge failed and let go of the key since: a retry will charge
            raise ServiceUnavailable(f"the charge with key {key!r} failed just now; try again") from None
        return load(Receipt, record.value)

    @staticmethod
    def _same_charge(receipt: Receipt, msg: Charge) -> Receipt:
        """A key names one payment: reusing it for another order or amount is the caller's bug."""
        if (receipt.order_id, receipt.amount_cents) != (msg.order_id, msg.amount_cents):
            raise Conflict(f"idempotency key {msg.idempotency_key!r} was used for another charge")
        return receipt
