"""SWIM membership: convergence, failure detection, refutation, leave, bad input -- on a virtual clock.

The :class:`Sim` harness stands in for the runtime: it owns the Swim instances, a latency-delayed
message queue (every message goes through msgpack, as on the wire), a clock advanced in small
steps, and the faults: ``stop`` (SIGSTOP: the node neither runs nor sends nor receives),
``kill`` (SIGKILL, optionally reported to peers via ``link_lost``) and random message loss.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.cluster.membership.swim import (
    Member,
    MemberState,
    Outgoing,
    Swim,
    SwimConfig,
    SwimProtocolError,
    decode_message,
)

CFG = SwimConfig()
STEP = 0.01


class Sim:
    """An in-memory network of Swim nodes driven by a virtual clock."""

    def __init__(self, n: int, seed: int = 1, *, loss: float = 0.0, config: SwimConfig = CFG) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.loss = loss
        self.nodes = {
            f"n{i}": Swim(f"n{i}", f"10.0.0.{i}:7946", config=config, rng=random.Random(seed * 1000 + i))
            for i in range(n)
        }
        self.stopped: set[str] = set()
        self.queue: list[tuple[float, int, str, Outgoing]] = []
        self.counter = itertools.count()
        self.trace: list[tuple[float, str, str, str, int]] = []  # (time, observer, kind, member, inc)
        self.sent = 0
        self.dropped = 0

    # --- faults --------------------------------------------------------------------------------

    def stop(self, node: str) -> None:
        self.stopped.add(node)

    def resume(self, node: str) -> None:
        self.stopped.discard(node)
        self._send(node, self.nodes[node].tick(self.now))

    def inject(self, sender: str, to: str, message: dict[str, Any]) -> None:
        """A message that ``sender`` did not compute (a hostile member), delivered as any other."""
        heapq.heappush(self.queue, (self.now + 0.001, next(self.counter), sender, Outgoing(to, "", message)))

    def kill(self, node: str, *, link_lost: bool = True) -> None:
        del self.nodes[node]
        if link_lost:
            for name, swim in self.nodes.items():
                self._send(name, swim.link_lost(self.now, node))

    # --- driving -------------------------------------------------------------------------------

    def _send(self, sender: str, outgoing: list[Outgoing]) -> None:
        self._collect(sender)
        for out in outgoing:
            target = self.nodes.get(out.to_id)
            if target is not None:
                assert out.to_address in ("", target.me.address)
            self.sent += 1
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            latency = 0.002 + self.rng.random() * 0.008
            heapq.heappush(self.queue, (self.now + latency, next(self.counter), sender, out))

    def _collect(self, observer: str) -> None:
        for ev in self.nodes[observer].events():
            self.trace.append((self.now, observer, ev.kind, ev.member.id, ev.member.incarnation))

    def step(self) -> None:
        self.now = round(self.now + STEP, 6)
        while self.queue and self.queue[0][0] <= self.now:
            _, _, sender, out = heapq.heappop(self.queue)
            node = self.nodes.get(out.to_id)
            if node is None or out.to_id in self.stopped or sender in self.stopped:
                continue
            wire = msgpack.unpackb(msgpack.packb(out.message), raw=False)
            self._send(out.to_id, node.receive(self.now, sender, wire))
        for name, swim in self.nodes.items():
            if name not in self.stopped:
                self._send(name, swim.tick(self.now))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.step()

    def run_until(self, cond: Callable[[], bool], limit: float) -> float:
        """Step until ``cond()`` holds; return the virtual time it took (fail after ``limit``)."""
        start = self.now
        while not cond():
            assert self.now - start < limit, f"condition not met within {limit}s virtual"
            self.step()
        return self.now - start

    # --- views ---------------------------------------------------------------------------------

    def state_of(self, observer: str, member: str) -> MemberState | None:
        m = self.nodes[observer].get(member)
        return None if m is None else m.state

    def everyone_sees(self, member: str, *states: MemberState, exclude: tuple[str, ...] = ()) -> bool:
        return all(self.state_of(o, member) in states for o in self.nodes if o != member and o not in exclude)

    def converged(self) -> bool:
        names = set(self.nodes)
        return all(
            {m.id for m in swim.alive_members()} == names
            and all(m.state is MemberState.ALIVE for m in swim.members())
            for swim in self.nodes.values()
        )

    def kinds(self, member: str, kind: str) -> list[tuple[float, str]]:
        return [(t, o) for t, o, k, m, _ in self.trace if m == member and k == kind]


def joined_cluster(n: int = 5, seed: int = 1, **kwargs: Any) -> tuple[Sim, float]:
    """n nodes, each shown every other by discovery (the registry holds every node's record) and
    joining it; returns the sim and the time to converge."""
    sim = Sim(n, seed, **kwargs)
    for name, swim in sim.nodes.items():
        for other in sim.nodes:
            sim._send(name, swim.join(sim.now, other, sim.nodes[other].me.address))
    took = sim.run_until(sim.converged, limit=2.0)
    return sim, took


# --- scenarios -----------------------------------------------------------------------------------


def test_five_nodes_converge_through_discovery() -> None:
    sim, took = joined_cluster()
    assert took <= 2.0
    print(f"converged in {took:.2f}s virtual")
    for swim in sim.nodes.values():
        assert [m.id for m in swim.members()] == sorted(sim.nodes)
    joined = {(o, m) for _, o, k, m, _ in sim.trace if k == "joined"}
    assert joined == {(o, m) for o in sim.nodes for m in sim.nodes if o != m}
    assert not [e for e in sim.trace if e[2] in ("suspect", "dead")]


def test_stopped_node_is_suspected_then_dead() -> None:
    sim, _ = joined_cluster()
    sim.stop("n3")
    t_suspect = sim.run_until(lambda: sim.everyone_sees("n3", MemberState.SUSPECT, MemberState.DEAD), 3.0)
    first_suspect = min(t for t, _ in sim.kinds("n3", "suspect"))
    t_dead = sim.run_until(lambda: sim.everyone_sees("n3", MemberState.DEAD), 3.0)
    print(f"suspect everywhere after {t_suspect:.2f}s, dead everywhere {t_dead:.2f}s later")
    # Nobody declares it dead before a full suspicion timeout (others may then learn it by gossip).
    first_dead = min(t for t, _ in sim.kinds("n3", "dead"))
    assert first_dead >= first_suspect + CFG.suspicion_timeout - 1e-9
    assert {o for _, o in sim.kinds("n3", "dead")} == set(sim.nodes) - {"n3"}
    # Nobody else was harmed.
    assert not [e for e in sim.trace if e[2] == "dead" and e[3] != "n3"]


def test_resumed_node_refutes_before_timeout_and_is_never_dead() -> None:
    sim, _ = joined_cluster()
    sim.stop("n2")
    sim.run_until(lambda: bool(sim.kinds("n2", "suspect")), 3.0)
    suspected_at = sim.now
    sim.run(0.3)
    sim.resume("n2")
    took = sim.run_until(lambda: sim.everyone_sees("n2", MemberState.ALIVE), CFG.suspicion_timeout)
    print(f"refuted {took:.2f}s after resume ({sim.now - suspected_at:.2f}s after first suspicion)")
    sim.run(3.0)
    assert not [e for e in sim.trace if e[2] == "dead"]
    assert sim.converged()
    assert sim.nodes["n2"].me.incarnation >= 1
    for o in sim.nodes:
        member = sim.nodes[o].get("n2")
        assert member is not None and member.incarnation == sim.nodes["n2"].me.incarnation
    assert {o for _, o in sim.kinds("n2", "alive")} >= {o for _, o in sim.kinds("n2", "suspect")}


def test_resumed_after_being_declared_dead_rejoins() -> None:
    sim, _ = joined_cluster()
    sim.stop("n2")
    sim.run_until(lambda: sim.everyone_sees("n2", MemberState.DEAD), 5.0)
    sim.resume("n2")
    took = sim.run_until(sim.converged, 3.0)
    print(f"dead node rejoined {took:.2f}s after resume")
    assert {o for t, o in sim.kinds("n2", "joined") if t > 0.0} >= {o for _, o in sim.kinds("n2", "dead")}


def test_killed_node_with_link_lost_is_dead_everywhere_quickly() -> None:
    sim, _ = joined_cluster()
    sim.kill("n4", link_lost=True)
    took = sim.run_until(lambda: sim.everyone_sees("n4", MemberState.DEAD), 3.0)
    print(f"killed node (link_lost) dead everywhere after {took:.2f}s")
    assert CFG.suspicion_timeout <= took <= CFG.suspicion_timeout + 0.1


def test_link_lost_seen_by_one_peer_spreads() -> None:
    sim, _ = joined_cluster()
    del sim.nodes["n4"]
    sim._send("n1", sim.nodes["n1"].link_lost(sim.now, "n4"))
    took = sim.run_until(lambda: sim.everyone_sees("n4", MemberState.DEAD), 3.0)
    print(f"killed node (one link_lost) dead everywhere after {took:.2f}s")


def test_link_lost_on_a_live_node_is_refuted() -> None:
    sim, _ = joined_cluster()
    sim._send("n1", sim.nodes["n1"].link_lost(sim.now, "n2"))
    assert sim.state_of("n1", "n2") is MemberState.SUSPECT
    took = sim.run_until(lambda: sim.everyone_sees("n2", MemberState.ALIVE), 1.0)
    print(f"spurious link_lost refuted after {took:.3f}s")
    sim.run(3.0)
    assert sim.converged()


def test_no_false_death_with_ten_percent_loss() -> None:
    sim, _ = joined_cluster(loss=0.0)
    sim.loss = 0.10
    sim.run(30.0)
    suspicions = {(member, inc) for _, _, kind, member, inc in sim.trace if kind == "suspect"}
    observed = sum(1 for e in sim.trace if e[2] == "suspect")
    print(
        f"10% loss over 30s: {sim.dropped}/{sim.sent} messages dropped, {len(suspicions)} false "
        f"suspicions ({observed} suspect events over all observers), all refuted"
    )
    assert not [e for e in sim.trace if e[2] == "dead"]
    sim.loss = 0.0
    sim.run_until(sim.converged, 2.0)


def test_metadata_change_propagates() -> None:
    sim, _ = joined_cluster()
    before = sim.nodes["n3"].me.incarnation
    sim._send("n3", sim.nodes["n3"].set_metadata(sim.now, {"svc": "greeter@1.2"}))
    assert sim.nodes["n3"].me.incarnation == before + 1

    def everyone_has_it() -> bool:
        members = [sim.nodes[o].get("n3") for o in sim.nodes if o != "n3"]
        return all(m is not None and m.metadata == {"svc": "greeter@1.2"} for m in members)

    took = sim.run_until(everyone_has_it, 2.0)
    print(f"metadata reached everyone after {took:.2f}s")
    assert {o for _, o in sim.kinds("n3", "updated")} == set(sim.nodes) - {"n3"}


def test_graceful_leave_marks_left_everywhere() -> None:
    sim, _ = joined_cluster()
    sim._send("n1", sim.nodes["n1"].leave(sim.now))
    assert sim.nodes["n1"].me.state is MemberState.LEFT
    sim.run(0.05)
    sim.kill("n1", link_lost=True)  # the process exits after leaving
    assert sim.everyone_sees("n1", MemberState.LEFT)
    sim.run(5.0)
    assert sim.everyone_sees("n1", MemberState.LEFT)
    assert not sim.kinds("n1", "dead") and not sim.kinds("n1", "suspect")
    assert {o for _, o in sim.kinds("n1", "left")} == set(sim.nodes)


def test_dead_members_are_forgotten_after_retention_and_stale_alive_is_rejected() -> None:
    sim, _ = joined_cluster(3)
    sim.kill("n2")
    sim.run_until(lambda: sim.everyone_sees("n2", MemberState.DEAD), 3.0)
    dead = sim.nodes["n0"].get("n2")
    assert dead is not None
    stale = {"id": "n2", "addr": dead.address, "inc": dead.incarnation, "s": 0, "md": {}}
    sim.nodes["n0"].receive(sim.now, "n1", {"t": "ping", "seq": 1, "u": [stale]})
    assert sim.state_of("n0", "n2") is MemberState.DEAD
    sim.run(CFG.dead_retention + 0.1)
    assert sim.nodes["n0"].get("n2") is None
    assert [m.id for m in sim.nodes["n0"].members()] == ["n0", "n1"]


def test_determinism_with_a_seeded_rng() -> None:
    def trace(seed: int) -> list[tuple[float, str, str, str, int]]:
        sim, _ = joined_cluster(seed=seed, loss=0.05)
        sim.stop("n2")
        sim.run(3.0)
        sim.resume("n2")
        sim.run(3.0)
        return sim.trace

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


MAX_INC = 2**63 - 1


def poison(victim: str, receiver: str) -> dict[str, Any]:
    """What a hostile member sends: claims about ``victim`` (and the receiver itself) at
    incarnations nobody announced, and a record of the victim pretending to be its own."""
    bad = {"id": victim, "addr": "203.0.113.1:9", "md": {"svc": "fake@1"}}
    claims = [bad | {"inc": inc, "s": int(s)} for inc in (MAX_INC, MAX_INC - 1, 1) for s in MemberState]
    claims += [{"id": receiver, "addr": "", "md": {}, "inc": MAX_INC, "s": int(s)} for s in MemberState]
    return {"t": "ping", "seq": 7, "u": claims[:16]}


def test_poisoned_claims_never_evict_a_member() -> None:
    """The issue's attack: n3 (a member) tells everyone that n1 is dead at incarnation 2**63-1,
    and variants. n1 stays ALIVE at incarnation 0 in every honest view, all along, and no node
    ever sends a message that its peers would reject."""
    sim, _ = joined_cluster(4)
    honest = ("n0", "n1", "n2")
    for _ in range(50):  # 5 s of poison, every 0.1 s, to every honest node
        for to in honest:
            sim.inject("n3", to, poison("n1", to))
        for _ in range(10):
            sim.step()  # a message a peer would reject raises SwimProtocolError here
            for o in honest:
                member = sim.nodes[o].get("n1")
                assert member is not None and member.state is MemberState.ALIVE, (o, member)
                assert member.incarnation == 0
                assert sim.nodes[o].me.incarnation == 0 and sim.nodes[o].me.metadata == {}
    assert all(sim.nodes[o].ignored_claims >= 50 for o in honest)
    assert sim.converged()
    assert not [e for e in sim.trace if e[2] in ("suspect", "dead", "left", "updated")]


# --- unit-level rules ----------------------------------------------------------------------------


def make(node_id: str = "a", **kwargs: Any) -> Swim:
    return Swim(node_id, f"{node_id}:1", rng=random.Random(0), **kwargs)


def upd(member: str, inc: int, state: MemberState, md: dict[str, str] | None = None) -> dict[str, Any]:
    """An update as on the wire (the address is always ``<member>:1``, as :func:`make` gives)."""
    return {"id": member, "addr": f"{member}:1", "inc": inc, "s": int(state), "md": md or {}}


def ping(*updates: dict[str, Any]) -> dict[str, Any]:
    return {"t": "ping", "seq": 1, "u": list(updates)}


def test_refutes_rumours_about_itself() -> None:
    s = make()
    out = s.receive(0, "x", ping(upd("a", 0, MemberState.SUSPECT)))
    assert s.me.incarnation == 1
    assert out[0].message["u"][0] == upd("a", 1, MemberState.ALIVE) | {"addr": "a:1"}
    # Above our own incarnation: nobody can have heard it from us. Ignored, counted, no raise.
    for state in MemberState:
        s.receive(0, "x", ping(upd("a", 7, state), upd("a", 2**63 - 1, state)))
    assert (s.me.incarnation, s.me.state, s.ignored_claims) == (1, MemberState.ALIVE, 8)
    s.receive(0, "x", ping(upd("a", 1, MemberState.DEAD)))
    assert s.me.incarnation == 2 and s.me.state is MemberState.ALIVE
    assert s.events() == []


def test_a_member_sets_its_own_record() -> None:
    s = make()
    s.receive(0, "b", ping(upd("b", 3, MemberState.ALIVE)))
    assert [e.kind for e in s.events()] == ["joined"]
    s.link_lost(0, "b")  # our own evidence: suspect at the incarnation it announced
    assert s.get("b").state is MemberState.SUSPECT  # type: ignore[union-attr]
    s.receive(0, "b", ping(upd("b", 3, MemberState.ALIVE)))  # same incarnation cannot refute
    assert s.get("b").state is MemberState.SUSPECT  # type: ignore[union-attr]
    s.receive(0, "b", ping(upd("b", 4, MemberState.ALIVE, {"k": "v"})))
    assert [e.kind for e in s.events()] == ["suspect", "alive", "updated"]
    s.link_lost(0.1, "b")
    s.tick(0.1 + CFG.suspicion_timeout)
    assert s.get("b").state is MemberState.DEAD  # type: ignore[union-attr]
    s.receive(2, "x", ping(upd("b", 4, MemberState.ALIVE)))  # stale alive: still dead
    s.receive(2, "b", ping(upd("b", 4, MemberState.ALIVE)))  # it must refute, even to us
    assert s.get("b").state is MemberState.DEAD  # type: ignore[union-attr]
    s.receive(2, "b", ping(upd("b", 5, MemberState.ALIVE)))
    assert [e.kind for e in s.events()] == ["suspect", "dead", "joined"]
    # A new run of b counts from 0 again: its own word replaces what we held.
    s.receive(2, "b", ping(upd("b", 0, MemberState.ALIVE, {"run": "2"})))
    assert s.get("b") == Member("b", "b:1", 0, MemberState.ALIVE, {"run": "2"}, 2)
    assert [e.kind for e in s.events()] == ["updated"]
    s.receive(2, "b", ping(upd("b", 0, MemberState.LEFT)))
    assert s.get("b").state is MemberState.LEFT  # type: ignore[union-attr]
    assert s.ignored_claims == 0


def test_rumours_never_change_a_members_incarnation() -> None:
    s = make()
    s.receive(0, "b", ping(upd("b", 3, MemberState.ALIVE, {"k": "v"})))
    s.receive(0, "x", ping(upd("x", 0, MemberState.ALIVE)))
    s.events()
    # Third parties cannot raise b's incarnation or change its record: we ask b itself, at the
    # address b announced (not the one in the rumour).
    out = s.receive(0, "x", ping(upd("b", 9, MemberState.ALIVE, {"evil": "1"}) | {"addr": "evil:1"}))
    assert s.get("b") == Member("b", "b:1", 3, MemberState.ALIVE, {"k": "v"}, 0)
    asks = [o for o in out if o.to_id == "b"]
    assert len(asks) == 1 and (asks[0].to_address, asks[0].message["t"]) == ("b:1", "ping")
    assert asks[0].message["u"][0]["id"] == "a"
    # Nor can they suspect or kill it above the incarnation it announced: ignored and counted.
    for state in (MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT):
        s.receive(0, "x", ping(upd("b", 4, state), upd("b", 2**63 - 1, state)))
    assert s.get("b").state is MemberState.ALIVE and s.ignored_claims == 6  # type: ignore[union-attr]
    assert s.events() == []
    # b is asked once per probe timeout, however many rumours.
    assert not [o for o in s.receive(0.1, "x", ping(upd("b", 5, MemberState.ALIVE))) if o.to_id == "b"]
    s.receive(0.2, "b", {"t": "ack", "seq": asks[0].message["seq"], "u": [upd("b", 3, MemberState.ALIVE)]})
    s.tick(CFG.probe_timeout)
    assert [o for o in s.receive(0.3, "x", ping(upd("b", 5, MemberState.ALIVE))) if o.to_id == "b"]
    assert s.get("b").incarnation == 3  # type: ignore[union-attr]


def test_rumours_about_unknown_members_dial_nothing() -> None:
    """A member we never heard from is neither created nor asked by a rumour: its address is
    the claimant's choice, so dialing it would let any member make us dial anywhere."""
    s = make()
    s.receive(0, "x", ping(upd("x", 0, MemberState.ALIVE)))
    for state in MemberState:
        update = upd("c", 0, state) | {"addr": "203.0.113.9:22"}
        assert [o.to_id for o in s.receive(0, "x", ping(update))] == ["x"]  # only the ack
        assert [o.to_id for o in s.tick(0.01)] == ["x"] or s.get("c") is None
    assert s.get("c") is None and "c" not in s._checks
    # c speaking for itself joins us.
    s.receive(0.1, "c", ping(upd("c", 5, MemberState.ALIVE)))
    assert s.get("c").incarnation == 5  # type: ignore[union-attr]


def answer(
    s: Swim, now: float, outgoing: list[Outgoing], silent: frozenset[str] = frozenset()
) -> list[Outgoing]:
    """Every member not ``silent`` acks the pings ``s`` sent it (with its own record at
    incarnation 3); returns the messages sent."""
    for out in outgoing:
        if out.message["t"] == "ping" and out.to_id not in silent:
            s.receive(
                now,
                out.to_id,
                {"t": "ack", "seq": out.message["seq"], "u": [upd(out.to_id, 3, MemberState.ALIVE)]},
            )
    return outgoing


def drive(s: Swim, start: float, end: float, silent: frozenset[str] = frozenset()) -> list[Outgoing]:
    """Tick ``s`` every 10 ms from ``start`` to ``end``, answering as :func:`answer` does."""
    sent: list[Outgoing] = []
    for step in range(round((end - start) / STEP) + 1):
        now = start + step * STEP
        sent += answer(s, now, s.tick(now), silent)
    return sent


def test_a_death_claim_at_the_current_incarnation_is_checked_not_applied() -> None:
    """The lie that outlives refutation: "b is dead at the incarnation b announced", repeated
    at each new one. It only makes us ask b; we suspect b only when b does not answer us (nor
    through others), like our own probe, and then by the suspicion timeout as usual."""
    s = make()
    for member in ("b", "x", "y"):
        s.receive(0, member, ping(upd(member, 3, MemberState.ALIVE)))
    drive(s, 0, 1)
    s.events()
    for state in (MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT):
        now = float(state)
        out = s.receive(now, "x", ping(upd("b", 3, state)))
        (ask,) = [o for o in out if o.to_id == "b"]
        assert (ask.to_address, ask.message["t"]) == ("b:1", "ping")
        assert s.get("b").state is MemberState.ALIVE  # type: ignore[union-attr]
        # More claims while the check runs: no more pings to b.
        assert not [o for o in s.receive(now, "y", ping(upd("b", 3, state))) if o.to_id == "b"]
        answer(s, now, [ask])
        drive(s, now, now + 1)
    assert s.events() == [] and s.ignored_claims == 0
    # Now b is silent: ping_req through others after the probe timeout, suspect after the
    # probe interval (our own evidence), dead after the suspicion timeout.
    out = s.receive(4.0, "x", ping(upd("b", 3, MemberState.DEAD)))
    sent = drive(s, 4.0, 4.0 + CFG.probe_timeout, silent=frozenset({"b"}))
    assert [o.message["t"] for o in sent if o.message.get("target") == "b"] == ["ping_req"] * 2
    assert s.get("b").state is MemberState.ALIVE  # type: ignore[union-attr]
    drive(s, 4.0 + CFG.probe_timeout, 4.0 + CFG.probe_interval, silent=frozenset({"b"}))
    assert s.get("b").state is MemberState.SUSPECT  # type: ignore[union-attr]
    drive(s, 4.5, 4.5 + CFG.suspicion_timeout, silent=frozenset({"b"}))
    assert s.get("b").state is MemberState.DEAD  # type: ignore[union-attr]
    assert [e.kind for e in s.events()] == ["suspect", "dead"]


def test_left_comes_only_from_the_member_itself() -> None:
    s = make()
    s.receive(0, "b", ping(upd("b", 1, MemberState.ALIVE)))
    s.receive(0, "x", ping(upd("x", 0, MemberState.ALIVE)))
    s.events()
    s.receive(0, "x", ping(upd("b", 1, MemberState.LEFT)))
    assert s.get("b").state is MemberState.ALIVE  # type: ignore[union-attr]
    s.receive(0.1, "b", ping(upd("b", 1, MemberState.LEFT)))
    assert s.get("b").state is MemberState.LEFT  # type: ignore[union-attr]
    assert [e.kind for e in s.events()] == ["left"]


def test_a_node_cannot_speak_for_another() -> None:
    s = make()
    s.receive(0, "b", ping(upd("b", 1, MemberState.ALIVE)))
    s.receive(0, "x", ping(upd("x", 0, MemberState.ALIVE)))
    # x's message whose first record claims to be b is a rumour about b, not b speaking.
    s.receive(0, "x", ping(upd("b", 7, MemberState.ALIVE, {"svc": "fake@1"})))
    s.receive(0, "x", ping(upd("b", 7, MemberState.DEAD)))
    assert s.get("b") == Member("b", "b:1", 1, MemberState.ALIVE, {}, 0)
    # Nor can a node say that it is itself suspect or dead.
    s.receive(0, "x", ping(upd("x", 0, MemberState.DEAD)))
    assert s.get("x").state is MemberState.ALIVE and s.ignored_claims == 2  # type: ignore[union-attr]
    # A sender's own record is the first update of its message: one further down is ignored.
    s.receive(0, "b", ping(upd("x", 0, MemberState.ALIVE), upd("b", 5, MemberState.ALIVE, {"k": "v"})))
    s.receive(0, "b", ping(upd("b", 2, MemberState.ALIVE), upd("b", 5, MemberState.LEFT)))
    assert s.get("b") == Member("b", "b:1", 2, MemberState.ALIVE, {}, 0)
    assert s.ignored_claims == 4


def test_join_pings_the_seed_with_our_alive_record() -> None:
    s = make(metadata={"svc": "x"})
    (out,) = s.join(0, "seed", "seed:1")
    assert (out.to_id, out.to_address, out.message["t"]) == ("seed", "seed:1", "ping")
    assert out.message["u"][0] == {"id": "a", "addr": "a:1", "inc": 0, "s": 0, "md": {"svc": "x"}}
    # The seed's first alive record (same incarnation 0) still confirms it and brings its metadata.
    s.receive(0.1, "seed", {"t": "ack", "seq": 1, "u": [upd("seed", 0, MemberState.ALIVE, {"k": "v"})]})
    assert s.get("seed").metadata == {"k": "v"}  # type: ignore[union-attr]
    assert [e.kind for e in s.events()] == ["joined", "updated"]


def test_every_message_starts_with_the_senders_own_record() -> None:
    s = make(metadata={"svc": "x"})
    (out,) = s.receive(0, "stranger", {"t": "ping", "seq": 9, "u": [upd("stranger", 2, MemberState.ALIVE)]})
    assert out.to_id == "stranger" and out.to_address == "stranger:1" and "who" not in out.message
    assert out.message["u"][0] == {"id": "a", "addr": "a:1", "inc": 0, "s": 0, "md": {"svc": "x"}}
    assert [e.kind for e in s.events()] == ["joined"]  # it joined by speaking for itself
    for _ in range(20):  # our own record never drops out of the piggyback, unlike gossip
        assert s._message("stranger", {"t": "ping", "seq": 1}).message["u"][0]["id"] == "a"
    # A message without the sender's record (nothing to join) is still answered on its link.
    (out,) = s.receive(0, "other", {"t": "ping", "seq": 3})
    assert (out.to_id, out.to_address) == ("other", "")


def test_ping_req_is_relayed() -> None:
    s = make()
    s.receive(0, "r", ping(upd("r", 0, MemberState.ALIVE)))
    s.receive(0, "t", ping(upd("t", 0, MemberState.ALIVE)))
    (out,) = s.receive(0, "r", {"t": "ping_req", "seq": 42, "target": "t"})
    assert (out.to_id, out.message["t"]) == ("t", "ping")
    (relayed,) = s.receive(0.01, "t", {"t": "ack", "seq": out.message["seq"]})
    assert (relayed.to_id, relayed.message["t"], relayed.message["seq"]) == ("r", "ack", 42)
    assert s.receive(0.02, "t", {"t": "ack", "seq": out.message["seq"]}) == []  # only once


def test_messages_from_itself_are_ignored() -> None:
    s = make()
    assert s.receive(0, "a", ping(upd("b", 0, MemberState.ALIVE))) == []
    assert s.get("b") is None


def test_member_table_is_bounded() -> None:
    s = make(config=SwimConfig(max_members=4))
    for i in range(10):
        s.receive(0, f"m{i}", ping(upd(f"m{i}", 0, MemberState.ALIVE)))
    assert len(s.members()) == 4


def test_relays_are_bounded() -> None:
    s = make(config=SwimConfig(max_relays=3))
    s.receive(0, "r", ping(upd("r", 0, MemberState.ALIVE)))
    s.receive(0, "t", ping(upd("t", 0, MemberState.ALIVE)))
    outs = [s.receive(0, "r", {"t": "ping_req", "seq": i, "target": "t"}) for i in range(10)]
    assert sum(len(o) for o in outs) == 3
    s.tick(1.0)
    assert s.receive(1.0, "r", {"t": "ping_req", "seq": 99, "target": "t"})


def test_piggyback_is_bounded_and_updates_stop_after_retransmit_limit() -> None:
    s = make()
    for i in range(16):
        s.receive(0, f"m{i}", ping(upd(f"m{i}", 0, MemberState.ALIVE)))
    sent = [s._message("m0", {"t": "ping", "seq": 1}) for _ in range(200)]
    assert all(len(o.message["u"]) <= CFG.max_piggyback for o in sent)
    # Everything was sent retransmit_mult*ceil(log2(n+1)) times; our own record always goes.
    assert sent[-1].message["u"] == [upd("a", 0, MemberState.ALIVE)]


def test_a_flood_of_made_up_members_cannot_fill_the_table() -> None:
    cfg = SwimConfig(max_members=8)
    s = make(config=cfg)
    s.receive(0, "x", ping(upd("x", 0, MemberState.ALIVE)))
    for t in range(20):  # 20 probe timeouts of 16 made-up members each
        now = t * cfg.probe_timeout
        fakes = [upd(f"fake{t}-{i}", 0, MemberState(i % 4)) for i in range(16)]
        sent = s.receive(now, "x", ping(*fakes)) + s.tick(now)
        assert {o.to_id for o in sent} <= {"x"}  # nobody made up is ever dialed
        assert [m.id for m in s.members()] == ["a", "x"]
        assert not s._checks
    s.receive(10.0, "real", ping(upd("real", 0, MemberState.ALIVE)))  # a real node still joins
    assert s.get("real") is not None


def test_local_input_is_validated() -> None:
    with pytest.raises(ValueError):
        Swim("", "addr", rng=random.Random(0))
    s = make()
    with pytest.raises(ValueError):
        s.set_metadata(0, {str(i): "v" for i in range(17)})
    with pytest.raises(ValueError):
        s.join(0, "x" * 257, "addr")


def test_next_deadline() -> None:
    s = make()
    assert s.next_deadline() == float("-inf")
    s.tick(10.0)
    assert s.next_deadline() == 10.0 + CFG.probe_interval


# --- untrusted input -----------------------------------------------------------------------------

VALID: list[dict[str, Any]] = [
    {"t": "ping", "seq": 1, "u": [upd("b", 1, MemberState.ALIVE, {"k": "v"})]},
    {"t": "ack", "seq": 0, "u": [], "who": False},
    {"t": "ping_req", "seq": 2**63 - 1, "target": "b", "u": []},
    {"t": "ping", "seq": 3},
]

INVALID: list[object] = [
    None,
    [],
    b"ping",
    {},
    {"t": "pong", "seq": 1, "u": []},
    {"t": "ping", "seq": -1, "u": []},
    {"t": "ping", "seq": True, "u": []},
    {"t": "ping", "seq": 1.0, "u": []},
    {"t": "ping", "seq": 2**63, "u": []},
    {"t": "ping", "seq": 1, "u": {}},
    {"t": "ping", "seq": 1, "u": [upd("b", 0, MemberState.ALIVE)] * 17},
    {"t": "ping", "seq": 1, "u": [{"id": "b"}]},
    {"t": "ping", "seq": 1, "u": [upd("", 0, MemberState.ALIVE)]},
    {"t": "ping", "seq": 1, "u": [upd("b" * 257, 0, MemberState.ALIVE)]},
    {"t": "ping", "seq": 1, "u": [upd("b", 0, MemberState.ALIVE) | {"s": 4}]},
    {"t": "ping", "seq": 1, "u": [upd("b", 0, MemberState.ALIVE, {str(i): "" for i in range(17)})]},
    {"t": "ping", "seq": 1, "u": [upd("b", 0, MemberState.ALIVE, {"k": "v" * 257})]},
    {"t": "ping", "seq": 1, "u": [upd("b", 0, MemberState.ALIVE) | {"md": {1: "v"}}]},
    {"t": "ping_req", "seq": 1, "u": []},
    {"t": "ack", "seq": 1, "u": [], "who": 1},
    {"t": "ping", "seq": 1, "u": [], **{f"x{i}": i for i in range(10)}},
]


@pytest.mark.parametrize("message", VALID)
def test_decode_accepts_valid_messages(message: dict[str, Any]) -> None:
    decoded = decode_message(message)
    assert decoded["t"] == message["t"]
    make().receive(0, "x", message)


@pytest.mark.parametrize("message", INVALID)
def test_decode_rejects_invalid_messages(message: object) -> None:
    with pytest.raises(SwimProtocolError):
        decode_message(message)
    with pytest.raises(SwimProtocolError):
        make().receive(0, "x", message)


def test_receive_rejects_bad_sender_ids() -> None:
    for bad in ("", "x" * 257, 5, None):
        with pytest.raises(SwimProtocolError):
            make().receive(0, bad, {"t": "ping", "seq": 1})  # type: ignore[arg-type]


garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(), children, max_size=5)
    ),
    max_leaves=10,
)
ids = st.sampled_from(["a", "b", "c", "x"]) | st.text(max_size=4)
near_update = st.fixed_dictionaries(
    {
        "id": ids | garbage,
        "addr": st.text(max_size=4) | garbage,
        "inc": st.integers(-2, 2**64) | garbage,
        "s": st.integers(-1, 5) | garbage,
        "md": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3) | garbage,
    }
)
near_message = st.fixed_dictionaries(
    {
        "t": st.sampled_from(["ping", "ack", "ping_req", "nope"]) | garbage,
        "seq": st.integers(-2, 2**64) | garbage,
        "u": st.lists(near_update, max_size=4) | garbage,
    },
    optional={"target": ids | garbage, "who": st.booleans() | garbage},
)


incarnations = st.sampled_from([0, 1, 2, 3, MAX_INC - 1, MAX_INC]) | st.integers(0, MAX_INC)
claims = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", "x", "y"]),
        "addr": st.sampled_from(["b:1", "evil:1", ""]),
        "inc": incarnations,
        "s": st.sampled_from([int(s) for s in MemberState]),
        "md": st.sampled_from([{}, {"svc": "fake@1"}]),
    }
)
attacks = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["ping", "ack"]), st.lists(claims, max_size=16)),
    max_size=12,
)


def deliver(nodes: dict[str, Swim], now: float, sender: str, outgoing: list[Outgoing]) -> None:
    """Deliver messages among ``nodes`` until none is left (bounded), checking that each would be
    accepted by its receiver's decoder; messages to nodes not in ``nodes`` are dropped."""
    queue = [(sender, out) for out in outgoing]
    for _ in range(200):
        if not queue:
            return
        src, out = queue.pop(0)
        wire = msgpack.unpackb(msgpack.packb(out.message), raw=False)
        decode_message(wire)  # never raises: nothing we send leaves the valid range
        if out.to_id in nodes:
            queue.extend((out.to_id, o) for o in nodes[out.to_id].receive(now, src, wire))
    raise AssertionError("messages kept bouncing")


@settings(max_examples=200, deadline=None)
@given(attack=attacks, exchange_after=st.lists(st.booleans(), min_size=12, max_size=12))
def test_no_claim_pushes_a_member_past_what_it_announced(
    attack: list[tuple[str, str, list[dict[str, Any]]]], exchange_after: list[bool]
) -> None:
    """Whatever x (an authenticated member) claims, to a or to b: a never holds for b an
    incarnation that b did not announce, b's incarnation grows by at most one per claim at it
    (no jump), everything a and b send stays valid, and one honest exchange later b is ALIVE
    for a with its own record."""
    nodes = {"a": make("a"), "b": make("b")}
    a, b = nodes["a"], nodes["b"]
    now = 0.0
    deliver(nodes, now, "b", b.join(now, "a", "a:1"))
    claims_about_b = 0
    for (to, kind, updates), exchange in zip(attack, exchange_after, strict=False):
        now += 0.01
        claims_about_b += sum(1 for u in updates if u["id"] == "b" and u["s"] != 0)
        deliver(nodes, now, "x", nodes[to].receive(now, "x", {"t": kind, "seq": 1, "u": updates}))
        if exchange:
            deliver(nodes, now, "b", b.tick(now) + a.tick(now))
        held = a.get("b")
        assert held is None or held.incarnation <= b.me.incarnation
        assert b.me.incarnation <= claims_about_b
    for _ in range(2):  # b talks to a: a ping, and the answer to it; then again, after refuting
        now += 0.01
        deliver(nodes, now, "b", [Outgoing("a", "a:1", {"t": "ping", "seq": 99, "u": b._piggyback("a")})])
    held = a.get("b")
    assert held is not None and held.state is MemberState.ALIVE
    assert (held.incarnation, held.address, held.metadata) == (b.me.incarnation, "b:1", {})
    assert b.me.state is MemberState.ALIVE


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(st.tuples(ids, garbage | near_message), max_size=8), times=st.integers(0, 3))
def test_receive_never_crashes_on_garbage(messages: list[tuple[str, object]], times: int) -> None:
    s = make()
    s.join(0, "b", "b:1")
    now = 0.0
    for sender, message in messages:
        now += 0.1 * times
        try:
            decoded = decode_message(message)
        except SwimProtocolError:
            decoded = None
        out: list[Outgoing] = []
        try:
            out = s.receive(now, sender, message)
        except SwimProtocolError:
            assert decoded is None or sender == "" or len(sender) > 256
        for o in out + s.tick(now):  # everything we send, a peer accepts
            decode_message(msgpack.unpackb(msgpack.packb(o.message), raw=False))
    members: list[Member] = s.members()
    assert s.me in members and len(members) <= CFG.max_members


def test_a_liar_repeating_death_at_the_current_incarnation_cannot_evict() -> None:
    """Issue 17's second attack: n3 tells n0 and n2, every 50 ms, that n1 is dead (or suspect,
    or left) at the incarnation n1 holds now -- re-reading it after every refutation. Applied at
    once, this kept n1 out of the others' views 97% of the time; checked, it never does."""
    sim, _ = joined_cluster(4)
    del sim.trace[:]
    for round_ in range(500):  # 25 s
        inc = sim.nodes["n1"].me.incarnation
        state = (MemberState.DEAD, MemberState.SUSPECT, MemberState.LEFT)[round_ % 3]
        for to in ("n0", "n2"):
            sim.inject("n3", to, ping(upd("n1", inc, state)))
        for _ in range(5):
            sim.step()
            assert sim.state_of("n0", "n1") is MemberState.ALIVE
            assert sim.state_of("n2", "n1") is MemberState.ALIVE
    assert sim.nodes["n1"].me.incarnation == 0  # never suspected, so it never had to refute
    assert not [e for e in sim.trace if e[3] == "n1"]
