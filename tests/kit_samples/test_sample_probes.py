"""Waiting for things to happen, with a deadline and never a sleep: included in
docs/guides/testing.md."""

from __future__ import annotations

import attrs
import pytest
import trio.testing

from trimicro.actors import Actor, Node, tell
from trimicro.testing import (
    InprocCluster,
    MessageProbe,
    dead_letters,
    terminations,
    wait_member,
    wait_terminated,
)


@attrs.frozen
class Job:
    name: str


class Worker(Actor):
    async def job(self, msg: Job) -> None:
        if msg.name == "poison":
            raise ValueError("cannot do poison")


# --8<-- [start:message]
async def test_wait_for_a_message(trimicro_node: Node, trimicro_probe: MessageProbe) -> None:
    worker = await trimicro_node.spawn(Worker, name="worker")
    await tell(worker, Job("laundry"))
    delivery = await trimicro_probe.wait_for("worker", lambda job: job.name == "laundry")
    assert delivery.kind == "tell"


# --8<-- [end:message]


# --8<-- [start:deadletter]
async def test_wait_for_a_dead_letter(trimicro_node: Node) -> None:
    worker = await trimicro_node.spawn(Worker, name="worker")
    await trimicro_node.stop(worker)
    async with dead_letters(trimicro_node) as letters:
        await tell(worker, Job("late"))
        letter = await letters.wait_for(lambda d: d.reason == "stopped")
    assert letter.message == Job("late")


# --8<-- [end:deadletter]


# --8<-- [start:terminated]
async def test_wait_for_a_terminated(trimicro_node: Node) -> None:
    worker = await trimicro_node.spawn(Worker, name="worker")
    async with terminations(trimicro_node, worker) as stopped:
        await trimicro_node.stop(worker, reason="done for today")
        terminated = await stopped.wait_for()
    assert terminated.reason == "done for today"
    # Too late to watch: the actor is gone, and that is all that can be said.
    assert (await wait_terminated(trimicro_node, worker)).reason == "already stopped"


# --8<-- [end:terminated]


# --8<-- [start:membership]
async def test_wait_for_a_membership_change(
    trimicro_cluster: InprocCluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = await trimicro_cluster.add_node("a")
    await trimicro_cluster.add_node("b")
    assert await wait_member(a, "b", "alive") == "alive"
    await trimicro_cluster.converged()  # every node alive and linked, as each sees it
    await trimicro_cluster.stop_node("b")
    assert await wait_member(a, "b", ("left", "dead")) == "left"


# --8<-- [end:membership]


# --8<-- [start:timeout]
async def test_a_probe_that_times_out_says_what_it_saw(
    trimicro_node: Node, trimicro_probe: MessageProbe, autojump_clock: trio.testing.MockClock
) -> None:
    worker = await trimicro_node.spawn(Worker, name="worker")
    await tell(worker, Job("laundry"))
    with pytest.raises(AssertionError, match=r"no message to worker within 5 s; seen 1:\n.*laundry"):
        await trimicro_probe.wait_for("worker", lambda job: job.name == "dishes", timeout=5)


# --8<-- [end:timeout]


# --8<-- [start:faults]
async def test_a_node_cut_off_is_suspected_then_dead(
    trimicro_cluster: InprocCluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = await trimicro_cluster.add_node("a")
    await trimicro_cluster.add_node("b")
    await trimicro_cluster.converged()
    await trimicro_cluster.isolate("b")  # as if b's process had died
    assert await wait_member(a, "b", "suspect") == "suspect"
    assert await wait_member(a, "b", "dead") == "dead"
    trimicro_cluster.heal()


# --8<-- [end:faults]
