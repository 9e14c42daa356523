"""Auth on every call, stream and topic between cluster nodes: accounts, tokens, rules, revocation."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_remote import Watcher

from trimicro.actors import Actor, ActorRef, Stream, Terminated, ask, open_stream
from trimicro.cluster import call
from trimicro.cluster.auth import (
    DEFAULT_RULES,
    Access,
    Account,
    AuthService,
    Resource,
    Rule,
    Rules,
    issue_token,
)
from trimicro.cluster.auth.guard import (
    AUTH_SERVICE,
    BUILTIN_RULES,
    CHANGED_OP,
    GUARD_ID,
    AuthGuard,
    node_account,
    open_state,
    sign_state,
)
from trimicro.cluster.broker import Message
from trimicro.cluster.cluster import Cluster, start_cluster
from trimicro.cluster.registry import MemoryRegistry, NodeInfo, Service
from trimicro.cluster.store import MemoryStore
from trimicro.mailbox.envelope import Envelope, Kind, encode_envelope
from trimicro.mailbox.errors import (
    BadRequest,
    Forbidden,
    InternalServerError,
    MicroError,
    NotFound,
    Unauthorized,
)
from trimicro.mailbox.secure.identity import Authority, NodeIdentity, dev_authority

REFRESH = 0.05


class Greeter(Actor):
    service_name = "Greeter"

    async def hello(self, body: Any) -> dict[str, Any]:
        account = self.context.account
        return {"hello": body.get("name"), "caller": None if account is None else account.id}

    async def secret(self, body: Any) -> str:
        return "the plans"

    async def chat(self, stream: Stream) -> None:
        async for item in stream:
            await stream.send({"echo": item, "caller": self.context.account.id})


class Front(Actor):
    """Calls Greeter onwards while serving a request: the original caller must travel along."""

    service_name = "Front"

    async def relay(self, body: Any) -> Any:
        return await call("greeter", "Greeter.hello", {"name": "via front"})


@asynccontextmanager
async def cluster_of(
    home: Path, n: int, *, membership: bool = False, refresh: float | None = REFRESH, **options: Any
) -> AsyncIterator[list[Cluster]]:
    """``n`` nodes; node 0 runs the auth service (with the authority key) and Greeter."""
    registry = MemoryRegistry()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                start_cluster(
                    f"n{i}",
                    registry=registry,
                    home=home,
                    membership=membership,
                    auth_refresh=refresh,
                    **options,
                )
            )
            for i in range(n)
        ]
        await nodes[0].serve(AuthService, MemoryStore(), dev_authority(home).signing_key, name=AUTH_SERVICE)
        await nodes[0].serve(Greeter, name="greeter")
        yield nodes


async def synced(*nodes: Cluster) -> None:
    """Wait until every node enforces the auth service's current state (a real event per change).

    The auth service's own node (``nodes[0]``) has a change in force before the call that made
    it returns; the others fetch it when poked, or at their next refresh.
    """
    target = (nodes[0].auth.epoch, nodes[0].auth.version)
    with trio.fail_after(5):
        for node in nodes:
            while (node.auth.epoch, node.auth.version) != target:
                await node.auth.wait_changed()


async def login(node: Cluster, account: str, scopes: list[str]) -> str:
    created = await node.call(AUTH_SERVICE, "Auth.add_account", {"id": account, "scopes": scopes})
    # Generated secrets are hex: one that began with "-" would read as an option in the CLI.
    assert len(created["secret"]) == 48 and int(created["secret"], 16) >= 0
    tokens = await node.call(AUTH_SERVICE, "Auth.token", {"id": account, "secret": created["secret"]})
    token: str = tokens["access"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def add_rule(
    node: Cluster, rule_id: str, scope: str, resource: str, access: str = "granted", priority: int = 10
) -> None:
    """Create a rule through the auth service; ``resource`` is ``type:name:endpoint``."""
    kind, name, endpoint = resource.split(":")
    rule = {
        "id": rule_id,
        "scope": scope,
        "resource": {"type": kind, "name": name, "endpoint": endpoint},
        "access": access,
        "priority": priority,
    }
    await node.call(AUTH_SERVICE, "Auth.create_rule", rule)


async def lock_down(node: Cluster) -> None:
    """Replace Go Micro's default rule: only scope ``admin`` may call Greeter."""
    await node.call(AUTH_SERVICE, "Auth.delete_rule", {"id": "default"})
    await add_rule(node, "greeter-admins", "admin", "service:greeter:Greeter.*")


async def test_default_rule_lets_cluster_nodes_call_and_handlers_see_the_node_account(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        reply = await b.call("greeter", "Greeter.hello", {"name": "Ada"})
        assert reply == {"hello": "Ada", "caller": "n1"}  # the calling node's own account
        assert isinstance(a.node.remote.guard, AuthGuard)


async def test_tokens_are_standard_jwts_that_pyjwt_verifies(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 1) as (a,):
        token = await login(a, "alice", ["admin", "ops"])
    public = Ed25519PublicKey.from_public_bytes(dev_authority(tmp_path).public_key)
    claims = jwt.decode(token, key=public, algorithms=["EdDSA"])
    assert claims["sub"] == "alice"
    assert claims["scopes"] == ["admin", "ops"]
    assert claims["exp"] > claims["iat"]


async def test_rules_change_live_and_deny_with_401_and_403(tmp_path: Path, caplog: Any) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        alice = await login(a, "alice", ["admin"])
        bob = await login(a, "bob", ["guest"])
        await lock_down(a)
        await synced(a, b)
        caplog.set_level(logging.WARNING, logger="trimicro.cluster.auth")
        assert (await b.call("greeter", "Greeter.hello", {"name": "x"}, headers=bearer(alice)))[
            "caller"
        ] == "alice"
        with pytest.raises(Forbidden) as denied:
            await b.call("greeter", "Greeter.hello", {"name": "x"}, headers=bearer(bob))
        assert denied.value.detail == "forbidden"  # nothing that helps an attacker
        with pytest.raises(Forbidden):  # no token: the node's own account has no admin scope
            await b.call("greeter", "Greeter.hello", {"name": "x"})
        with pytest.raises(Unauthorized):
            await b.call("greeter", "Greeter.hello", {"name": "x"}, headers=bearer(alice[:-4] + "AAAA"))
        assert "denied user bob (guest) access to service greeter Greeter.hello" in caplog.text
        # A rule deleted: the next refresh lets the node account back in, without a restart.
        anyone = {"type": "*", "name": "*", "endpoint": "*"}
        default = {"id": "default", "scope": "*", "resource": anyone, "access": "granted", "priority": 0}
        await a.call(AUTH_SERVICE, "Auth.create_rule", default)
        await synced(a, b)
        assert (await b.call("greeter", "Greeter.hello", {"name": "x"}))["caller"] == "n1"


async def test_expired_tampered_and_foreign_tokens_are_401(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (_, b):
        key = dev_authority(tmp_path).signing_key
        account = Account("carol", "user", bytes(key.verify_key).hex(), ("admin",))
        expired = issue_token(key, account, ttl=60, now=1_000_000)
        foreign = issue_token(Authority.generate().signing_key, account, ttl=60)
        good = issue_token(key, account, ttl=60)
        parts = good.split(".")
        tampered = ".".join(
            [parts[0], parts[1][:-2] + ("A" if parts[1][-2] != "A" else "B") + parts[1][-1], parts[2]]
        )
        for bad in (expired, foreign, tampered, "not a token"):
            with pytest.raises(Unauthorized) as err:
                await b.call("greeter", "Greeter.hello", {}, headers=bearer(bad))
            assert err.value.detail == "unauthorized"  # expired, forged or garbage: all look alike
        assert (await b.call("greeter", "Greeter.hello", {}, headers=bearer(good)))["caller"] == "carol"


async def test_a_service_calling_onwards_acts_for_the_original_caller(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 3) as (a, b, c):
        await b.serve(Front, name="front")
        alice = await login(a, "alice", ["admin"])
        await lock_down(a)
        await add_rule(a, "front-any", "*", "service:front:*", priority=5)
        await synced(a, b, c)
        reply = await c.call("front", "Front.relay", {}, headers=bearer(alice))
        assert reply["caller"] == "alice"  # Greeter (on n0) judged alice, not front's node n1
        with pytest.raises(Forbidden):  # without a user, front's node account is not an admin
            await c.call("front", "Front.relay", {})


async def test_revoked_token_account_and_node_are_refused_within_a_refresh(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 3) as (a, b, c):
        alice = await login(a, "alice", ["admin"])
        assert (await b.call("greeter", "Greeter.hello", {}, headers=bearer(alice)))["caller"] == "alice"
        await a.call(AUTH_SERVICE, "Auth.revoke", {"token": alice})
        await synced(a, b)
        with pytest.raises(Unauthorized):
            await b.call("greeter", "Greeter.hello", {}, headers=bearer(alice))
        # The account: a fresh login is refused too, and so is any token it still holds.
        fresh = await login(a, "dave", ["admin"])
        await a.call(AUTH_SERVICE, "Auth.revoke", {"account": "dave"})
        await synced(a, b)
        with pytest.raises(Unauthorized):
            await b.call("greeter", "Greeter.hello", {}, headers=bearer(fresh))
        # A node: its links are closed and it cannot call in again.
        assert (await c.call("greeter", "Greeter.hello", {}))["caller"] == "n2"
        await a.call(AUTH_SERVICE, "Auth.revoke", {"node": "n2"})
        await synced(a, b)
        with pytest.raises(MicroError) as refused:
            await c.call("greeter", "Greeter.hello", {}, timeout=2)
        assert refused.value.code in (401, 503)  # refused by the guard, or in the handshake
        assert not a.node.remote.peer("n2").links  # no link: none of n2's SYSTEM messages get in
        assert (await b.call("greeter", "Greeter.hello", {}))["caller"] == "n1"  # others go on
        with pytest.raises(BadRequest):  # a revoked account id cannot be brought back to life
            await a.call(AUTH_SERVICE, "Auth.add_account", {"id": "dave"})


async def test_changes_are_pushed_at_once_and_polled_when_a_push_is_lost(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2, refresh=3600) as (a, b):  # no periodic fetch in time
        assert (await b.call("greeter", "Greeter.hello", {}))["caller"] == "n1"  # a link exists
        with trio.fail_after(5):
            await a.call(AUTH_SERVICE, "Auth.revoke", {"account": "zoe"})
            while "zoe" not in b.auth.revoked_accounts:  # pushed: b fetched it without waiting an hour
                await b.auth.wait_changed()
    async with cluster_of(tmp_path, 2) as (a, b):
        assert (await b.call("greeter", "Greeter.hello", {}))["caller"] == "n1"
        del b.node.remote.system_handlers[CHANGED_OP]  # b misses every push from now on
        await a.call(AUTH_SERVICE, "Auth.revoke", {"account": "zoe"})
        await synced(a, b)  # b still learns it, from its periodic fetch
        assert "zoe" in b.auth.revoked_accounts


async def test_refresh_rotates_and_a_used_refresh_token_is_refused(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        created = await a.call(AUTH_SERVICE, "Auth.add_account", {"id": "erin", "scopes": []})
        pair = await b.call(AUTH_SERVICE, "Auth.token", {"id": "erin", "secret": created["secret"]})
        renewed = await b.call(AUTH_SERVICE, "Auth.refresh", {"refresh": pair["refresh"]})
        assert renewed["refresh"] != pair["refresh"]
        with pytest.raises(Unauthorized):
            await b.call(AUTH_SERVICE, "Auth.refresh", {"refresh": pair["refresh"]})
        with pytest.raises(Unauthorized):  # a wrong secret says nothing about which part was wrong
            await b.call(AUTH_SERVICE, "Auth.token", {"id": "erin", "secret": "wrong-secret"})
        with pytest.raises(Unauthorized):
            await b.call(AUTH_SERVICE, "Auth.token", {"id": "nobody", "secret": "whatever-secret"})


async def test_streams_and_topics_follow_the_rules(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2, membership=True) as (a, b):  # pub/sub interest needs members
        alice = await login(a, "alice", ["admin"])
        await lock_down(a)
        await synced(a, b)
        async with b.open_stream("greeter", "Greeter.chat", None, headers=bearer(alice)) as stream:
            await stream.send(1)
            assert await stream.receive() == {"echo": 1, "caller": "alice"}
        with pytest.raises(Forbidden):
            async with b.open_stream("greeter", "Greeter.chat", None):
                pass
        # Topics: any account may subscribe to orders.*, only admins may publish there, and no
        # rule lets anyone subscribe to secret.> (default deny).
        await add_rule(a, "orders-sub", "*", "topic:orders.*:subscribe")
        await add_rule(a, "orders-pub", "admin", "topic:orders.*:publish")
        await synced(a, b)
        async with (
            b.pubsub.messages("secret.>"),
            b.pubsub.messages("orders.*"),
            a.pubsub.messages("orders.*") as inbox,
        ):

            def patterns(node: Cluster, peer: str) -> list[str]:
                return [entry[0] for entry in node.pubsub.remote_interest.get(peer, [])]

            with trio.fail_after(5):
                while patterns(b, "n0") != ["orders.*"]:
                    await b.pubsub.wait_interest()
                while sorted(patterns(a, "n1")) != ["orders.*", "secret.>"]:
                    await a.pubsub.wait_interest()
            # Subscribing is checked per message against its topic, so the wildcard secret.>
            # gets nothing it may not see, and orders.* (granted) gets everything.
            assert await a.publish("secret.plans", {"x": 1}) == 0
            assert await a.publish("orders.seen", {"n": 0}, headers=bearer(alice)) == 2  # here and at n1
            with trio.fail_after(5):
                assert (await inbox.receive()).body == {"n": 0}
            with pytest.raises(Forbidden):  # as node n1, no admin: refused before it leaves
                await b.publish("orders.new", {"n": 1})
            await b.publish("orders.new", {"n": 2}, headers=bearer(alice))
            with trio.fail_after(5):
                msg: Message = await inbox.receive()
            assert msg.body == {"n": 2}
            assert "authorization" not in msg.headers  # the publisher's token stays with the check
        assert a.auth.denied >= 2 and b.auth.denied >= 1  # the stream at n0, the publish at n1


async def interest(node: Cluster, peer: str, patterns: list[str]) -> None:
    """Wait until ``node`` knows that ``peer`` subscribes to exactly ``patterns``."""
    with trio.fail_after(5):
        while sorted(e[0] for e in node.pubsub.remote_interest.get(peer, [])) != sorted(patterns):
            await node.pubsub.wait_interest()


async def orders_for_admins(node: Cluster) -> None:
    """Without Go Micro's default rule: any account may subscribe to orders.*, only scope
    admin may publish there."""
    await node.call(AUTH_SERVICE, "Auth.delete_rule", {"id": "default"})
    await add_rule(node, "orders-sub", "*", "topic:orders.*:subscribe")
    await add_rule(node, "orders-pub", "admin", "topic:orders.*:publish")


async def test_a_refused_publish_raises_401_or_403_and_delivers_nothing(tmp_path: Path) -> None:
    """Across two nodes: the publisher gets the refusal (it used to be counted as delivered,
    and redelivered five times with ack=True), and nobody gets the message, not even a
    subscriber on the publisher's own node."""
    async with cluster_of(tmp_path, 2, membership=True) as (a, b):
        alice = await login(a, "alice", ["admin"])
        bob = await login(a, "bob", ["guest"])
        await orders_for_admins(a)
        await synced(a, b)
        async with a.pubsub.messages("orders.*") as at_a, b.pubsub.messages("orders.*") as at_b:
            await interest(b, "n0", ["orders.*"])
            with pytest.raises(Forbidden):
                await b.publish("orders.new", 1)  # as node n1, which has no admin scope
            with pytest.raises(Forbidden):
                await b.publish("orders.new", 2, headers=bearer(bob))
            forged = issue_token(
                Authority.generate().signing_key, Account("alice", "user", "", ("admin",)), ttl=60
            )
            with pytest.raises(Unauthorized):
                await b.publish("orders.new", 3, headers=bearer(forged))
            denied_at_a = a.auth.denied
            for n, headers in ((4, None), (5, bearer(bob))):
                with pytest.raises(Forbidden):
                    await b.publish("orders.new", n, ack=True, ack_timeout=2, headers=headers)
            assert a.auth.denied == denied_at_a  # refused before anything left n1
            assert await b.publish("orders.new", 6, headers=bearer(alice)) == 2  # here and at n0
            assert await b.publish("orders.new", 7, headers=bearer(alice), ack=True, ack_timeout=2) == 2
            with trio.fail_after(5):
                assert [(await at_a.receive()).body for _ in range(2)] == [6, 7]  # nothing refused first
                assert [(await at_b.receive()).body for _ in range(2)] == [6, 7]


async def test_a_refusal_by_the_receiving_node_is_raised_and_never_redelivered(tmp_path: Path) -> None:
    """The publisher's rules allow what the receiver's refuse (rules that changed within the
    refresh period): acknowledged mode raises the receiver's 403 after one delivery, and the
    refused message goes neither to another attempt nor to the dead-letter topic."""
    async with cluster_of(tmp_path, 2, membership=True, refresh=None) as (a, b):
        await orders_for_admins(a)  # in force at n0 (the auth service's node) at once
        b.auth.apply(1, DEFAULT_RULES, {})  # n1 still has Go Micro's default: anything goes
        async with a.pubsub.messages("orders.*"), b.pubsub.messages("$dead.>") as dead:
            await interest(b, "n0", ["orders.*"])
            denied_at_a = a.auth.denied
            with pytest.raises(Forbidden):
                await b.publish("orders.new", 1, ack=True, ack_timeout=2, max_deliveries=5)
            assert a.auth.denied == denied_at_a + 1  # one delivery, refused once
            await b.publish("$dead.sentinel", "end")  # a dead letter of the refusal would come first
            with trio.fail_after(5):
                assert (await dead.receive()).topic == "$dead.sentinel"


async def test_a_refusal_by_one_receiving_node_does_not_stop_delivery_to_the_others(tmp_path: Path) -> None:
    """n0's rules refuse what n1 publishes, n2's allow it: with ``ack=True`` the subscriber on
    the publisher's node and the one on n2 get the message once each, and the publisher gets
    the 403 at the end, naming n0 (a retry would duplicate the others: the error says so).

    Before: the 403 from n0 aborted the publish: n2 (after it, by node id) never got it."""
    async with cluster_of(tmp_path, 3, membership=True, refresh=None) as (a, b, c):
        await orders_for_admins(a)
        for node in (b, c):
            node.auth.apply(1, DEFAULT_RULES, {})
        async with (
            a.pubsub.messages("orders.*"),
            b.pubsub.messages("orders.*") as at_b,
            c.pubsub.messages("orders.*") as at_c,
            b.pubsub.messages("$dead.>") as dead,
        ):
            await interest(b, "n0", ["orders.*"])
            await interest(b, "n2", ["orders.*"])
            with pytest.raises(Forbidden) as refused:
                await b.publish("orders.new", 1, ack=True, ack_timeout=2)
            assert refused.value.id == GUARD_ID
            assert "refused by node n0 (1 of 3 deliveries; 2 acked)" in refused.value.detail
            await b.publish("orders.new", "end")  # a second copy of 1 would come before it
            with trio.fail_after(5):
                for inbox in (at_b, at_c):
                    assert [(await inbox.receive()).body for _ in range(2)] == [1, "end"]
            await b.publish("$dead.sentinel", "end")  # a dead letter of the refusal would come first
            with trio.fail_after(5):
                assert (await dead.receive()).topic == "$dead.sentinel"


async def test_a_queue_group_tries_the_next_member_when_one_node_refuses(tmp_path: Path) -> None:
    """Queue group members on n0 (rules refuse) and n2 (rules allow): the message goes to n2,
    with no error. Before: n0, tried first, ended the publish with its 403."""
    async with cluster_of(tmp_path, 3, membership=True, refresh=None) as (a, b, c):
        await orders_for_admins(a)
        for node in (b, c):
            node.auth.apply(1, DEFAULT_RULES, {})
        b.rng.shuffle = lambda x: None  # type: ignore[method-assign]  # candidates by node id: n0 first
        async with (
            a.pubsub.messages("orders.*", queue="workers"),
            c.pubsub.messages("orders.*", queue="workers") as at_c,
        ):
            await interest(b, "n0", ["orders.*"])
            await interest(b, "n2", ["orders.*"])
            assert await b.publish("orders.new", 1, ack=True, ack_timeout=2) == 1
            with trio.fail_after(5):
                assert (await at_c.receive()).body == 1


class Refusing(Actor):
    """A subscriber whose handler raises 403 for reasons of its own (not the node's guard)."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    async def on_message(self, msg: Message) -> None:
        self.seen.append(msg.delivery)
        raise Forbidden("not for me")


async def test_a_subscribers_own_403_is_a_failed_delivery_not_a_refusal(tmp_path: Path) -> None:
    """A handler's 403 is a nack like any failure: redelivered, then dead-lettered; the
    publisher gets no 403. Before: taken for the receiving node's refusal and raised at once."""
    async with cluster_of(tmp_path, 2, membership=True) as (a, b):
        seen: list[int] = []
        await a.subscribe("orders.*", await a.node.spawn(Refusing, seen))
        async with a.pubsub.messages("$dead.>") as dead:
            await interest(b, "n0", ["$dead.>", "orders.*"])
            assert await b.publish("orders.new", 1, ack=True, ack_timeout=2, max_deliveries=2) == 0
            with trio.fail_after(5):
                assert (await dead.receive()).topic == "$dead.orders.new"
            assert seen == [1, 2]


class Failing(Actor):
    """A subscriber whose handler always fails: every acknowledged delivery is a nack."""

    async def on_message(self, msg: Message) -> None:
        raise InternalServerError("cannot take it")


async def test_a_dead_letter_the_rules_refuse_does_not_fail_the_publish(tmp_path: Path) -> None:
    """After its nacked deliveries a message goes to $dead.<topic>, published by the node: if
    the rules refuse the node that, the publisher is not told of a refusal that is not its own."""
    async with cluster_of(tmp_path, 2, membership=True) as (a, b):
        alice = await login(a, "alice", ["admin"])
        await orders_for_admins(a)
        await add_rule(a, "dead-sub", "*", "topic:$dead.*:subscribe")  # nobody may publish there
        await synced(a, b)
        await a.subscribe("orders.*", await a.node.spawn(Failing))
        async with a.pubsub.messages("$dead.>"):
            await interest(b, "n0", ["$dead.>", "orders.*"])
            sent = await b.publish(
                "orders.new", 1, headers=bearer(alice), ack=True, ack_timeout=2, max_deliveries=2
            )
            assert sent == 0  # not acked, dead letter refused (and logged), no 403 for alice
            with pytest.raises(Forbidden):  # the dead-letter topic is indeed closed to node n1
                await b.publish("$dead.orders.new", 1)


async def test_a_node_that_follows_no_auth_service_fetches_the_rules_before_publishing(
    tmp_path: Path,
) -> None:
    """A one-shot node (``auth_refresh=None``, as ``trimicro publish`` runs) has only the
    defaults until it publishes: then it fetches the cluster's rules, and the refusal is its."""
    async with cluster_of(tmp_path, 2, membership=True, refresh=None) as (a, b):
        await orders_for_admins(a)
        async with a.pubsub.messages("orders.*"):
            await interest(b, "n0", ["orders.*"])
            assert b.auth.version == 0
            refused: list[int] = []

            async def publish(n: int) -> None:
                try:
                    await b.publish("orders.new", n)
                except Forbidden:
                    refused.append(n)

            async with trio.open_nursery() as nursery:  # the ones that wait for the fetch too
                for n in range(3):
                    nursery.start_soon(publish, n)
            assert sorted(refused) == [0, 1, 2]
            assert (b.auth.epoch, b.auth.version) == (a.auth.epoch, a.auth.version)


async def test_a_cluster_with_an_audience_takes_only_tokens_meant_for_it(tmp_path: Path) -> None:
    """The auth service issues tokens for the cluster's audience; tokens another library
    minted with the authority's key are taken across nodes with aud as a string or a list,
    and refused for another audience or none."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(dev_authority(tmp_path).signing_key))
    issuer = dev_authority(tmp_path).public_key.hex()

    def minted(**claims: Any) -> dict[str, str]:
        claims = {"iss": issuer, "sub": "max", "scopes": ["admin"], "exp": int(time.time()) + 60, **claims}
        return bearer(jwt.encode(claims, key, algorithm="EdDSA"))

    async with cluster_of(tmp_path, 2, audience="prod") as (a, b):
        alice = await login(a, "alice", ["admin"])
        assert jwt.decode(alice, options={"verify_signature": False})["aud"] == "prod"
        await lock_down(a)
        await synced(a, b)
        assert (await b.call("greeter", "Greeter.hello", {}, headers=bearer(alice)))["caller"] == "alice"
        for aud in ("prod", ["staging", "prod"]):
            reply = await b.call("greeter", "Greeter.hello", {}, headers=minted(aud=aud, nbf=0, jti="j"))
            assert reply["caller"] == "max"
        for headers in (minted(aud="staging"), minted(aud=["staging", "dev"]), minted()):
            with pytest.raises(Unauthorized):
                await b.call("greeter", "Greeter.hello", {}, headers=headers)
        with pytest.raises(Unauthorized):  # the future is not yet (RFC 7519 nbf)
            await b.call("greeter", "Greeter.hello", {}, headers=minted(aud="prod", nbf=time.time() + 600))
    async with cluster_of(tmp_path / "other", 2) as (a, b):  # no audience: a token with one is not ours
        await synced(a, b)
        other = dev_authority(tmp_path / "other")
        token = issue_token(other.signing_key, Account("max", "user", "", ()), ttl=60, audience="prod")
        with pytest.raises(Unauthorized):
            await b.call("greeter", "Greeter.hello", {}, headers=bearer(token))
        plain = issue_token(other.signing_key, Account("max", "user", "", ()), ttl=60)
        assert (await b.call("greeter", "Greeter.hello", {}, headers=bearer(plain)))["caller"] == "max"


async def test_the_auth_service_publishes_its_keys_as_a_jwks_anyone_may_fetch(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        alice = await login(a, "alice", ["admin"])
        await lock_down(a)
        await synced(a, b)
        keys = jwt.PyJWKSet.from_dict(await b.call(AUTH_SERVICE, "Auth.jwks", {}))  # as node n1
        signing_key = keys[jwt.get_unverified_header(alice)["kid"]]
        assert jwt.decode(alice, signing_key, algorithms=["EdDSA"])["sub"] == "alice"


async def test_a_node_of_another_authority_is_refused(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    stranger = NodeIdentity.issue("stranger", Authority.generate())
    async with (
        start_cluster("n0", registry=registry, home=tmp_path, membership=False) as a,
        start_cluster("stranger", registry=registry, identity=stranger, membership=False) as s,
    ):
        await a.serve(Greeter, name="greeter")
        with pytest.raises(NotFound):  # another cluster's record: skipped, never dialed
            await s.call("greeter", "Greeter.hello", {}, timeout=2)
        # A record forged to name the stranger's cluster gets it to dial: the handshake refuses it.
        forged = NodeInfo("n0", a.address, {"path": "/user/greeter"}, s.fingerprint)
        await registry.register(Service("greeter", nodes=(forged,)))
        with pytest.raises(MicroError) as refused:
            await s.call("greeter", "Greeter.hello", {}, timeout=2)
        assert refused.value.code in (401, 408, 503), refused.value
        assert a.node.remote.peers.get("stranger") is None or not a.node.remote.peer("stranger").links


SCOPES = ["admin", "ops", "guest"]
ENDPOINTS = ["Greeter.hello", "Greeter.secret"]
rule_strategy = st.builds(
    lambda i, scope, name, endpoint, access, priority: Rule(
        f"r{i}", scope, Resource("service", name, endpoint), access, priority
    ),
    st.integers(0, 1000),
    st.sampled_from(["", "*", *SCOPES]),
    st.sampled_from(["*", "greeter", "other"]),
    st.sampled_from(["*", "Greeter.*", *ENDPOINTS]),
    st.sampled_from(list(Access)),
    st.integers(-5, 5),
)


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_a_matrix_of_rules_accounts_and_endpoints_over_real_links(tmp_path: Path, data: Any) -> None:
    """Random rule sets, accounts and endpoints: the remote verdict is the rules' verdict."""
    async with cluster_of(tmp_path, 2, refresh=None) as (a, b):  # rules set here, not synced over
        key = dev_authority(tmp_path).signing_key
        issuer = bytes(key.verify_key).hex()
        for _ in range(40):
            rules = data.draw(st.lists(rule_strategy, max_size=6, unique_by=lambda r: r.id))
            scopes = tuple(data.draw(st.lists(st.sampled_from(SCOPES), max_size=2, unique=True)))
            endpoint = data.draw(st.sampled_from(ENDPOINTS))
            with_token = data.draw(st.booleans())
            a.auth.apply(a.auth.version + 1, rules, {})
            account = (
                Account("u", "user", issuer, scopes)
                if with_token
                else node_account(b.node.remote.identity.cert)
            )
            headers = bearer(issue_token(key, account, ttl=60)) if with_token else None
            expected = Rules([*BUILTIN_RULES, *rules]).allowed(
                account, Resource("service", "greeter", endpoint)
            )
            try:
                await b.call("greeter", endpoint, {}, headers=headers)
                allowed = True
            except Forbidden:
                allowed = False
            assert allowed == expected, (rules, scopes, endpoint, with_token)


async def test_no_alias_of_an_endpoint_slips_past_a_rule(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        await add_rule(a, "no-secrets", "*", "service:greeter:Greeter.secret", access="denied")
        await synced(a, b)
        ref = b.node.remote_ref("n0", "greeter")
        for endpoint in ("Greeter.secret", "secret"):  # the short name runs the same handler
            with pytest.raises(Forbidden):
                await ask(ref, {}, endpoint=endpoint)
        assert (await ask(ref, {}, endpoint="hello"))["caller"] == "n1"


async def test_only_admins_administer_auth(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        bob = await login(a, "bob", ["guest"])
        admin = await login(a, "root", ["admin"])
        for headers in (None, bearer(bob)):  # a node account, a user without the scope
            with pytest.raises(Forbidden):
                await b.call(
                    AUTH_SERVICE, "Auth.add_account", {"id": "mallory", "scopes": ["admin"]}, headers=headers
                )
            with pytest.raises(Forbidden):
                await b.call(AUTH_SERVICE, "Auth.delete_rule", {"id": "default"}, headers=headers)
        created = await b.call(AUTH_SERVICE, "Auth.add_account", {"id": "carl"}, headers=bearer(admin))
        assert created["id"] == "carl"


async def test_a_refresh_token_works_once_even_when_raced(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 1) as (a,):
        created = await a.call(AUTH_SERVICE, "Auth.add_account", {"id": "erin"})
        pair = await a.call(AUTH_SERVICE, "Auth.token", {"id": "erin", "secret": created["secret"]})
        outcomes: list[bool] = []

        async def refresh() -> None:
            try:
                await a.call(AUTH_SERVICE, "Auth.refresh", {"refresh": pair["refresh"]})
                outcomes.append(True)
            except Unauthorized:
                outcomes.append(False)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(refresh)
        assert sorted(outcomes) == [False] * 7 + [True]


async def test_only_a_newer_state_signed_by_the_authority_is_taken(tmp_path: Path) -> None:
    async with cluster_of(tmp_path, 2) as (a, b):
        await synced(a, b)
        old = (await a.call(AUTH_SERVICE, "Auth.state", {}))["signed"]
        await a.call(AUTH_SERVICE, "Auth.revoke", {"account": "zoe"})
        await synced(a, b)
        trusted = b.auth.trusted
        assert not b.auth.accept(open_state(old, trusted))  # a replay cannot undo a revocation
        assert "zoe" in b.auth.revoked_accounts
        stranger = Authority.generate().signing_key
        forged = sign_state(stranger, "evil", 10**9, [], {})
        with pytest.raises(Unauthorized):
            open_state(forged, trusted)
        with pytest.raises(BadRequest):
            open_state("not bytes", trusted)


async def test_a_watch_is_judged_like_an_ask_and_a_refusal_hides_whether_the_actor_exists(
    tmp_path: Path, caplog: Any
) -> None:
    """A death watch reaches the actor like an ask (resource endpoint ``watch``), so the same
    rules and 401/403 apply; a refused watch is answered the same whether the actor exists or
    not (it used to be accepted, or answered "no such actor": an existence oracle)."""
    async with cluster_of(tmp_path, 2) as (a, b):
        await lock_down(a)
        await synced(a, b)
        caplog.set_level(logging.WARNING, logger="trimicro.cluster.auth")
        send, receive = trio.open_memory_channel[Terminated](10)
        watcher = await b.node.spawn(Watcher, send)
        greeter = b.node.remote_ref("n0", "greeter")
        ghost = b.node.remote_ref("n0", "ghost")

        async def answer(ref: ActorRef) -> str | None:
            await ask(watcher, ref)
            with trio.fail_after(5):
                got = await receive.receive()
            assert got.ref == ref
            return got.reason

        assert [await answer(greeter), await answer(ghost)] == ["watch refused: 403 forbidden"] * 2
        assert "denied service n1 () access to service greeter watch" in caplog.text
        # A bad token on the watch: 401, alike for both.
        peer = b.node.remote.peer("n0")
        answers: list[tuple[ActorRef, str | None]] = []
        got_both = trio.Event()

        def terminated(ref: ActorRef, _watcher: ActorRef, reason: str | None) -> None:
            answers.append((ref, reason))
            if len(answers) == 2:
                got_both.set()

        peer.terminated = terminated  # type: ignore[method-assign]
        link = peer.link
        assert link is not None
        for ref in (greeter, ghost):
            env = Envelope(
                Kind.SYSTEM, 0, ref, watcher, "watch", headers={"authorization": "Bearer not-a-token"}
            )
            link.push(encode_envelope(env))
        with trio.fail_after(5):
            await got_both.wait()
        assert answers == [
            (greeter, "watch refused: 401 unauthorized"),
            (ghost, "watch refused: 401 unauthorized"),
        ]
        del peer.terminated
        # Rules that grant the watches: the actor that exists is watched, the other one is not there.
        await add_rule(a, "watch-greeter", "*", "service:greeter:watch")
        await add_rule(a, "watch-ghost", "*", "actor:/user/ghost:watch")
        await synced(a, b)
        await ask(watcher, greeter)
        assert await answer(ghost) == "no such actor"  # (after the greeter's watch: same link)
        await a.node.stop(a.node.ref("greeter"))
        with trio.fail_after(5):
            got = await receive.receive()
        assert got.ref == greeter and got.reason is None


async def test_a_refused_ask_or_stream_hides_whether_the_actor_or_endpoint_exists(tmp_path: Path) -> None:
    """An ask or a stream the rules refuse is answered 403 (401 with a bad token) whether an
    actor lives at the path or not, and whether the endpoint exists or not: before, the node
    looked the actor and the stream endpoint up first and answered 404 for what was not there,
    which let any node of the cluster probe for actors."""
    async with cluster_of(tmp_path, 2) as (a, b):
        await lock_down(a)
        await synced(a, b)
        greeter = b.node.remote_ref("n0", "greeter")
        ghost = b.node.remote_ref("n0", "ghost")

        async def code_of_ask(ref: ActorRef, **options: Any) -> int:
            with pytest.raises(MicroError) as caught:
                await ask(ref, {}, endpoint="Greeter.hello", timeout=5, **options)
            return caught.value.code

        async def code_of_stream(ref: ActorRef, endpoint: str) -> int:
            with pytest.raises(MicroError) as caught:
                async with open_stream(ref, endpoint, timeout=5):
                    pass
            return caught.value.code

        assert [await code_of_ask(greeter), await code_of_ask(ghost)] == [403, 403]
        bad = {"headers": {"authorization": "Bearer not-a-token"}}
        assert [await code_of_ask(greeter, **bad), await code_of_ask(ghost, **bad)] == [401, 401]
        assert [
            await code_of_stream(greeter, "Greeter.chat"),
            await code_of_stream(greeter, "Greeter.nothing"),
            await code_of_stream(ghost, "Greeter.chat"),
        ] == [403, 403, 403]
        # A caller the rules let reach the path learns that nothing is there, as before.
        await add_rule(a, "ghost-callers", "*", "actor:/user/ghost:*")
        await synced(a, b)
        assert await code_of_ask(ghost) == 404


class _SlowRevocationScan(MemoryStore):
    """A store whose next scan of the revocations waits for ``go``: a state read in flight
    while a revocation lands, which a busy machine makes happen on its own now and then."""

    def __init__(self) -> None:
        super().__init__()
        self.scanning = trio.Event()
        self.go = trio.Event()
        self.hold = False

    async def read(self, key: str, **options: Any) -> list[Any]:
        records = await super().read(key, **options)
        if self.hold and key.endswith("revoked/") and options.get("prefix"):
            self.hold = False
            self.scanning.set()
            await self.go.wait()
        return records


async def test_a_state_read_while_a_revocation_lands_is_never_signed_as_the_new_version(
    tmp_path: Path,
) -> None:
    """The auth service serves calls concurrently: a state read that had scanned the revocations
    before one landed used to be signed with the version that revocation made, so a node took
    it as current and did not enforce the revocation until the next change (a flake of
    test_changes_are_pushed_at_once_and_polled_when_a_push_is_lost)."""
    store = _SlowRevocationScan()
    async with start_cluster("n0", registry=MemoryRegistry(), home=tmp_path, auth_refresh=None) as a:
        await a.serve(AuthService, store, dev_authority(tmp_path).signing_key, name=AUTH_SERVICE)
        async with trio.open_nursery() as nursery:
            read: list[dict[str, Any]] = []

            async def read_state() -> None:
                read.append(await a.call(AUTH_SERVICE, "Auth.state", {}))

            store.hold = True
            nursery.start_soon(read_state)
            with trio.fail_after(5):
                await store.scanning.wait()  # the revocations are read: none yet
            await a.call(AUTH_SERVICE, "Auth.revoke", {"account": "zoe"})
            store.go.set()
        state = open_state(read[0]["signed"], {dev_authority(tmp_path).public_key})
        current = open_state(
            (await a.call(AUTH_SERVICE, "Auth.state", {}))["signed"], {dev_authority(tmp_path).public_key}
        )
        assert "zoe" in current.revoked["accounts"]
        assert "zoe" in state.revoked["accounts"] or state.version < current.version
