"""The chat example (examples/chat): the session actor and the room alone with the testing kit's
``unit`` (timers in virtual time), a feed across two in-process nodes, and the one command run
as a newcomer runs it (a real process, TCP links)."""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing
from example_apps import ROOT, run_app

from trimicro.actors import ActorRef, Conflict, MicroError, NotFound, TooManyRequests, ask, open_stream, tell
from trimicro.testing import ActorHarness, open_cluster, terminations, unit, wait_terminated

sys.path.insert(0, str(ROOT / "examples"))

from chat.client import ChatClient, Transcript
from chat.model import Join, Line, Presence, Say, SessionStats, Who, types
from chat.rooms import Chat
from chat.session import Close, Session


def lines(*texts: str) -> list[Line]:
    return [Line("lobby", "ada", text) for text in texts]


async def stats(session: ActorRef) -> SessionStats:
    result: SessionStats = await ask(session, None, endpoint="Session.stats")
    return result


# ---- a session alone ------------------------------------------------------------------------


async def test_a_session_holds_lines_until_its_client_reads_them() -> None:
    async with unit(Session, "ada") as session:
        for line in lines("one", "two"):
            await session.tell(line)
        assert (await stats(session.ref)).pending == 2
        async with open_stream(session.ref, "Session.feed") as feed:
            feed.close_send()
            assert [await feed.receive(), await feed.receive()] == lines("one", "two")
            await session.tell(lines("three")[0])
            assert await feed.receive() == lines("three")[0]
            assert (await stats(session.ref)) == SessionStats("ada", True, pending=0, delivered=3, dropped=0)


async def test_a_slow_client_gets_what_its_credit_allows_and_the_backlog_is_bounded() -> None:
    async with unit(Session, "ada", backlog=5) as session:
        async with open_stream(session.ref, "Session.feed", window=2) as feed:
            feed.close_send()
            for line in lines(*(str(i) for i in range(1, 11))):
                await session.tell(line)
            await session.settle()  # the feed has sent what the client's credit allows
            # Two went out on credit, the third waits for credit, five wait behind it (the
            # backlog), and the two oldest of those were dropped to keep it at five.
            assert await stats(session.ref) == SessionStats("ada", True, pending=6, delivered=2, dropped=2)
            received = [await feed.receive() for _ in range(8)]
        assert [line.text for line in received] == ["1", "2", "3", "6", "7", "8", "9", "10"]


async def test_one_feed_at_a_time() -> None:
    async with unit(Session, "ada") as session, open_stream(session.ref, "Session.feed") as feed:
        feed.close_send()
        await session.settle()
        with pytest.raises(Conflict, match="already connected"):
            async with open_stream(session.ref, "Session.feed") as second:
                await second.receive()


# --8<-- [start:idle]
async def test_a_session_without_a_client_stops_when_idle(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        unit(Session, "ada", idle_after=30) as session,
        terminations(session.node, session.ref) as stopped,
    ):
        await session.advance(29)
        assert not stopped.items
        async with open_stream(session.ref, "Session.feed") as feed:  # a client keeps it
            feed.close_send()
            await session.advance(300)
            assert not stopped.items
        await session.advance(29)  # the client went away: idle from then on
        assert not stopped.items
        await session.advance(2)
        terminated = await stopped.wait_for()
        assert terminated.reason is None, terminated


# --8<-- [end:idle]


async def test_close_hands_over_what_is_pending_and_ends_the_feed_normally() -> None:
    async with unit(Session, "ada") as session, open_stream(session.ref, "Session.feed", window=1) as feed:
        feed.close_send()
        for line in lines("one", "two", "three"):
            await session.tell(line)
        async with terminations(session.node, session.ref) as stopped:
            await tell(session.ref, Close())  # not the harness's tell: it would wait for the drain
            assert [line async for line in feed] == lines("one", "two", "three")  # no error
            await stopped.wait_for()


# ---- the room alone (with real sessions as its children) ----------------------------------


async def joined(chat: ActorHarness[Chat], user: str, room: str = "lobby") -> ActorRef:
    reply = await chat.call("Chat.join", {"user": user, "room": room})
    session: ActorRef = reply.session
    return session


async def pending(session: ActorRef) -> list[str]:
    """What the session holds for its user, as ``user: text``, read through a feed."""
    count = (await stats(session)).pending
    async with open_stream(session, "Session.feed") as feed:
        feed.close_send()
        return [f"{line.user}: {line.text}" for line in [await feed.receive() for _ in range(count)]]


async def test_presence_fan_out_and_leave() -> None:
    async with unit(Chat) as chat:
        ada = await joined(chat, "ada")
        bob = await joined(chat, "bob")
        again = await chat.ask(Join("bob"))  # a client reconnecting finds its session
        assert again.session == bob and again.online == ["ada", "bob"]
        await joined(chat, "cy", room="garden")
        assert await chat.ask(Who()) == Presence("lobby", ["ada", "bob"])
        assert await chat.call("Chat.say", {"user": "bob", "text": "hi"}) == 2  # the lobby only
        async with terminations(chat.node, bob) as stopped:
            await chat.call("Chat.leave", {"user": "bob"})
            await stopped.wait_for()
        assert await chat.ask(Who()) == Presence("lobby", ["ada"])
        assert await pending(ada) == ["*: ada joined", "*: bob joined", "bob: hi", "*: bob left"]


async def test_the_room_refuses_what_does_not_fit() -> None:
    async with unit(Chat, max_users=2) as chat:
        await joined(chat, "ada")
        with pytest.raises(Conflict, match="online in lobby"):
            await joined(chat, "ada", room="garden")
        with pytest.raises(NotFound, match="join first"):
            await chat.ask(Say("bob", "hi"))
        for body in ({"user": "Ada!"}, {"user": "x" * 40}, {"user": "ada", "room": "a/b"}):
            with pytest.raises(MicroError) as bad:
                await chat.call("Chat.join", body)
            assert bad.value.code == 400, body
        with pytest.raises(MicroError) as bad:
            await chat.call("Chat.say", {"user": "ada", "text": "x" * 501})
        assert bad.value.code == 400
        await joined(chat, "bob")
        with pytest.raises(TooManyRequests, match="full"):
            await joined(chat, "cy")
        with pytest.raises(NotFound):
            await chat.call("Chat.leave", {"user": "cy"})


async def test_an_idle_user_goes_offline_and_the_room_is_told(autojump_clock: trio.testing.MockClock) -> None:
    async with unit(Chat, idle_after=60) as chat:
        ada = await joined(chat, "ada")
        carol = await joined(chat, "carol")
        async with open_stream(ada, "Session.feed") as feed:  # ada stays connected
            feed.close_send()
            heard = Transcript("ada")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(heard.read, feed)
                await chat.advance(61)
                await wait_terminated(chat.node, carol)
                assert await chat.ask(Who()) == Presence("lobby", ["ada"])
                line = await heard.wait_for(lambda line: line.text.startswith("carol left"), timeout=5)
                assert line.text == "carol left (idle)"
                nursery.cancel_scope.cancel()


# ---- across nodes ---------------------------------------------------------------------------


async def test_a_feed_across_nodes_keeps_to_its_window() -> None:
    async with open_cluster(types=types()) as cluster:
        await cluster.add_node("server", services=[Chat])
        ada, bob = ChatClient(cluster.client, "ada"), ChatClient(cluster.client, "bob")
        await ada.join()
        session = (await bob.join()).session
        assert session.node == "server"  # a ref to the actor on the other node
        async with bob.feed(session, window=2) as feed:
            for i in range(10):
                await ada.say(f"line {i}")
            held = await stats(session)
            assert held.delivered <= 2 and held.pending >= 9  # "bob joined" + 10 lines, 2 sent at most
            got = [await feed.receive() for _ in range(11)]
        assert [line.text for line in got] == ["bob joined"] + [f"line {i}" for i in range(10)]


# ---- the one command ------------------------------------------------------------------------


def test_the_one_command_plays_a_session_and_checks_it() -> None:
    run_app(
        "examples/chat/run.py",
        [
            "alice's session actor: /user/chat/alice on node chat-server",
            "who is online: ['alice', 'bob', 'carol']",
            "who is online: ['alice', 'bob']",
            "alice saw: * carol left (idle)",
            "bob read 12 lines through a window of 2",
            "check: flow control held bob's lines: ok",
            "*: bob left",
        ],
    )
