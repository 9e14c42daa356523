"""A scripted chat session: ``python examples/chat/run.py``.

Starts the chat (:mod:`chat.app`: a server node serving ``Chat``, and a client node whose calls
and streams cross an encrypted loopback link), then plays three users: alice reads her feed
as it comes; bob opens his with a window of 2 lines and does not read for a while (his
session holds the rest back: credit flow control); carol connects, goes away, and her session
stops itself when it has been idle. Presence follows all of it. It prints what happens,
checks it, and exits 0 (1 if a check fails).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import trio

from trimicro.actors import ask

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the package

from demo_checks import Checks

from chat.app import open_chat
from chat.client import ChatClient, Transcript

#: How many lines alice says while bob is not reading, and bob's window.
LINES = 10
WINDOW = 2
#: Seconds a session waits for a client that went away or has not connected yet: short, for
#: the demo, yet ample for a client to connect after joining on a busy machine.
IDLE_AFTER = 2.0


async def main() -> int:
    check = Checks()
    with tempfile.TemporaryDirectory(prefix="trimicro-chat-") as workdir:
        async with open_chat(Path(workdir), idle_after=IDLE_AFTER) as app, trio.open_nursery() as nursery:
            alice, bob, carol = (ChatClient(app.client, name) for name in ("alice", "bob", "carol"))
            print(f"chat server {app.server.id} at {app.server.address}; clients on node {app.client.id}\n")

            print("# alice joins and reads her feed as it comes")
            joined = await alice.join()
            print(f"  alice's session actor: {joined.session.path} on node {joined.session.node}")
            heard = Transcript("alice")

            async def alice_reads() -> None:
                async with alice.feed(joined.session) as stream:
                    await heard.read(stream)

            nursery.start_soon(alice_reads)

            print(f"# bob joins and opens his feed with a window of {WINDOW} lines, but does not read yet")
            bob_session = (await bob.join()).session
            async with bob.feed(bob_session, window=WINDOW) as bob_feed:
                print("# carol joins, reads her welcome, and goes away without leaving")
                carol_session = (await carol.join()).session
                async with carol.feed(carol_session) as stream:
                    first = await stream.receive()
                    print(f"  carol read: {first.user} {first.text}")
                online = await alice.who()
                print(f"  who is online: {online}")
                check(online == ["alice", "bob", "carol"], "all three online")

                print(f"\n# alice says {LINES} lines; the room fans each out to every session")
                for i in range(1, LINES + 1):
                    reached = await alice.say(f"line {i}")
                check(reached == 3, f"the last line reached {reached} sessions")
                await heard.wait_for(lambda line: line.text == f"line {LINES}", timeout=10)
                print(f"  alice received all {LINES} lines")
                stats = await ask(bob_session, None, endpoint="Session.stats")
                print(
                    f"  bob's session: {stats.pending} lines held back, {stats.delivered} sent "
                    f"(bob granted {WINDOW} and read none)"
                )
                check(stats.delivered <= WINDOW and stats.pending >= LINES, "flow control held bob's lines")

                print(f"\n# carol's client is gone: her session stops itself after {IDLE_AFTER} s idle")
                gone = await heard.wait_for(lambda line: line.text.startswith("carol left"), timeout=10)
                print(f"  alice saw: {gone.user} {gone.text}")
                online = await alice.who()
                print(f"  who is online: {online}")
                check(online == ["alice", "bob"], "carol is offline")

                print("\n# bob reads now: everything held back arrives, in order")
                bob_heard = Transcript("bob")
                while not any(line.text == f"line {LINES}" for line in bob_heard.lines):
                    bob_heard.add(await bob_feed.receive())
                said = [line.text for line in bob_heard.lines if line.user == "alice"]
                print(f"  bob read {len(bob_heard.lines)} lines through a window of {WINDOW}")
                check(said == [f"line {i}" for i in range(1, LINES + 1)], "bob got alice's lines in order")

                print("\n# bob leaves: his feed ends normally")
                await bob.leave()
                rest = [line async for line in bob_feed]
                check(all(line.user == "*" for line in rest), "bob's feed ended after its last lines")
            await heard.wait_for(lambda line: line.text == "bob left", timeout=10)

            print("\n# alice leaves")
            await alice.leave()
            with trio.fail_after(10):
                await heard.ended.wait()
            check(await alice.who() == [], "nobody online")
            print("\nalice's transcript:")
            for line in heard.lines:
                print(f"  {line.user:>6}: {line.text}")
    return check.exit_status()


if __name__ == "__main__":
    sys.exit(trio.run(main))
