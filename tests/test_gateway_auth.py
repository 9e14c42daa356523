"""The gateway in a cluster with auth on: the rules judge HTTP callers as they judge nodes' calls.

A token is passed through and judged by the service's node (403 for one the rules refuse, 401 for
a forged one); a request without a token has no account (401 unless a public rule grants it), so
the gateway never lends its own node's account to an anonymous HTTP client. Subscriptions and
publishes are judged by the topic rules the same way. Errors are Go Micro's error JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from test_auth import add_rule, bearer, cluster_of, lock_down, login, synced

from trimicro.cluster.auth.guard import AUTH_SERVICE
from trimicro.cluster.cluster import Cluster
from trimicro.cluster.gateway import GatewayOptions, open_gateway

ERROR_KEYS = {"id", "code", "detail", "status"}


@asynccontextmanager
async def through_gateway(home: Path) -> AsyncIterator[tuple[Cluster, Cluster, httpx.AsyncClient]]:
    """Node n0 runs the auth service and greeter, node n1 the gateway."""
    async with cluster_of(home, 2, membership=True) as (a, b):
        options = GatewayOptions(address="127.0.0.1:0", refresh=0.2)
        async with open_gateway(b, options) as gw, httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
            await gw.state.refresh()
            yield a, b, http


def refused(r: httpx.Response, status: int) -> bool:
    body: Any = r.json()
    return r.status_code == status and set(body) == ERROR_KEYS and body["code"] == status


async def test_calls_are_401_without_a_token_and_403_with_one_the_rules_refuse(tmp_path: Path) -> None:
    async with through_gateway(tmp_path) as (a, b, http):
        alice = await login(a, "alice", ["admin"])
        bob = await login(a, "bob", ["guest"])
        hello = "/api/greeter/Greeter.hello"
        # Go Micro's default rule grants any *account*: an anonymous HTTP caller has none, and
        # the gateway's node account is not lent to it.
        assert refused(await http.post(hello, json={"name": "x"}), 401)
        r = await http.post(hello, json={"name": "x"}, headers=bearer(bob))
        assert (r.status_code, r.json()["caller"]) == (200, "bob")
        # Refused on its headers alone, before the body is read or decoded: a MiB of garbage is
        # a 401 without a token, where with one it reaches the decoder and is a 400.
        garbage = {"content": b"\xff{" * (1 << 19), "headers": {"content-type": "application/json"}}
        for path in (hello, "/api/publish/orders.new"):
            assert refused(await http.post(path, **garbage), 401), path  # type: ignore[arg-type]
        r = await http.post(hello, content=garbage["content"], headers={**garbage["headers"], **bearer(bob)})
        assert refused(r, 400) and "not valid application/json" in r.json()["detail"]
        await lock_down(a)
        await synced(a, b)
        # Endpoint schemas stay readable to any account (the gateway asks as its node).
        node = (await b.describe("greeter"))[0].nodes[0]
        assert "Greeter.hello" in await b.describe_node(node, "greeter")
        assert refused(await http.post(hello, json={"name": "x"}), 401)
        assert refused(await http.post(hello, json={"name": "x"}, headers=bearer(bob)), 403)
        assert refused(await http.post(hello, json={"name": "x"}, headers=bearer(alice[:-4] + "AAAA")), 401)
        r = await http.post(hello, json={"name": "x"}, headers=bearer(alice))
        assert (r.status_code, r.json()["caller"]) == (200, "alice")
        # A public rule (scope "") lets anyone in, anonymous HTTP callers included.
        await add_rule(a, "hello-public", "", "service:greeter:Greeter.hello", priority=20)
        await synced(a, b)
        assert (await http.post(hello, json={"name": "x"})).status_code == 200


async def test_subscribe_and_publish_follow_the_topic_rules(tmp_path: Path) -> None:
    async with through_gateway(tmp_path) as (a, b, http):
        alice = await login(a, "alice", ["admin"])
        bob = await login(a, "bob", ["guest"])
        await a.call(AUTH_SERVICE, "Auth.delete_rule", {"id": "default"})
        await add_rule(a, "orders-sub", "*", "topic:orders.*:subscribe")
        await add_rule(a, "orders-pub", "admin", "topic:orders.*:publish")
        await synced(a, b)
        assert refused(await http.get("/api/subscribe/orders.*"), 401)
        assert refused(await http.get("/api/subscribe/secret.>", headers=bearer(alice)), 403)
        async with http.stream("GET", "/api/subscribe/orders.*", headers=bearer(bob)) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        assert refused(await http.post("/api/publish/orders.new", json={"n": 1}), 401)
        assert refused(await http.post("/api/publish/orders.new", json={"n": 1}, headers=bearer(bob)), 403)
        r = await http.post("/api/publish/orders.new", json={"n": 1}, headers=bearer(alice))
        assert r.status_code == 200
