"""The actor layer's internal values are typed: the queued :class:`Mail` and the :class:`Binding`
every ref delivers through (a local cell, a stopped actor's stand-in, a route to another node)."""

from __future__ import annotations

import dis
import inspect
import itertools
import types
from contextvars import ContextVar
from typing import Any

from trimicro.actors import Actor, api, ask, cell, metadata, processing, start_node, tell
from trimicro.actors.cell import Cell, Stopped, current_item
from trimicro.actors.mail import Mail, Reply
from trimicro.actors.middleware import server
from trimicro.actors.remote.actor import RemoteActor
from trimicro.mailbox.refs import Binding


class Recorder(Actor):
    """Records the queued item each message arrives as."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def on_text(self, msg: str) -> int:
        self.items.append(current_item.get())
        return len(self.items)


async def test_mail_is_a_typed_record_read_by_name() -> None:
    # A slotted class, not a tuple read by position (see actors/mail.py for what it costs).
    async with start_node("types") as node:
        ref = await node.spawn(Recorder)
        await tell(ref, "told", headers={"k": "v"})
        assert await ask(ref, "asked") == 2
        recorder = ref.binding
        assert isinstance(recorder, Cell) and isinstance(recorder.instance, Recorder)
        told, asked = recorder.instance.items
    for item in (told, asked):
        assert type(item) is Mail and not isinstance(item, tuple)
        assert not hasattr(item, "__dict__")  # slotted: no per-item dict
    assert (told.msg, told.reply, told.sender, told.endpoint, told.headers, told.principal) == (
        "told", None, None, None, {"k": "v"}, None,
    )  # fmt: skip
    assert asked.msg == "asked" and isinstance(asked.reply, Reply) and asked.reply.value == 2
    assert (asked.sender, asked.endpoint, asked.headers, asked.principal) == (None, None, None, None)


def test_mail_of_fills_every_field() -> None:
    reply = Reply()
    item = Mail.of("m", reply, None, "Svc.m", {"h": "1"}, "alice")
    fields = (item.msg, item.reply, item.sender, item.endpoint, item.headers, item.principal)
    assert fields == ("m", reply, None, "Svc.m", {"h": "1"}, "alice")
    assert set(Mail.__slots__) == {"msg", "reply", "sender", "endpoint", "headers", "principal"}
    bare = Mail.of("only")
    assert (bare.reply, bare.sender, bare.endpoint, bare.headers, bare.principal) == (None,) * 5
    assert "msg='only'" in repr(bare)


def test_every_binding_implements_the_whole_protocol() -> None:
    members = {name for name in vars(Binding) if not name.startswith("_")}
    calls = {"tell", "try_tell", "ask", "open_stream", "system", "add_watcher", "remove_watcher"}
    assert members >= calls | {"node"}
    for impl in (Cell, Stopped, RemoteActor):
        for name in members - {"node"}:
            ours, theirs = getattr(impl, name), getattr(Binding, name)
            assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs), (impl, name)
        assert any("node" in getattr(k, "__slots__", ()) for k in impl.__mro__), impl


def _attribute_calls_on_context_vars(module: types.ModuleType) -> list[str]:
    """``name.method`` loads (LOAD_ATTR) on the module's ContextVar globals, anywhere in its code."""
    found: list[str] = []

    def walk(code: types.CodeType) -> None:
        instructions = list(dis.get_instructions(code))
        for previous, ins in itertools.pairwise(instructions):
            loaded = getattr(module, str(previous.argval), None) if previous.opname == "LOAD_GLOBAL" else None
            if ins.opname == "LOAD_ATTR" and isinstance(loaded, ContextVar):
                found.append(f"{code.co_name}: {previous.argval}.{ins.argval}")
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    path = module.__file__
    assert path is not None
    with open(path) as f:
        walk(compile(f.read(), path, "exec"))
    return found


def test_per_message_paths_call_context_vars_through_bound_methods() -> None:
    # CPython 3.11 compiles ``current_item.set(x)`` on an imported name to LOAD_ATTR: a bound
    # method built per call (~150 instructions, several per message). See actors/lifecycle.py.
    for module in (api, cell, metadata, processing, server):
        assert _attribute_calls_on_context_vars(module) == [], module.__name__
