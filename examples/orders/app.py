"""The order flow wired together: four cluster nodes and the HTTP gateway, in one process.

Each service runs on a node of its own, as it would on its own host, and the nodes talk over
real TCP on 127.0.0.1 through encrypted, authenticated links (one development authority in
``workdir``). They find each other in one in-process registry; with ``trimicro run`` on several
hosts the default mDNS registry, or seeds, would do that instead (docs/hosts.md).

- ``payments``: :class:`~.payment.Payments` on its own LMDB store (its ledger), behind the
  :class:`~.chaos.Chaos` middleware the demo scripts failures with;
- ``orders``: :class:`~.shop.Orders` on its own LMDB store, calling payments through the
  cluster's client (its ``retry`` policy: 3 attempts, backoff from 20 ms) and publishing on
  ``order.paid``;
- ``notify``: :class:`~.notifier.Notifier`, subscribed to ``order.paid``;
- ``gateway``: the HTTP gateway (``POST /api/{service}/{Endpoint.method}``); its node decodes
  replies whose classes it does not have as maps, as ``trimicro api`` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from trimicro.cluster import Cluster, MemoryRegistry, RetryPolicy, start_cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway
from trimicro.mailbox.codec import default_registry

from .chaos import Chaos
from .model import types
from .notifier import Notifier, Outbox
from .payment import Payments
from .shop import PAID_TOPIC, Orders


@attrs.frozen
class Shop:
    """The running app: the gateway's URL, and what the demo and the tests look at."""

    url: str
    chaos: Chaos
    outbox: Outbox
    #: A node of the app, to call its services by name without HTTP.
    client: Cluster


@asynccontextmanager
async def open_shop(workdir: Path, *, retry: RetryPolicy | None = None) -> AsyncIterator[Shop]:
    """Run the app for the duration of the block; its stores and identities live in ``workdir``."""
    registry = MemoryRegistry()
    home = workdir / "home"
    chaos = Chaos("Payments.charge")
    outbox = Outbox()
    common: dict[str, Any] = {"registry": registry, "home": home, "types": types()}
    async with (
        start_cluster("payments", store=f"lmdb://{workdir}/payments", middleware=[chaos], **common) as pay,
        start_cluster(
            "orders",
            store=f"lmdb://{workdir}/orders",
            retry=retry or RetryPolicy(attempts=3, backoff=0.02),
            **common,
        ) as orders,
        start_cluster("notify", store="", **common) as notify,
        start_cluster(
            "gateway", registry=registry, home=home, store="", types=default_registry(unknown_as_maps=True)
        ) as gateway,
    ):
        await pay.serve(Payments)
        await orders.serve(Orders)
        notifier = await notify.node.spawn(Notifier, outbox, name="notifier")
        await notify.subscribe(PAID_TOPIC, notifier)
        await wait_interest(orders, notify.id, PAID_TOPIC)
        async with open_gateway(gateway, GatewayOptions(address="127.0.0.1:0")) as gw:
            yield Shop(gw.url, chaos, outbox, orders)


async def wait_interest(publisher: Cluster, node_id: str, pattern: str, timeout: float = 10.0) -> None:
    """Wait until ``publisher`` knows that ``node_id`` subscribes to ``pattern``: pub/sub is at
    most once, so an order paid before that would be announced to nobody."""
    with trio.fail_after(timeout):
        while not any(p == pattern for p, _, _ in publisher.pubsub.remote_interest.get(node_id, [])):
            await publisher.pubsub.wait_interest()
