"""A cluster across hosts: network namespaces joined by veth pairs and a bridge (tests/netsim.py).

Each host is its own network namespace (own interfaces, routes, sockets and firewall) and runs
its own node process (``ip netns exec NS python tests/host_peer.py ...``); they reach each other
only through their veth pairs and a bridge in a namespace of its own. Everything is removed at
the end of each test, pass or fail (the fixture's finalizer deletes the namespaces, killing what
still runs in them); names carry a random prefix so runs in parallel do not clash. The tests
skip only where network namespaces cannot be created (not root, or a sandbox), and say so.

The faults (what each is made of: see tests/netsim.py) are asserted on behaviour, never on
timing figures: no member is declared dead under 100 ms latency and 5 % loss; after a 10 s
partition every view holds every node alive again by a deadline. The figures themselves (time
to mark dead, time to agree, calls failed, false suspicions) are measured by
``benchmarks/bench_hosts.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from netsim import HERE, NODE_PORT, Netsim, NetsimUnavailable, node_options, processes, three_hosts

#: Deadlines are generous: two cores shared with other work, several processes per test.
START = 60.0
AGREE = 60.0


@pytest.fixture
def netsim() -> Iterator[Netsim]:
    try:
        sim = Netsim()
    except NetsimUnavailable as exc:
        pytest.skip(f"network namespaces unavailable here (the multi-host tests need root): {exc}")
    try:
        yield sim
    finally:
        sim.close()


async def test_hosts_find_each_other_by_mdns_on_their_veth_addresses(netsim: Netsim, tmp_path: Path) -> None:
    """mDNS bound to each host's veth address (``interfaces=``) finds the other host, SWIM
    makes them one cluster, and a call from one host reaches the service on the other through
    the selector."""
    h1, h2 = netsim.add_host(), netsim.add_host()
    async with processes(tmp_path) as cluster:
        a = await cluster.peer(
            h1, *node_options(h1, "a", tmp_path, "--interface", h1.address, "--serve", "echo")
        )
        b = await cluster.peer(
            h2,
            *node_options(h2, "b", tmp_path, "--interface", h2.address, "--call", "echo", "--period", "0.5"),
        )
        await cluster.wait_for(cluster.agree, AGREE, "both hosts in both views")
        assert a.address == f"{h1.address}:{NODE_PORT}"
        await cluster.wait_for(lambda: b.calls - b.failed >= 3, AGREE, "calls from b to the echo on a")


async def test_hosts_join_through_seeds_and_a_static_registry(netsim: Netsim, tmp_path: Path) -> None:
    """b joins with ``--seed`` a's address and c with a ``static://`` registry of it; no
    discovery reaches across (mDNS stays on each namespace's loopback). c learns b only from
    a's member list (gossip does not introduce members), and b learns c when c contacts it."""
    h1, h2, h3 = netsim.add_host(), netsim.add_host(), netsim.add_host()
    seed = f"{h1.address}:{NODE_PORT}"
    async with processes(tmp_path) as cluster:
        await cluster.peer(h1, *node_options(h1, "a", tmp_path, "--serve", "echo"))
        await cluster.peer(h2, *node_options(h2, "b", tmp_path, "--seed", seed, "--serve", "echo"))
        c = await cluster.peer(
            h3,
            *node_options(
                h3, "c", tmp_path, "--registry", f"static://{seed}", "--call", "echo", "--period", "0.3"
            ),
        )
        await cluster.wait_for(cluster.agree, AGREE, "a, b and c in every view")
        await cluster.wait_for(lambda: c.calls - c.failed >= 3, AGREE, "calls from c to echo on a or b")


WHERE = """
from trimicro.actors import Actor


class Where(Actor):
    service_name = "Where"

    async def node(self, body: object) -> str:
        return self.context.node.id
"""


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "trimicro.cluster.cli", *argv]


async def test_a_host_joins_with_a_certificate_issued_on_another(netsim: Netsim, tmp_path: Path) -> None:
    """The documented procedure, end to end with the CLI: ``authority init`` in host A's home,
    ``cert issue b1`` there, the bundle copied to host B's home (which has no authority) and
    ``cert install``-ed; A runs a node, B runs ``b1`` joining through ``--seed`` A; A's CLI sees
    both nodes alive and calls the service that only b1 serves."""
    h1, h2 = netsim.add_host(), netsim.add_host()
    home_a, home_b, bundle = tmp_path / "a", tmp_path / "b", tmp_path / "b1.bundle.json"
    await trio.run_process(cli("--home", str(home_a), "authority", "init"), capture_stdout=True)
    await trio.run_process(
        cli("--home", str(home_a), "cert", "issue", "b1", "--out", str(bundle)), capture_stdout=True
    )
    await trio.run_process(cli("--home", str(home_b), "cert", "install", str(bundle)), capture_stdout=True)
    assert not (home_b / "authority.key").exists()
    (tmp_path / "where.py").write_text(WHERE)
    on_a = ("--home", str(home_a), "--interface", h1.address)
    seed = f"{h1.address}:{NODE_PORT}"
    async with processes(tmp_path) as cluster:
        examples = str(HERE.parent / "examples" / "services.py")
        a = await cluster.start(h1, *cli(*on_a, "run", examples, "--name", "a1", "--listen", seed)[1:])
        b = await cluster.start(
            h2,
            *cli(
                "--home",
                str(home_b),
                "--interface",
                h2.address,
                "--seed",
                seed,
                "run",
                str(tmp_path / "where.py"),
            )[1:],
            "--name",
            "b1",
        )
        for p in (a, b):
            await cluster.wait_for(
                lambda p=p: any(line.startswith("node ") for line in p.lines), START, "node up"
            )

        async def members() -> dict[str, str]:
            done = await trio.run_process(
                h1.argv(*cli(*on_a, "nodes", "--json")), capture_stdout=True, check=False
            )
            return (
                {m["id"]: m["state"] for m in json.loads(done.stdout or b"[]")}
                if done.returncode == 0
                else {}
            )

        with trio.fail_after(AGREE):
            while (await members()).get("b1") != "alive":  # noqa: ASYNC110 (another process)
                await trio.sleep(0.5)  # polling a command: each round is a full client run
        done = await trio.run_process(
            h1.argv(*cli(*on_a, "call", "where", "Where.node", "{}")),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert json.loads(done.stdout) == "b1"


async def test_no_false_eviction_under_latency_and_loss(netsim: Netsim, tmp_path: Path) -> None:
    """Under 100 ms one-way latency on every link (a delaying TCP relay in each host, reached
    through an nftables redirect) and 5 % packet loss into every host (nftables ``numgen random
    mod 100 < 5 drop``), for 50 calls (about 10 s), no member is ever declared dead and calls
    keep succeeding. Suspicions may happen (they are refuted); the benchmark counts them."""
    async with processes(tmp_path) as cluster:
        hosts, (a, b, c) = await three_hosts(netsim, cluster, tmp_path, delay=0.1)
        await cluster.wait_for(cluster.agree, AGREE, "a, b and c in every view")
        for host in hosts:
            netsim.loss(host, 5)
        start = c.calls
        await cluster.wait_for(lambda: c.calls >= start + 50, 120, "50 calls under latency and loss")
        deaths = [(p.name, e) for p in (a, b, c) for e in p.events if e[2] in ("dead", "left")]
        assert deaths == [], f"false evictions: {deaths}"
        assert cluster.agree(), cluster.describe()
        assert c.calls - c.failed > 0


async def test_partitioned_host_is_marked_dead_and_rejoins_after_healing(
    netsim: Netsim, tmp_path: Path
) -> None:
    """Host a (a seed and a server) is cut off for 10 s (nftables drop rules on its veth, in and
    out: silence, as a pulled cable): b and c declare it dead and c's calls go to b; after the
    heal every view holds a, b and c alive again (b and c join a again through their seed, and
    a refutes the death it learns of)."""
    async with processes(tmp_path) as cluster:
        hosts, (_, b, c) = await three_hosts(netsim, cluster, tmp_path)
        await cluster.wait_for(cluster.agree, AGREE, "a, b and c in every view")
        cut_at = trio.current_time()
        netsim.partition(hosts[0])
        await cluster.wait_for(
            lambda: b.view.get("a") == "dead" and c.view.get("a") == "dead",
            AGREE,
            "a dead in b's and c's views",
        )
        # The fault lasts 10 s: this is its length, not a wait for an event.
        await trio.sleep_until(cut_at + 10)
        netsim.heal(hosts[0])
        await cluster.wait_for(cluster.agree, AGREE, "a, b and c in every view again after the heal")
        calls_before = c.calls - c.failed
        await cluster.wait_for(
            lambda: c.calls - c.failed > calls_before + 3, AGREE, "calls succeed after the heal"
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
