"""A whole cluster in one test with the ``trimicro_cluster`` fixture: included in
docs/guides/testing.md."""

from __future__ import annotations

# --8<-- [start:imports]
from typing import Any

import trio
import trio.testing

from trimicro.actors import Actor, ServiceUnavailable
from trimicro.cluster import RetryPolicy, idempotent
from trimicro.testing import InprocCluster, Serve

# --8<-- [end:imports]


# --8<-- [start:call]
class Greeter(Actor):
    async def hello(self, body: dict[str, Any]) -> str:
        return f"hello {body['name']} from {self.context.node.id}"


async def test_call_a_service_by_name(trimicro_cluster: InprocCluster) -> None:
    await trimicro_cluster.add_node("a", services=[Greeter])
    await trimicro_cluster.add_node("b", services=[Serve(Greeter, name="greeter", version="2")])
    replies = {
        await trimicro_cluster.client.call("greeter", "Greeter.hello", {"name": "Ada"}) for _ in range(30)
    }
    assert replies == {"hello Ada from a", "hello Ada from b"}


# --8<-- [end:call]


# --8<-- [start:retries]
class WarmingUp(Actor):
    """Unavailable until ``ready_at`` (trio time): a service that takes 30 s to warm up."""

    def __init__(self, ready_at: float) -> None:
        self.ready_at = ready_at

    @idempotent
    async def get(self, body: Any) -> str:
        if trio.current_time() < self.ready_at:
            raise ServiceUnavailable("warming up")
        return "ready"


async def test_thirty_seconds_of_retries_in_virtual_time(
    trimicro_cluster: InprocCluster, autojump_clock: trio.testing.MockClock
) -> None:
    ready_at = trio.current_time() + 30
    await trimicro_cluster.add_node("server", services=[Serve(WarmingUp, name="warm", args=(ready_at,))])
    policy = RetryPolicy(attempts=100, backoff=0.5, max_backoff=4, budget_min=100)
    client = await trimicro_cluster.add_node("patient", retry=policy)
    # Retries with backoff until the service is ready: over 30 s of trio time, in milliseconds.
    assert await client.call("warm", "WarmingUp.get", timeout=60) == "ready"
    assert trio.current_time() >= ready_at
    attempts = trimicro_cluster.probes["server"].to("warm")
    assert len(attempts) > 2 and all(a.endpoint == "WarmingUp.get" for a in attempts)


# --8<-- [end:retries]
