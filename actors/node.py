"""A node: one actor system inside one ``async with`` block.

``start_node()`` opens the node's nursery, starts its timer task and its root supervisor
(the guardian of ``/user``), and on exit stops every actor in reverse start order within the
shutdown deadline, then cancels what is left. Nothing is global: several nodes can run in one
process (each test starts its own).
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trimicro.mailbox.codec import CodecSet, TypeRegistry
from trimicro.mailbox.errors import Conflict, NotFound
from trimicro.mailbox.logs import get_logger
from trimicro.mailbox.mailboxes import Mailbox, MailboxSpec, Unbuilt, bounded
from trimicro.mailbox.refs import ActorRef
from trimicro.mailbox.transport import TcpTransport, Transport

from .actor import Actor, HandlerTable, handler_table
from .busypoll import DEFAULT_BUSY_POLL
from .cell import BATCH, RUNNING, STOPPING, Cell
from .deadletters import DeadLetters
from .dispatcher import Dispatcher
from .health import Health
from .lifecycle import CellLifecycle
from .logs import register_node
from .mail import Mail
from .messages import DeadLetter
from .metadata import HeaderRule, header_rule
from .metrics import EndpointRecorder, NodeMetrics
from .middleware import Middleware, Next, compose
from .middleware.server import wrap_handlers
from .remote import MAX_HANDSHAKES, Identity, Remoting
from .remote.health import HEALTH_OP, HealthAnswers
from .supervision import ChildSpec, Restart, SupervisorStrategy
from .timers import TimeoutWheel, TimerService
from .tracing import TracingSetting, node_tracing

if TYPE_CHECKING:
    from .tracing.middleware import Tracing

__all__ = ["DEFAULT_ASK_TIMEOUT", "Node", "start_node"]

log = get_logger(__package__)

#: Default ``ask`` timeout in seconds. Go Micro allows 30 s, Erlang 5 s; 10 s fails a stuck call
#: quickly enough for a user-facing request while leaving room for a slow dependency.
DEFAULT_ASK_TIMEOUT = 10.0
#: At most this many shared child specs per node (see ``Node.child_spec``).
SHARED_SPECS = 256
#: Seconds a stopping actor gets for in-flight work and its ``stopping`` hook, by default.
DEFAULT_SHUTDOWN = 5.0


class _Guardian(Actor):
    """The root supervisor's instance: it only hosts top-level actors."""


class Node:
    """An actor system. Create it with :func:`start_node`; do not instantiate directly."""

    def __init__(
        self,
        node_id: str,
        nursery: trio.Nursery,
        *,
        ask_timeout: float,
        root_strategy: SupervisorStrategy,
        default_mailbox: MailboxSpec,
        shutdown_timeout: float,
        seed: int | None,
        transport: Transport,
        identity: Callable[[], Identity],
        codecs: CodecSet,
        keepalive: float,
        dead_after: float,
        busy_poll: float = DEFAULT_BUSY_POLL,
        max_handshakes: int = MAX_HANDSHAKES,
        propagate_headers: HeaderRule = None,
        middleware: Sequence[Middleware] = (),
        metrics: bool = False,
        tracing: Tracing | None = None,
    ) -> None:
        self.id = node_id
        #: This node's middleware, both sides (see :mod:`trimicro.actors.middleware`).
        self.middleware: tuple[Middleware, ...] = tuple(middleware)
        #: What this node counts about itself (see :mod:`trimicro.actors.metrics`).
        self.metrics = NodeMetrics(EndpointRecorder() if metrics else None)
        #: Spans around its calls and handlers (:mod:`trimicro.actors.tracing`), or ``None``:
        #: the innermost client middleware (a span per attempt) and the outermost server one.
        self.tracing = tracing
        client = self.middleware if tracing is None else (*self.middleware, tracing)
        #: The client side of it, composed once; ``None`` without middleware (the calls' fast
        #: paths check only this).
        self.client_chain: Next | None = compose(client) if client else None
        #: Handler tables wrapped in middleware, per actor class (see :meth:`handlers_for`).
        self._wrapped: dict[type, HandlerTable] = {}
        self.ask_timeout = ask_timeout
        #: Which inbound header keys travel on calls made while serving (see :mod:`.metadata`).
        self.propagate = header_rule(propagate_headers)
        self.root_strategy = root_strategy
        self.default_mailbox = default_mailbox
        self.shutdown_timeout = shutdown_timeout
        self.rng = random.Random(seed)
        #: Calls left before a tell/ask that did not need to wait yields anyway (fairness).
        self.budget = BATCH
        self.dead_letters = DeadLetters()
        self.timers = TimerService()
        #: Deadlines of asks (cheaper than a cancel scope each; see TimeoutWheel).
        self.timeouts = TimeoutWheel()
        self.dispatcher = Dispatcher(nursery)
        self._nursery = nursery
        self._cells: dict[str, Cell] = {}
        #: Live cells by path (the runtime's index; read-only for everyone else).
        self.cells = self._cells
        self.codecs = codecs
        #: Objects higher layers attach to this node (the cluster, pub/sub), by name.
        self.extensions: dict[str, Any] = {}
        #: Connections to other nodes (see :mod:`trimicro.actors.remote`).
        self.remote = Remoting(
            self,
            nursery,
            transport=transport,
            identity=identity,
            codecs=codecs,
            keepalive=keepalive,
            dead_after=dead_after,
            busy_poll=busy_poll,
            max_handshakes=max_handshakes,
        )
        #: Readiness checks (see :mod:`.health`), answered to other nodes as ``SYSTEM health``.
        self.health = Health(node_id)
        self.remote.system_handlers[HEALTH_OP] = HealthAnswers(self.health)
        self._uids = itertools.count(1)
        #: Shared specs of anonymous spawns (see :meth:`child_spec`), at most SHARED_SPECS.
        self._specs: dict[type, ChildSpec] = {}
        #: The shared empty mailbox of each mailbox spec (see ``Unbuilt``), at most SHARED_SPECS.
        self._unbuilt: dict[int, Unbuilt] = {}
        #: What spawns of an actor class need (see :meth:`_kind`), at most SHARED_SPECS classes.
        self._kinds: dict[Any, tuple[Mailbox[Any], HandlerTable | None, int]] = {}
        root_spec = ChildSpec(_Guardian, "user", restart=Restart.PERMANENT)
        self._root = Cell(self, None, root_spec, "/user", next(self._uids), bounded(16).build())
        self._root.handlers = handler_table(_Guardian)
        self._root.instance = _Guardian()
        self._root.status = RUNNING
        self._cells["/user"] = self._root

    def spend(self) -> bool:
        """Spend one unit of the yield budget shared by tell, direct ask and publish; ``True``
        once every ``BATCH`` calls, when the caller should let other tasks run (a producer that
        never has to wait still yields now and then, and its messages are handed over in batches)."""
        self.budget -= 1
        if self.budget > 0:
            return False
        self.budget = BATCH
        return True

    # ---- spawning and stopping ---------------------------------------------------------------

    async def spawn(
        self,
        factory: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        restart: Restart = Restart.TRANSIENT,
        shutdown: float = DEFAULT_SHUTDOWN,
        mailbox: MailboxSpec | None = None,
        **kwargs: Any,
    ) -> ActorRef:
        """Start a top-level actor under the root supervisor and return its ref.

        Returns after the actor's ``started`` hook has run; if that hook raises, the actor is
        not registered and the exception propagates.
        """
        cell = self.new_cell(
            self._root, self.child_spec(factory, name, args, kwargs, restart, shutdown, mailbox)
        )
        if _build(cell):  # start_cell's body, inline: one coroutine fewer per spawn
            await _run_start_hooks(cell)
        return cell.ref

    def child_spec(
        self,
        factory: Callable[..., Any],
        name: str | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        restart: Restart,
        shutdown: float,
        mailbox: MailboxSpec | None,
    ) -> ChildSpec:
        """The spec of a spawn. Anonymous, argument-free spawns of an actor class share one
        (specs are frozen values): spawning many actors of a kind is the common case, and
        building a spec was a sixth of a spawn's cost."""
        if (
            name is None
            and not args
            and not kwargs
            and restart is Restart.TRANSIENT
            and shutdown == DEFAULT_SHUTDOWN
            and mailbox is None
            and isinstance(factory, type)
        ):
            spec = self._specs.get(factory)
            if spec is None:
                spec = ChildSpec(factory, None, (), {}, restart, shutdown, mailbox)
                if len(self._specs) < SHARED_SPECS:
                    self._specs[factory] = spec
            return spec
        return ChildSpec(factory, name, args, kwargs, restart, shutdown, mailbox)

    async def spawn_cell(self, parent: Cell, spec: ChildSpec) -> ActorRef:
        return await self.start_cell(self.new_cell(parent, spec))

    def new_cell(self, parent: Cell, spec: ChildSpec) -> Cell:
        """Register a new child cell of ``parent`` (not started: see :meth:`start_cell`)."""
        if parent.status >= STOPPING:
            raise Conflict(f"{parent.path} is stopping; cannot spawn children", id=parent.path)
        name = spec.name
        uid = next(self._uids)
        if name is None:
            name = f"${uid}"
        elif not name or "/" in name or name.startswith("$"):
            raise ValueError(f"actor names are non-empty, without '/', not starting with '$': {name!r}")
        children = parent.children
        if name in children:
            raise Conflict(f"{parent.path}/{name} already exists", id=parent.path)
        factory = spec.factory
        # Only classes are cached by factory: a callable instance need not be hashable.
        kind = self._kinds.get(factory) if spec.mailbox is None and isinstance(factory, type) else None
        if kind is None:
            kind = self._kind(spec)
        mailbox, table, concurrency = kind
        path = f"{parent.path}/{name}"
        cell = Cell(self, parent, spec, path, uid, mailbox)
        if table is not None:
            cell.handlers = table
            if concurrency > 1:
                cell.max_concurrency = concurrency
        children[name] = cell
        self._cells[path] = cell
        return cell

    def _kind(self, spec: ChildSpec) -> tuple[Mailbox[Any], HandlerTable | None, int]:
        """What a spawn of ``spec`` needs to know about its factory: its (shared, empty) mailbox,
        its handler table and its ``max_concurrency`` (``None`` and 1 for a factory function:
        known once it has built the instance). Kept per actor class for spawns that do not
        choose their own mailbox: an actor class's settings are read at its first spawn."""
        factory = spec.factory
        actor_cls = factory if isinstance(factory, type) and issubclass(factory, Actor) else None
        mailbox_spec = (
            spec.mailbox or (actor_cls.mailbox if actor_cls is not None else None) or self.default_mailbox
        )
        # By identity: hashing a spec (attrs, in Python) cost more than the lookup. A cached
        # Unbuilt holds its spec, so the id cannot be reused while the entry exists.
        mailbox = self._unbuilt.get(id(mailbox_spec))
        if mailbox is None:
            mailbox = Unbuilt(mailbox_spec, _message_of)  # checks the spec
            if len(self._unbuilt) < SHARED_SPECS:
                self._unbuilt[id(mailbox_spec)] = mailbox
        if actor_cls is None:
            return mailbox, None, 1
        kind = (mailbox, self.handlers_for(actor_cls), max(1, actor_cls.max_concurrency))
        if spec.mailbox is None and len(self._kinds) < SHARED_SPECS:
            self._kinds[actor_cls] = kind
        return kind

    def handlers_for(self, cls: type[Actor]) -> HandlerTable:
        """The handler table this node's actors of ``cls`` use: the class's own, or, when the
        node or the class has middleware, a copy wrapped in it (node's outermost), and in the
        endpoint recorder when metrics are on, built once per class and node."""
        table = handler_table(cls)
        recorder = self.metrics.endpoints
        if not self.middleware and not cls.middleware and recorder is None and self.tracing is None:
            return table
        wrapped = self._wrapped.get(cls)
        if wrapped is None:
            wrapped = table
            outer = () if self.tracing is None else (self.tracing,)
            if outer or self.middleware or cls.middleware:
                wrapped = wrap_handlers(table, (*outer, *self.middleware, *cls.middleware))
            if recorder is not None:  # outermost: what middleware raises counts too
                wrapped = recorder.wrap(wrapped)
            if len(self._wrapped) < SHARED_SPECS:
                self._wrapped[cls] = wrapped
        return wrapped

    async def start_cell(self, cell: Cell) -> ActorRef:
        """Start a cell from :meth:`new_cell`; if it fails to start, it is gone again."""
        if _build(cell):
            await _run_start_hooks(cell)
        return cell.ref

    async def stop(self, ref: ActorRef, reason: str | None = None) -> None:
        """Stop a local actor and its children; returns when it has stopped (never restarted)."""
        cell = self._local(ref)
        await cell.stop(reason)

    def unregister(self, cell: CellLifecycle) -> None:
        if self._cells.get(cell.path) is cell:
            del self._cells[cell.path]

    # ---- lookup ------------------------------------------------------------------------------

    def lookup(self, path: str) -> ActorRef | None:
        """The ref of the live actor at ``path`` (``"/user/counter"`` or ``"counter"``), or None."""
        if not path.startswith("/"):
            path = f"/user/{path}"
        cell = self._cells.get(path)
        return None if cell is None else cell.ref

    def ref(self, path: str) -> ActorRef:
        """Like :meth:`lookup` but raises :class:`NotFound`."""
        ref = self.lookup(path)
        if ref is None:
            raise NotFound(f"no actor at {path}", id=self.id)
        return ref

    def bind(self, ref: ActorRef) -> ActorRef:
        """Attach a ref decoded from elsewhere to the actor it names on this node."""
        if ref.node != self.id:
            raise NotFound(f"{ref} lives on node {ref.node}, not {self.id}", id=self.id)
        cell = self._cells.get(ref.path)
        if cell is None or (ref.uid and cell.ref.uid != ref.uid):
            raise NotFound(f"no actor {ref}", id=self.id)
        return cell.ref

    def resolve(self, ref: ActorRef) -> ActorRef:
        """Bind any ref, local or on another node, so that tell/ask can use it."""
        return self.remote.bind_ref(ref)

    def remote_ref(self, node_id: str, path: str, uid: int = 0) -> ActorRef:
        """A bound ref to the actor at ``path`` (``"/user/x"`` or ``"x"``) on node ``node_id``."""
        if not path.startswith("/"):
            path = f"/user/{path}"
        return self.resolve(ActorRef(node_id, path, uid))

    # ---- other nodes -------------------------------------------------------------------------

    @property
    def address(self) -> str | None:
        """Where other nodes can dial this one (``None`` unless it listens)."""
        return self.remote.address

    async def listen(self, address: str = "127.0.0.1:0") -> str:
        """Accept authenticated connections from other nodes; returns the bound address."""
        return await self.remote.listen(address)

    async def connect(self, address: str, timeout: float | None = None) -> str:
        """Open (or reuse) the secure link to the node at ``address``; returns its node id."""
        return await self.remote.connect(address, timeout)

    def _local(self, ref: ActorRef) -> Cell:
        cell = ref.binding
        if isinstance(cell, Cell) and cell.node is self:
            return cell
        return self._local(self.bind(ref))

    @property
    def root(self) -> ActorRef:
        return self._root.ref

    def children(self) -> list[ActorRef]:
        """Top-level actors in start order."""
        return [c.ref for c in self._root.children.values()]

    def __len__(self) -> int:
        """Live actors (the root guardian not counted)."""
        return len(self._cells) - 1

    # ---- plumbing used by cells --------------------------------------------------------------

    def dead_letter(self, recipient: ActorRef | None, msg: Any, reason: str, sender: ActorRef | None) -> None:
        self.dead_letters.publish(DeadLetter(recipient, msg, reason, sender))

    def spawn_system(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run runtime work (supervision, stops) as a node-owned task that logs its failures."""
        self._nursery.start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("runtime task %r failed", fn)

    async def _shutdown(self) -> None:
        with trio.move_on_after(self.shutdown_timeout) as scope:
            await self._root.stop_children("node shutdown")
        if scope.cancelled_caught:
            log.error(
                "node %s: shutdown passed %.1fs; cancelling the rest",
                self.id,
                self.shutdown_timeout,
            )


def _build(cell: Cell) -> bool:
    """Build a new cell's instance; ``True`` if its start hooks are to be awaited. A cell that
    fails to build is gone again."""
    try:
        return cell.build_instance()
    except BaseException:
        cell.abandon_start()
        raise


async def _run_start_hooks(cell: Cell) -> None:
    try:
        await cell.run_start_hooks(None)
    except BaseException:
        cell.abandon_start()
        raise


def _message_of(item: Mail) -> Any:
    msg = item.msg
    return msg


@asynccontextmanager
async def start_node(
    name: str | None = None,
    *,
    ask_timeout: float = DEFAULT_ASK_TIMEOUT,
    root_strategy: SupervisorStrategy | None = None,
    mailbox: MailboxSpec | None = None,
    shutdown_timeout: float = 30.0,
    seed: int | None = None,
    listen: str | None = None,
    transport: Transport | None = None,
    identity: Identity | None = None,
    home: Path | None = None,
    registry: TypeRegistry | None = None,
    codecs: CodecSet | None = None,
    keepalive: float = 1.0,
    dead_after: float = 10.0,
    busy_poll: float = DEFAULT_BUSY_POLL,
    max_handshakes: int = MAX_HANDSHAKES,
    propagate_headers: HeaderRule = None,
    middleware: Sequence[Middleware] = (),
    metrics: bool = False,
    tracing: TracingSetting = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the block.

    ``name`` is the node id (random if omitted); ``ask_timeout`` the default for ``ask``;
    ``root_strategy`` how top-level actors are supervised; ``mailbox`` the default mailbox;
    ``shutdown_timeout`` bounds the orderly stop at exit; ``seed`` makes backoff jitter repeatable.

    Other nodes: ``listen`` (e.g. ``"127.0.0.1:0"``) accepts connections at start; ``transport``
    carries them (TCP by default); ``identity`` proves who this node is. Without one, the node
    uses the development identity under ``home`` (``$TRIMICRO_HOME`` or ``~/.trimicro``): a local
    authority and a node key created on first use, so nodes on one machine trust each other with
    no setup and still talk encrypted. ``registry`` names the message classes that may cross
    nodes (``codecs``, msgpack by default, encode them). ``keepalive`` is the heartbeat interval
    of an idle link, ``dead_after`` how long a silent link lives. ``busy_poll`` is how long (in
    seconds) the node polls for the reply of a lone request to another node before it sleeps
    until the reply comes, and for a caller's next request after answering its last: CPU time
    for latency, bounded (see :mod:`trimicro.actors.busypoll`); 0 turns it off.
    ``max_handshakes`` caps the inbound connections whose handshake is still running (each may
    take up to 5 s and holds buffers before anyone is authenticated): beyond it a new connection
    is closed at once; established links do not count.
    ``propagate_headers`` restricts which headers of a request being served travel on the calls
    its handler makes (by default all but the hop-by-hop ones; ``authorization``, ``traceparent``
    and ``tracestate`` always do):
    a collection of keys to allow, or a predicate on the key (see :mod:`trimicro.actors.metadata`).
    ``middleware`` runs around the calls this node makes and the handlers of its actors (the
    first is outermost; see :mod:`trimicro.actors.middleware` for the order of the levels).
    ``metrics`` turns on per-endpoint metrics (requests, errors by code, latency; see
    :mod:`trimicro.actors.metrics`): ``node.metrics`` counts the rest either way.

    ``tracing``: by default the node makes OpenTelemetry spans of its calls and handlers when
    the process has an SDK's tracer provider set globally, and nothing otherwise; ``False``
    turns that off, a ``TracerProvider`` is used instead of the global one (see
    :mod:`trimicro.actors.tracing`).
    """
    if max_handshakes < 1:
        raise ValueError(f"max_handshakes must be at least 1, got {max_handshakes}")
    header_rule(propagate_headers)  # a bad rule is a TypeError here, not inside the node's nursery
    compose(middleware)  # so is a middleware that is not callable
    node_id = name or uuid.uuid4().hex[:12]

    def make_identity() -> Identity:
        if identity is not None:
            return identity
        from trimicro.mailbox.secure.identity import dev_identity

        return dev_identity(node_id, home)

    # An exception from the block is re-raised as itself after the node stopped, not wrapped in
    # the ExceptionGroup of the node's internal nursery: ``pytest.raises(NotFound)`` around an
    # ``ask`` inside the block works as users expect.
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        node = Node(
            node_id,
            nursery,
            ask_timeout=ask_timeout,
            root_strategy=root_strategy or SupervisorStrategy(),
            default_mailbox=mailbox or bounded(),
            shutdown_timeout=shutdown_timeout,
            seed=seed,
            transport=transport or TcpTransport(),
            identity=make_identity,
            codecs=codecs or CodecSet.default(registry),
            keepalive=keepalive,
            dead_after=dead_after,
            busy_poll=busy_poll,
            max_handshakes=max_handshakes,
            propagate_headers=propagate_headers,
            middleware=middleware,
            metrics=metrics,
            tracing=node_tracing(tracing, node_id),
        )
        register_node(nursery, node_id)  # log records name the node (see :mod:`.logs`)
        nursery.start_soon(node.timers.run, name="trimicro-timers")
        nursery.start_soon(node.timeouts.run, name="trimicro-timeouts")
        try:
            if listen is not None:
                await node.listen(listen)
            node.health.state = "running"
            yield node
        except BaseException as exc:
            body_error = exc
        finally:
            node.health.state = "stopping"
            with trio.CancelScope(shield=True):
                await node._shutdown()
                await node.remote.aclose()
            nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error
