"""The ``Actor`` base class and how its handlers are found.

An actor is a plain class holding its state. Each public ``async def`` method taking one
argument is a handler (one annotated with :class:`~trimicro.actors.streams.Stream` is a stream
handler, opened with ``open_stream``). A message handler is chosen two ways:

* by the *type* of the message (its parameter's annotation, usually an attrs class), for
  Python callers: ``await ask(ref, Add(k=1))``;
* by *endpoint name*, ``"<service>.<method>"`` (Go Micro style, service defaults to the class
  name), for callers that only have a name and a map: ``await ask(ref, {"k": 1},
  endpoint="Counter.add")``; the body is structured into the annotated type, strictly (a body
  that does not fit is a 400 naming the field: see :mod:`trimicro.actors.bodies`).

A parameter annotated ``dict``, ``Mapping``, ``Any`` or not at all says nothing about which
messages the handler takes (JSON-style services have many endpoints taking maps): such a
handler is reached by its endpoint name only, never by type, so any number of them may share
an actor.

Annotations are resolved when the class is first spawned, so messages may be declared after
the actor. Classes local to a function can name their message types with :func:`handles`.
"""

from __future__ import annotations

import dis
import inspect
import types as _types
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from trimicro.mailbox.mailboxes import MailboxSpec

from .bodies import BodyConverter, body_converter, is_map_annotation
from .streams import Stream
from .supervision import SupervisorStrategy

if TYPE_CHECKING:
    from .context import Context

__all__ = ["Actor", "HandlerTable", "handles", "not_handler"]

Handler = Callable[[Any, Any], Awaitable[Any]]

#: Lifecycle hooks and fallback: never handlers.
RESERVED = frozenset({"started", "stopping", "restarted", "receive"})


def handles(*types: type) -> Callable[[Handler], Handler]:
    """Declare the message types a handler takes (instead of, or beyond, its annotation)."""

    def mark(fn: Handler) -> Handler:
        fn.__trimicro_handles__ = types  # type: ignore[attr-defined]
        return fn

    return mark


def not_handler(fn: Handler) -> Handler:
    """Keep a public async method out of the handler table."""
    fn.__trimicro_not_handler__ = True  # type: ignore[attr-defined]
    return fn


#: Opcodes through which a coroutine can suspend (await, async for, async with).
_SUSPEND_OPS = frozenset({"YIELD_VALUE", "SEND", "GET_AWAITABLE", "GET_ANEXT", "BEFORE_ASYNC_WITH"})


def never_suspends(fn: Any) -> bool:
    """True when ``fn`` is an ``async def`` whose body has no ``await``: it runs to its end in one
    step, so running it needs no cancel scope (nothing could be cancelled or time out).

    Conservative: anything but a plain coroutine function (a wrapper, a partial, a callable
    object) counts as one that may suspend.
    """
    if not isinstance(fn, _types.FunctionType) or not inspect.iscoroutinefunction(fn):
        return False
    return not any(ins.opname in _SUSPEND_OPS for ins in dis.get_instructions(fn.__code__))


class Actor:
    """Base class for actors: subclass it, keep state in attributes, write async handlers.

    Class attributes configure how the runtime hosts it: ``mailbox`` (default: bounded, 1000),
    ``max_concurrency`` (handlers of one actor that may interleave; 1 means one message at a
    time), ``supervision`` (how it treats failures of the children it spawns),
    ``service_name`` (the endpoint prefix) and ``middleware`` (server middleware around its
    handlers, see :mod:`trimicro.actors.middleware`).
    """

    mailbox: ClassVar[MailboxSpec | None] = None
    max_concurrency: ClassVar[int] = 1
    #: Server middleware around this class's handlers, inside the node's (see
    #: :mod:`trimicro.actors.middleware`; the first is outermost).
    middleware: ClassVar[Sequence[Callable[..., Awaitable[Any]]]] = ()
    #: The class's handler table, built on first spawn (see :func:`handler_table`).
    _trimicro_handlers: ClassVar[HandlerTable | None] = None
    supervision: ClassVar[SupervisorStrategy] = SupervisorStrategy()
    service_name: ClassVar[str | None] = None

    #: Set by the runtime before ``started``: the cell hosting this instance.
    _trimicro_cell: Any

    @property
    def context(self) -> Context:
        """This actor's view of the node (ref, children, timers, watch, the current call).

        Built on first use and kept for the actor's life (restarts included): most actors
        never ask for it, and spawning is cheaper without it.
        """
        try:
            cell = self._trimicro_cell
        except AttributeError:
            # An AttributeError, so hasattr() and getattr(..., default) still work on it.
            raise AttributeError(f"{type(self).__name__} is not running: spawn it on a node") from None
        context: Context = cell.context
        return context

    async def started(self) -> None:
        """Called once the actor is registered, before its first message (and after restarts)."""

    async def stopping(self) -> None:
        """Called when the actor stops or before it is replaced by a restart."""

    async def restarted(self, failure: BaseException) -> None:
        """Called on the *new* instance after a restart caused by ``failure``, before started."""

    async def receive(self, message: Any) -> Any:
        """Fallback for messages no handler takes; the default refuses them as unhandled."""
        raise _Unhandled(message)


class _Unhandled(Exception):
    def __init__(self, message: Any) -> None:
        super().__init__(type(message).__name__)
        self.message = message


class HandlerTable:
    """A class's handlers by message type and by endpoint name, resolved once per class."""

    __slots__ = ("by_endpoint", "by_stream", "by_type", "cls", "fallback", "inline", "service")

    def __init__(self, cls: type[Actor]) -> None:
        #: The class this table is for (a subclass inherits the attribute, not the table).
        self.cls = cls
        self.service = cls.service_name or cls.__name__
        self.by_type: dict[type, Handler] = {}
        #: Endpoint name -> handler and the converter of its body (None: the body as it is).
        self.by_endpoint: dict[str, tuple[Handler, BodyConverter | None]] = {}
        #: Stream handlers (their parameter is a :class:`~trimicro.actors.streams.Stream`).
        self.by_stream: dict[str, Handler] = {}
        fallback = cls.receive
        self.fallback: Handler | None = None if fallback is Actor.receive else fallback
        #: Handlers with no ``await`` (see :func:`never_suspends`): a direct ask runs them
        #: without the cancel scope a handler that can block needs.
        self.inline: set[Handler] = set()
        seen: set[str] = set()
        for klass in cls.__mro__:
            if klass is Actor or klass is object:
                continue
            for name, fn in vars(klass).items():
                if name in seen:
                    continue
                seen.add(name)
                if name.startswith("_") or name in RESERVED or not inspect.iscoroutinefunction(fn):
                    continue
                if getattr(fn, "__trimicro_not_handler__", False):
                    continue
                self._add(cls, name, fn)

    def _add(self, cls: type, name: str, fn: Handler) -> None:
        params = list(inspect.signature(fn).parameters.values())[1:]
        if len(params) != 1:
            return
        types: tuple[type, ...] = getattr(fn, "__trimicro_handles__", ())
        hint: Any = None
        # Names an annotation may use beside the module's: the classes nested in the actor
        # class (a message class), the classes @handles names. Classes only, and only where the
        # module's names do not resolve: a method named ``list`` must not shadow the builtin.
        namespace = {
            **{t.__name__: t for t in types},
            **{k: v for k, v in vars(cls).items() if isinstance(v, type)},
            cls.__name__: cls,
        }
        if not types:
            try:
                hint = _parameter_hint(fn, params[0], namespace)
            except Exception as exc:  # not a silent raw body where a class was declared
                raise TypeError(
                    f"{cls.__name__}.{name}: the annotation of {params[0].name!r} does not resolve "
                    f"({exc}); declare the class where the module sees it, or use @handles"
                ) from None
            if hint is Stream:
                self.by_stream[f"{self.service}.{name}"] = fn
                self.by_stream.setdefault(name, fn)
                return
            if isinstance(hint, type) and not _endpoint_only(hint):
                types = (hint,)
        elif len(types) == 1:
            hint = types[0]
        for t in types:
            if t in self.by_type:
                raise TypeError(f"{cls.__name__}: two handlers take {t.__name__}")
            self.by_type[t] = fn
        if never_suspends(fn):
            self.inline.add(fn)
        try:
            convert = body_converter(hint, namespace)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.{name}: {exc}") from None
        self.by_endpoint[f"{self.service}.{name}"] = (fn, convert)
        self.by_endpoint.setdefault(name, (fn, convert))

    def inline_for(self, msg: Any, endpoint: str | None) -> tuple[Handler, BodyConverter | None] | None:
        """The handler (and the endpoint's converter) for ``msg`` when it never suspends
        (:attr:`inline`), found by exact type or endpoint; ``None`` otherwise."""
        if not self.inline:
            return None
        if endpoint is None:
            fn = self.by_type.get(type(msg))
            return (fn, None) if fn in self.inline else None
        entry = self.by_endpoint.get(endpoint)
        return entry if entry is not None and entry[0] in self.inline else None

    def wrapped(self, wrap: Callable[[Handler, bool], Handler], keep_inline: bool) -> HandlerTable:
        """A copy whose handlers are ``wrap(handler, is_stream_handler)`` (each wrapped once,
        whatever the number of names it has): what a node's middleware makes of a class's
        table (see :mod:`trimicro.actors.middleware.server`). Inline handlers stay inline only
        with ``keep_inline`` (the wrapping never suspends on its own)."""
        done: dict[Handler, Handler] = {}

        def once(fn: Handler, stream: bool = False) -> Handler:
            wrapped = done.get(fn)
            if wrapped is None:
                wrapped = done[fn] = wrap(fn, stream)
            return wrapped

        table = object.__new__(HandlerTable)
        table.cls = self.cls
        table.service = self.service
        table.by_type = {t: once(fn) for t, fn in self.by_type.items()}
        table.by_endpoint = {name: (once(fn), convert) for name, (fn, convert) in self.by_endpoint.items()}
        table.by_stream = {name: once(fn, True) for name, fn in self.by_stream.items()}
        table.fallback = None if self.fallback is None else once(self.fallback)
        table.inline = {once(fn) for fn in self.inline} if keep_inline else set()
        return table

    def for_type(self, t: type) -> Handler | None:
        """The handler for messages of type ``t`` (subclasses match their base's handler)."""
        for base in t.__mro__[1:]:
            fn = self.by_type.get(base)
            if fn is not None:
                self.by_type[t] = fn
                return fn
        return self.fallback


def _endpoint_only(t: type) -> bool:
    """Annotations that say nothing about which messages a handler takes (``Any``, ``object``)
    or that every JSON-style endpoint shares (a map: ``dict``, ``Mapping``): such a handler is
    reached by its endpoint name only, so that many of them can live in one actor."""
    return t is Any or t is object or is_map_annotation(t)


def handler_table(cls: type[Actor]) -> HandlerTable:
    """The (cached) handler table of an actor class."""
    table = cls._trimicro_handlers
    if table is None or table.cls is not cls:  # none yet, or a base class's (inherited)
        table = HandlerTable(cls)
        cls._trimicro_handlers = table
    return table


def _parameter_hint(fn: Handler, param: inspect.Parameter, namespace: dict[str, Any]) -> Any:
    """The message parameter's annotation, evaluated alone (as ``typing.get_type_hints`` would,
    in the handler's module, then with ``namespace``): the return annotation and others are
    not evaluated, so a return type imported under ``TYPE_CHECKING`` does not fail the spawn."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return None
    if not isinstance(annotation, str):
        return annotation
    globalns = getattr(inspect.unwrap(fn), "__globals__", {})
    try:
        return eval(annotation, globalns)  # what get_type_hints does with a string annotation
    except NameError:
        return eval(annotation, globalns, namespace)
