"""The actor layer's internal values are typed: the queued :class:`Mail` and the :class:`Binding`
every ref delivers through (a local cell, a stopped actor's stand-in, a route to another node)."""

from __future__ import annotations

import inspect

from trimicro.actors.cell import Cell, Stopped
from trimicro.actors.lowlevel import Mail, build_mail
from trimicro.actors.remote.actor import RemoteActor
from trimicro.mailbox.refs import ActorRef, Binding


def test_mail_is_a_flat_tuple_read_by_name() -> None:
    sender = ActorRef("n", "/a", 1)
    built = build_mail(Mail, ("hi", None, sender, "S.m", {"k": "v"}, None))
    assert type(built) is Mail
    assert built == Mail("hi", None, sender, "S.m", {"k": "v"})  # principal defaults to None
    assert (built.msg, built.sender, built.endpoint, built.headers) == ("hi", sender, "S.m", {"k": "v"})
    assert Mail._fields == ("msg", "reply", "sender", "endpoint", "headers", "principal")


def test_every_binding_implements_the_whole_protocol() -> None:
    members = {name for name in vars(Binding) if not name.startswith("_")}
    calls = {"tell", "try_tell", "ask", "open_stream", "system", "add_watcher", "remove_watcher"}
    assert members >= calls | {"node"}
    for impl in (Cell, Stopped, RemoteActor):
        for name in members - {"node"}:
            ours, theirs = getattr(impl, name), getattr(Binding, name)
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), (impl, name)
        assert any("node" in getattr(k, "__slots__", ()) for k in impl.__mro__), impl
