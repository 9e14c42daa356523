"""The payment service: charges an order once, however many times the request arrives.

A caller that sees a 503 cannot know whether the charge happened: the failure may have come
before the handler ran (the node was busy) or after (the reply was lost on the way back). So
every :class:`~model.Charge` carries an idempotency key (the orders service uses the order's
id), and the ledger in the store holds one receipt per key: a request whose key is there gets
that receipt back, and nothing is charged again. The write is a compare-and-swap
(``if_version=0``: only if the key is absent), so two payment nodes sharing a store, racing on
the same key, still charge once: the loser reads the winner's receipt.

Because of that, ``charge`` is marked :func:`~trimicro.cluster.idempotent`: the cluster's
client may retry it after a 503 even though the first attempt may have been delivered (for an
endpoint without the mark it retries only what surely never arrived).
"""

from __future__ import annotations

from typing import Any

from trimicro.actors import Actor, Conflict, NotFound, ServiceUnavailable
from trimicro.cluster import idempotent
from trimicro.cluster.store import Record, Store

from .model import Charge, Ledger, Receipt, dump, load

#: The store table of the ledger: key = idempotency key, value = the receipt.
LEDGER = "charges"


class Payments(Actor):
    service_name = "Payments"

    def __init__(self) -> None:
        #: Requests that reached the handler (retries included): compare with the ledger.
        self.requests = 0

    @property
    def store(self) -> Store:
        """The ledger's store: the one of this node's cluster (``trimicro run --store``)."""
        store: Store | None = self.context.node.extensions["cluster"].store
        if store is None:
            raise ServiceUnavailable("the payment service needs a store (start_cluster(store=...))")
        return store

    @idempotent
    async def charge(self, msg: Charge) -> Receipt:
        self.requests += 1
        earlier = await self._receipt(msg.idempotency_key)
        if earlier is not None:
            return self._same_charge(earlier, msg)
        receipt = Receipt(f"pay-{msg.idempotency_key}", msg.order_id, msg.amount_cents)
        try:
            await self.store.write(Record(msg.idempotency_key, dump(receipt)), if_version=0, table=LEDGER)
        except Conflict:  # another node charged this key since we looked: its receipt stands
            winner = await self._receipt(msg.idempotency_key)
            assert winner is not None
            return self._same_charge(winner, msg)
        return receipt

    async def ledger(self, _: Any = None) -> Ledger:
        """Every charge made (one per key) and the requests that reached :meth:`charge`."""
        keys = await self.store.list(table=LEDGER)
        receipts = [r for r in [await self._receipt(k) for k in keys] if r is not None]
        return Ledger(receipts, self.requests)

    async def _receipt(self, key: str) -> Receipt | None:
        try:
            (record,) = await self.store.read(key, table=LEDGER)
        except NotFound:
            return None
        return load(Receipt, record.value)

    @staticmethod
    def _same_charge(receipt: Receipt, msg: Charge) -> Receipt:
        """A key names one payment: reusing it for another order or amount is the caller's bug."""
        if (receipt.order_id, receipt.amount_cents) != (msg.order_id, msg.amount_cents):
            raise Conflict(f"idempotency key {msg.idempotency_key!r} was used for another charge")
        return receipt
