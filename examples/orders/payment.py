"""The payment service: charges an order once, however many times the request arrives.

A caller that sees a 503 cannot know whether the charge happened: the failure may have come
before the handler ran (the node was busy) or after (the reply was lost on the way back). So
every :class:`~.model.Charge` carries an idempotency key (the orders service uses the order's
id), and the payment's id is derived from that key (:func:`payment_id`): one key can only ever
name one entry of the ledger, and whoever holds the key can look its payment up.

A charge takes three steps, so that no failure between them charges twice or hands out a
receipt for money never taken:

1. **claim** the key with a compare-and-swap (``if_version=0``: only if absent): the claim
   holds the receipt and is marked *pending* (its metadata). A request that finds the key
   already claimed charges nothing: it gets the stored receipt back if the claim is done, and
   for a pending claim it checks the ledger (below). Two payment nodes sharing a store, racing
   on one key, still charge once.
2. **charge**: write the payment to the ledger under its derived id.
3. **complete** the claim: compare-and-swap it from pending to done (the same receipt).

Only a ledger write that surely did not happen (``BadRequest``, ``Conflict``: the store
refused it) releases the claim, so a retry charges. A write whose outcome is unknown (a
``RequestTimeout``, a 503, or the handler cancelled because the caller's deadline passed while
the write was in flight) keeps the claim pending: the write may have landed. A request that
finds a pending claim looks the payment up in the ledger by its id: if it is there, the request
completes the claim and returns the receipt; if not, it answers 503 (retryable), as the first
charge may still be on its way. A pending claim expires after :data:`PENDING_TTL` seconds, so
a charge that crashed between claim and ledger does not block its key for ever: the next
request claims it again and charges under the same payment id, which overwrites any late
ledger write of the first one rather than adding a second payment.

Because of that, ``charge`` is marked :func:`~trimicro.cluster.idempotent`: the cluster's
client may retry it after a 503 even though the first attempt may have been delivered (for an
endpoint without the mark it retries only what surely never arrived).
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Final

import trio

from trimicro.actors import Actor, BadRequest, Conflict, NotFound, ServiceUnavailable
from trimicro.cluster import idempotent
from trimicro.cluster.store import Record, Store

from .model import Charge, Ledger, Receipt, dump, load

#: The store tables: idempotency key -> claim (the receipt, pending or done), and the ledger
#: (payment id -> receipt), in which every entry is money taken.
KEYS = "idempotency"
LEDGER = "payments"
#: A claim's metadata while its charge is in flight (or ended with an unknown outcome).
PENDING: Final = {"state": "pending"}
#: Seconds after which a pending claim lapses and the key may be claimed again.
PENDING_TTL: Final = 60.0


def payment_id(idempotency_key: str) -> str:
    """The id of the one payment an idempotency key can name (a hash: keys may be long)."""
    return "pay-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]


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
        key = msg.idempotency_key
        receipt = Receipt(payment_id(key), msg.order_id, msg.amount_cents)
        claim = Record(key, dump(receipt), metadata=PENDING)
        try:
            await self.store.write(claim, if_version=0, ttl=PENDING_TTL, table=KEYS)
        except Conflict:  # charged before, or being charged: that charge stands
            return await self._claimed(msg)
        try:
            await self.store.write(Record(receipt.payment_id, dump(receipt)), table=LEDGER)
        except (BadRequest, Conflict):  # refused, so surely not charged: a retry may charge
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.store.delete(key, table=KEYS)
            raise
        # Any other failure (a timeout, a cancellation) leaves the claim pending: the write may
        # have landed, and a retry finds out from the ledger.
        await self._complete(key, receipt)
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

    async def _claimed(self, msg: Charge) -> Receipt:
        """The answer to a request whose key is claimed: the receipt, once the ledger has it."""
        key = msg.idempotency_key
        try:
            (record,) = await self.store.read(key, table=KEYS)
        except NotFound:  # its charge was refused and let go of the key since: a retry will charge
            raise ServiceUnavailable(f"the charge with key {key!r} failed just now; try again") from None
        receipt = self._same_charge(load(Receipt, record.value), msg)
        if record.metadata.get("state") != PENDING["state"]:
            return receipt
        try:
            await self.store.read(receipt.payment_id, table=LEDGER)
        except NotFound:  # in flight, or lost before the ledger: charging now could be twice
            raise ServiceUnavailable(
                f"the charge with key {key!r} is in progress or its outcome is unknown; try again"
            ) from None
        await self._complete(key, receipt)
        return receipt

    async def _complete(self, key: str, receipt: Receipt) -> None:
        """Mark a claim done once its payment is in the ledger (compare-and-swap from pending).

        Losing the swap is fine: another request completed it, or the pending claim lapsed and
        was claimed again, under the same payment id; the ledger entry is what counts.
        """
        try:
            (record,) = await self.store.read(key, table=KEYS)
        except NotFound:  # lapsed: write it done if nobody claimed it since
            version = 0
        else:
            if record.metadata.get("state") != PENDING["state"]:
                return
            version = record.version
        with contextlib.suppress(Conflict):
            await self.store.write(Record(key, dump(receipt)), if_version=version, table=KEYS)

    @staticmethod
    def _same_charge(receipt: Receipt, msg: Charge) -> Receipt:
        """A key names one payment: reusing it for another order or amount is the caller's bug."""
        if (receipt.order_id, receipt.amount_cents) != (msg.order_id, msg.amount_cents):
            raise Conflict(f"idempotency key {msg.idempotency_key!r} was used for another charge")
        return receipt
