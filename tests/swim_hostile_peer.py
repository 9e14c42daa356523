"""A hostile cluster member in its own process: authenticated like any other, it lies in SWIM.

Usage: ``python tests/swim_hostile_peer.py HOME NAME SERVICE_TYPE VICTIM HONEST[,HONEST...] ROUNDS``.
Joins the cluster announced under the mDNS ``SERVICE_TYPE``, waits until every ``HONEST`` node
is an ALIVE member, prints ``ready``, then sends ``ROUNDS`` rounds of poison, 50 ms apart, to each
honest node, two pings a round:

- ``VICTIM`` is suspect, dead and left at the incarnation it holds *now* (read from this node's
  own, honestly kept view, so each refutation is answered at once by the same lie at the new
  incarnation), and 13 made-up members (new ids every round, each with an address on 127.0.0.1)
  are alive, suspect, dead or left;
- ``VICTIM`` is alive/suspect/dead/left at incarnations 2**63-1 and 2**63-2 (the alive one with a
  made-up address and services, as if it were the victim's own record), and the same claims
  about the receiver itself.

Each ack to the second ping is printed as ``acked ROUND NODE``: the receiver acks only after it
has applied the message (and the first, sent before it on the same link). Serves until killed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from trimicro.actors.remote import Link
from trimicro.cluster.cluster import start_cluster
from trimicro.cluster.membership.swim import MemberState
from trimicro.cluster.registry import MdnsRegistry
from trimicro.mailbox.envelope import Envelope

TOP = 2**63 - 1
SEQ_BASE = 1 << 40  # far above the seqs of the honest SWIM running in this process


def poison(victim: str, receiver: str, round_: int) -> dict[str, Any]:
    fake = {"id": victim, "addr": "127.0.0.1:9", "md": {"svc": "impostor@6.6.6"}}
    updates = [fake | {"inc": inc, "s": int(s)} for inc in (TOP, TOP - 1) for s in MemberState]
    updates += [{"id": receiver, "addr": "", "md": {}, "inc": TOP, "s": int(s)} for s in MemberState]
    return {"t": "ping", "seq": SEQ_BASE + round_, "u": updates[:16]}


def current_lies(victim: str, inc: int, round_: int) -> dict[str, Any]:
    claims = [{"id": victim, "addr": "", "md": {}, "inc": inc, "s": int(s)} for s in MemberState if s]
    made_up = [
        {"id": f"ghost-{round_}-{i}", "addr": "127.0.0.1:9", "md": {"svc": "echo@1"}, "inc": 0, "s": i % 4}
        for i in range(13)
    ]
    return {"t": "ping", "seq": 2 * SEQ_BASE + round_, "u": claims + made_up}


async def main(home: str, name: str, service_type: str, victim: str, honest: str, rounds: str) -> None:
    targets = honest.split(",")
    async with (
        MdnsRegistry(service_type=service_type) as registry,
        start_cluster(name, registry=registry, home=Path(home)) as cluster,
    ):
        membership = cluster.membership
        remote = cluster.node.remote
        codec = remote.codec
        honest_handler = remote.system_handlers["swim"]

        def watch_acks(link: Link, env: Envelope) -> Any:
            message = codec.decode(env.body)
            if not isinstance(message, dict):
                return honest_handler(link, env)
            seq = message.get("seq")
            if message.get("t") == "ack" and isinstance(seq, int) and SEQ_BASE <= seq < 2 * SEQ_BASE:
                print(f"acked {seq - SEQ_BASE} {link.peer.node_id}", flush=True)
            return honest_handler(link, env)

        remote.system_handlers["swim"] = watch_acks
        with trio.fail_after(30):
            while not all(
                (m := membership.member(t)) is not None and m.state is MemberState.ALIVE for t in targets
            ):
                await membership.wait_changed()
        print("ready", flush=True)
        for round_ in range(int(rounds)):
            held = membership.member(victim)
            inc = 0 if held is None else held.incarnation
            for target in targets:
                send = remote.peer(target).send_system
                send("swim", codec.encode(current_lies(victim, inc, round_)))
                send("swim", codec.encode(poison(victim, target, round_)))
            await trio.sleep(0.05)  # the pace of the attack, not a synchronisation
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:7])
