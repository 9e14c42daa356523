"""The actor layer's internal values are typed: the queued :data:`Mail` and the :class:`Binding`
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
from trimicro.actors.mail import Reply
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


async def test_mail_is_an_exact_tuple_of_six_named_fields() -> None:
    # An exact tuple (not a NamedTuple): built and read once per message, a tuple subclass cost
    # +11% instructions per tell (see actors/mail.py).
    async with start_node("types") as node:
        ref = await node.spawn(Recorder)
        await tell(ref, "told", headers={"k": "v"})
        assert await ask(ref, "asked") == 2
        recorder = ref.binding
        assert isinstance(recorder, Cell) and isinstance(recorder.instance, Recorder)
        told, asked = recorder.instance.items
    for item in (told, asked):
        assert type(item) is tuple and len(item) == 6
    msg, reply, sender, endpoint, headers, principal = told
    assert (msg, reply, sender, endpoint, headers, principal) == ("told", None, None, None, {"k": "v"}, None)
    msg, reply, sender, endpoint, headers, principal = asked
    assert msg == "asked" and isinstance(reply, Reply) and reply.value == 2
    assert (sender, endpoint, headers, principal) == (None, None, None, None)


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
