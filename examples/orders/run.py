"""The order flow, end to end: ``python examples/orders/run.py`` (needs the ``gateway`` extra).

Starts the app (:mod:`orders.app`: payments, orders, notifier and the HTTP gateway, each on a
node of its own over loopback TCP), then acts as an HTTP client would: places a few orders with
``POST /api/orders/Orders.place`` while the payment service fails as scripted, reads one back,
sends a bad one, and reads the payment ledger. It prints every request and answer, checks that
each order was charged exactly once and that every customer got a mail, and exits 0 (1 if a
check fails). Everything it stores lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the package

from demo_checks import Checks

try:
    from orders.app import open_shop
except ModuleNotFoundError as missing:  # hypercorn or starlette: the gateway's extra
    sys.exit(f"the order flow serves HTTP: pip install 'trimicro[gateway]' ({missing})")
from orders.chaos import Fault

#: What the demo orders, and how the payment service fails each time before it succeeds.
SCRIPT: list[tuple[dict[str, Any], list[Fault], str]] = [
    ({"customer": "ada", "item": "tea", "qty": 2}, [], "no failure"),
    (
        {"customer": "bob", "item": "cake", "qty": 1},
        [Fault.LOST_REPLY],
        "charged, then the reply was lost (503): retried with the same key",
    ),
    (
        {"customer": "cy", "item": "coffee", "qty": 3},
        [Fault.BUSY, Fault.BUSY],
        "payments busy twice (503): retried with backoff",
    ),
]


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def post(base: str, path: str, body: Any) -> tuple[int, Any]:
    """One HTTP request, in a worker thread (the node's trio loop keeps serving meanwhile)."""
    status, reply = await trio.to_thread.run_sync(_post, base + path, body)
    print(f"POST {path} {json.dumps(body)}\n  -> {status} {json.dumps(reply)}", flush=True)
    return status, reply


async def main() -> int:
    check = Checks()
    with tempfile.TemporaryDirectory(prefix="trimicro-orders-") as workdir:
        async with open_shop(Path(workdir)) as shop:
            print(f"shop: payments, orders, notify and gateway nodes up; gateway at {shop.url}\n")
            placed = []
            for body, faults, story in SCRIPT:
                print(f"# {body['customer']}'s order, payment service: {story}")
                shop.chaos.plan.extend(faults)
                status, order = await post(shop.url, "/api/orders/Orders.place", body)
                check(status == 200 and order["status"] == "paid", f"order {order.get('id')} paid")
                placed.append(order)
                print()

            ids = [order.get("id") for order in placed]
            print("# read an order back from the orders service's store")
            status, order = await post(shop.url, "/api/orders/Orders.get", {"id": ids[1]})
            check(status == 200 and order["status"] == "paid", "stored as paid")
            print("\n# a bad order: the gateway names the field")
            status, error = await post(shop.url, "/api/orders/Orders.place", {**SCRIPT[0][0], "qty": 0})
            check(status == 400 and "qty" in error["detail"], "refused with 400")

            print("\n# the payment ledger: one charge per order, however many requests arrived")
            status, ledger = await post(shop.url, "/api/payments/Payments.ledger", {})
            charged = sorted(charge["order_id"] for charge in ledger["charges"])
            check(charged == sorted(ids), f"{len(charged)} payments taken for {len(ids)} orders")
            paid_with = {order.get("payment_id") for order in placed}
            check(
                paid_with == {c["payment_id"] for c in ledger["charges"]}, "each order has the payment taken"
            )
            print(
                f"  the charge handler ran {ledger['requests']} times; "
                f"faults injected: {', '.join(f.value for f in shop.chaos.injected)}"
            )

            print("\n# the notifier got order.paid for each order (pub/sub), and mailed the customer")
            mails = await shop.outbox.wait_for(len(ids), timeout=10)
            for mail in mails:
                print(f"  mail to {mail.to}: {mail.subject}: {mail.text}")
            check(sorted(m.to for m in mails) == sorted(b["customer"] for b, _, _ in SCRIPT), "one mail each")
    return check.exit_status()


if __name__ == "__main__":
    sys.exit(trio.run(main))
