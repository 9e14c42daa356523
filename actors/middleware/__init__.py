"""Middleware: code that runs around every call, on the caller's side and on the handler's.

Go Micro calls these *wrappers* (``client.Wrapper``, ``server.HandlerWrapper``,
``server.SubscriberWrapper``); trimicro has one shape for all of them, the onion of Starlette and
of Go Micro's wrappers::

    async def timing(call: Call, call_next: Next) -> Any:
        started = time.perf_counter()
        try:
            return await call_next(call)
        finally:
            log.info("%s %s %.6fs", call.kind, call.endpoint, time.perf_counter() - started)

A middleware receives the :class:`Call` and the rest of the chain. It may

* pass it on (``await call_next(call)``) and return what comes back, or change it;
* change the call first: :attr:`Call.message` and :attr:`Call.headers` are the ones the next
  layer, and in the end the handler or the wire, sees;
* short-circuit: return without calling ``call_next``, or raise a typed
  :class:`~trimicro.mailbox.errors.MicroError`, which reaches the caller as that error (from
  another node too: on the server side a middleware is part of the handler, and its errors
  cross the wire as the handler's would). A server middleware raising anything else behaves
  as the handler raising it (500 to the asker, and the actor fails);
* call ``call_next`` more than once (retry), time it, log it.

**Kinds and sides.** :attr:`Call.kind` is what is happening (:class:`Kind`: ``ask``, ``tell``,
``stream``, ``publish``, ``subscribe``), :attr:`Call.side` where (:class:`Side`): ``client``
runs in the caller's task before the message leaves (``ask``, ``tell``, ``try_tell``,
``open_stream``, a cluster ``publish``); ``server`` runs around the handler, in the actor, for
local and remote calls alike (a request from another node is queued into the actor like a
local one, and runs the same handler). A ``subscribe`` call is the delivery of a published
message to a subscribing actor (its target is the topic).

**Where middleware is registered, and the order.** Three levels:

* per node: ``start_node(middleware=[...])`` (and ``start_cluster(middleware=...)``). A node's
  middleware runs on both sides: around the calls the node makes and around the handlers of
  its actors (a middleware that cares checks :attr:`Call.side`);
* per actor class: the class attribute ``middleware = (...)``, server side, around that class's
  handlers (a subclass inherits it like any class attribute);
* per call: ``ask(ref, msg, middleware=[...])``, ``tell``, ``try_tell``, ``open_stream`` and
  ``publish`` take ``middleware=``, client side.

Composition, outermost first (the first to see a call and the last to see its result):

* client side: the call's middleware, then the node's, then the delivery (local or remote);
* server side: the node's middleware, then the class's, then the handler.

Within one list, the first element is outermost. So ``ask(ref, m, middleware=[a, b])`` on a
node with ``middleware=[c]`` runs ``a(b(c(deliver)))`` in the caller and ``c(handler)`` in the
actor (``c(k(handler))`` when the class declares ``middleware = (k,)``).

**What it costs.** Nothing when none is configured: ``ask``/``tell`` check one attribute of
the node, and the handler tables of classes without middleware are the plain ones (so
handlers without ``await`` still run inline). With middleware, a class's handlers are
wrapped once per node (never per call). A handler without ``await`` keeps running inline only
if every server middleware around it is declared with :func:`passes_through` (it awaits
nothing but ``call_next``), as the built-ins are. Figures in docs/performance.md and
docs/middleware.md.

**Limits.** ``try_tell`` never waits, so its chain runs synchronously: a middleware that
suspends there (an ``await`` of something that blocks) raises :class:`RuntimeError`
(:attr:`Call.wait` is ``False`` for such calls). A server chain runs around a handler that
was found: a message no handler takes, or an unknown endpoint, is refused before it.

Built-in middleware, beside this module: :class:`Logging` (log and time each call),
:class:`Timeout` (bound a call), :class:`Retry` (retry idempotent calls on 408/429/502/503/504,
with backoff).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import attrs

from trimicro.mailbox.refs import ActorRef

__all__ = [
    "Call",
    "Kind",
    "Logging",
    "Middleware",
    "Next",
    "Retry",
    "Side",
    "Timeout",
    "compose",
    "is_passing_through",
    "passes_through",
    "run_sync",
]


class Kind(enum.Enum):
    """What a call does."""

    ASK = "ask"
    TELL = "tell"
    STREAM = "stream"
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class Side(enum.Enum):
    """Where a middleware runs: in the caller (``CLIENT``) or around the handler (``SERVER``)."""

    CLIENT = "client"
    SERVER = "server"


def _no_end(call: Call) -> Awaitable[Any]:
    raise RuntimeError(f"{call.kind.value} call without an end: build calls with the runtime's helpers")


@attrs.define(slots=True, eq=False)
class Call:
    """One call as middleware sees it. Mutable: what a layer changes, the next layer gets.

    ``target`` is the actor called (an :class:`~trimicro.mailbox.refs.ActorRef`), or the topic
    for ``publish`` and ``subscribe``. ``endpoint`` is the ``Service.method`` asked for
    (``None`` when the handler is chosen by the message's type). ``message`` is the body: on
    the server side, what the handler gets (after an endpoint's body is structured into its
    type; for a stream, the :class:`~trimicro.actors.streams.Stream`; for a delivery, the
    broker's message). ``headers`` is the metadata (always a dict; on the client side it
    already includes what propagates from the message being handled).

    ``timeout`` (client ``ask`` and ``stream``) is how many seconds the call may take: a
    middleware may lower it. ``deadline`` (server) is the trio time by which the caller wants
    the answer, when it sent one (requests from other nodes). ``sender`` is the calling actor
    (``None`` outside one). ``actor`` (server) is the actor instance whose handler runs;
    ``handler`` (server) the handler function itself (a middleware may read its attributes,
    such as a mark left by a decorator). ``reply_headers`` (client ``ask``) receives the
    answer's metadata when the caller asked for it. ``wait`` is ``False`` for ``try_tell``,
    whose chain must not suspend.

    The runtime builds calls with positional arguments in the order of the fields (it is on
    every call's path); others should name them.
    """

    kind: Kind
    side: Side
    target: ActorRef | str
    endpoint: str | None = None
    message: Any = None
    headers: dict[str, str] = attrs.field(factory=dict)
    timeout: float | None = None
    deadline: float | None = None
    sender: ActorRef | None = None
    actor: Any = None
    handler: Callable[..., Awaitable[Any]] | None = attrs.field(default=None, repr=False)
    reply_headers: dict[str, str] | None = attrs.field(default=None, repr=False)
    wait: bool = True
    #: What runs after the last middleware: the delivery (client) or the handler (server).
    end: Callable[[Call], Awaitable[Any]] = attrs.field(default=_no_end, repr=False)
    #: The end's own state (the binding a client call is delivered through, the queued item a
    #: server call serves): the runtime's, not for middleware.
    via: Any = attrs.field(default=None, repr=False)


#: The rest of the chain, as a middleware calls it.
Next: TypeAlias = Callable[[Call], Awaitable[Any]]


class Middleware(Protocol):
    """``async def mw(call, call_next) -> Any``: see the module's documentation."""

    def __call__(self, call: Call, call_next: Next, /) -> Awaitable[Any]: ...


M = TypeVar("M")


def passes_through(middleware: M) -> M:
    """Declare that ``middleware``, on the server side, awaits nothing but ``call_next``: then a
    handler that never suspends (no ``await``) still does inside it, and keeps running inline
    (in a direct ask without a cancel scope, and for a request from another node on the link's
    reader, with no hop to a worker). Without the mark, a class's handlers wrapped in server
    middleware always run the way a handler that may suspend does, which costs a cancel scope
    per direct ask. A marked middleware that suspends anyway fails the call with a
    :class:`RuntimeError` (a 500) where the handler ran inline. Returns ``middleware``, so it
    is also a decorator; the built-ins are marked.
    """
    try:
        middleware.__trimicro_passes_through__ = True  # type: ignore[attr-defined]
    except AttributeError:  # an instance with slots: mark its class
        type(middleware).__trimicro_passes_through__ = True  # type: ignore[attr-defined]
    return middleware


def is_passing_through(middleware: Any) -> bool:
    """Whether ``middleware`` was declared with :func:`passes_through`."""
    return bool(getattr(middleware, "__trimicro_passes_through__", False))


def _end(call: Call) -> Awaitable[Any]:
    return call.end(call)


class _Step:
    """One layer of a composed chain: no coroutine of its own, it returns the middleware's."""

    __slots__ = ("middleware", "rest")

    def __init__(self, middleware: Middleware, rest: Next) -> None:
        self.middleware = middleware
        self.rest = rest

    def __call__(self, call: Call) -> Awaitable[Any]:
        return self.middleware(call, self.rest)


def compose(middleware: Sequence[Middleware], inner: Next | None = None) -> Next:
    """The chain running ``middleware`` (first outermost) around ``inner`` (by default the
    call's own end: its delivery or its handler). Composed once, run for many calls."""
    chain: Next = _end if inner is None else inner
    for mw in reversed(middleware):
        if not callable(mw):
            raise TypeError(f"a middleware is an async callable (call, call_next), not {mw!r}")
        chain = _Step(mw, chain)
    return chain


def run_sync(chain: Next, call: Call) -> Any:
    """Run ``chain`` to its end in one step, for callers that must not wait (``try_tell``).

    :class:`RuntimeError` if a middleware suspends (the chain is closed, nothing is sent).
    """
    steps = chain(call).__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    close = getattr(steps, "close", None)
    if close is not None:
        close()
    raise RuntimeError(f"middleware suspended in a call that must not wait ({call.kind.value})")


from .logging import Logging  # noqa: E402
from .retry import Retry  # noqa: E402
from .timeout import Timeout  # noqa: E402
