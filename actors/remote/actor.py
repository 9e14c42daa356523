"""What a ref on another node is bound to: :class:`RemoteActor`, with the same four calls as a
local cell (``tell``, ``try_tell``, ``ask``, ``system``), so ``tell``/``ask`` and death watch work
the same whatever the ref's location; and :class:`InboundReply`, the reply slot of a request from
another node, which sends the answer back over the link it came on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from trimicro.mailbox.envelope import (
    DEFAULT_CONTENT_TYPE,
    Envelope,
    Kind,
    encode_envelope,
    encode_parts,
    ref_fields,
)
from trimicro.mailbox.errors import MicroError, NotFound, RequestTimeout
from trimicro.mailbox.refs import ActorRef

from ..busypoll import PROBE_EVERY
from ..cancelpoint import cancel_pending
from ..cell import Stopped
from ..mail import Reply
from ..messages import Terminated
from ..streams import Stream
from . import OUT_HIGH_WATER, Unreachable
from .batching import _clock
from .outbox import Outbox, RemoteStreamOps

if TYPE_CHECKING:
    from .ports import ActorPeerPort

#: The kinds the hot paths send, as ints: reading an enum member costs more than packing it.
_TELL, _ASK, _CANCEL = int(Kind.TELL), int(Kind.ASK), int(Kind.CANCEL)


class _Gone(Stopped):
    """Binding of a ref to a local actor that no longer exists (a ref from another node naming
    one of ours): like a stopped actor's own ref, except that an ask is answered 404."""

    __slots__ = ()

    def _refusal(self) -> MicroError:
        return NotFound(f"no actor {self.ref}", id=self.node.id)


class RemoteActor:
    """The binding of a ref to an actor on another node: same calls as a local cell.

    ``tell``/``try_tell``/``ask`` take headers as ``trimicro.actors.api`` made them, the
    propagated metadata of the message being handled already merged in (:mod:`..metadata`)."""

    __slots__ = ("_target", "node", "peer", "target")

    def __init__(self, peer: ActorPeerPort[Outbox], target: ActorRef) -> None:
        self.peer = peer
        self.node = peer.remoting.node
        self.target = target
        #: ``target`` as the envelope carries it, built once (every request and tell sends it).
        self._target = ref_fields(target)

    def __repr__(self) -> str:
        return f"<RemoteActor {self.target}>"

    async def tell(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None = None,
    ) -> None:
        """Send one-way; waits only while the link's send buffer is full, or while the peer holds
        tells to this actor back (its mailbox is backed up: see :mod:`.tellflow`). Failures are
        dead letters."""
        node = self.node
        if node.spend():
            await trio.lowlevel.cancel_shielded_checkpoint()
        if cancel_pending():  # a plain call, not a coroutine per tell (see ..cancelpoint)
            await trio.lowlevel.checkpoint()
        try:
            link: Outbox = self.peer.link or await self.peer.connect(node.ask_timeout)
            codec = self.peer.remoting.codec
            body = codec.encode(msg)
            if link.held:  # the peer holds back tells to some of its actors
                link = await self._credit(link)  # (with a credit taken: no await from here on)
        except MicroError as exc:
            node.dead_letter(self.target, msg, f"undeliverable: {exc.detail}", sender)
            return
        # Without headers it joins the tells queued just before it to the same actor (one frame).
        if (
            not headers
            and link.out_bytes < OUT_HIGH_WATER
            and link.tell_later(self.target, sender, endpoint or "", codec.content_type, body)
        ):
            return
        frame = encode_parts(
            _TELL,
            0,
            self._target,
            ref_fields(sender),
            endpoint or "",
            codec.content_type,
            headers or {},
            0,
            body,
        )
        if link.out_bytes < OUT_HIGH_WATER and len(frame) <= link.remoting.max_frame_size:
            link.push(frame)  # Link.send without its coroutine: the usual case, no room to wait for
        else:
            try:
                await link.send(frame)
            except Unreachable as exc:  # the link dropped while this waited for room
                node.dead_letter(self.target, msg, f"undeliverable: {exc.detail}", sender)

    async def _credit(self, link: Outbox) -> Outbox:
        """Wait while the peer holds tells to this actor back and has granted no credit for
        them (a hold counts credit as a stream does); returns the link to send on, open, with
        the credit taken, so that the caller queues the tell without awaiting in between (a
        credit taken before an await could be lost to a cancellation or a closed link)."""
        while True:
            if link.closed:
                link = self.peer.link or await self.peer.connect(self.node.ask_timeout)
            hold = link.held.get(self.target.path)
            if hold is None or hold.take_credit():  # (the tell itself leaves as a TELL)
                return link
            await hold.wait_credit()  # (returns too when the hold ends, or its link closes)

    def try_tell(self, msg: Any, sender: ActorRef | None, headers: dict[str, str] | None) -> bool:
        link = self.peer.link
        if link is None or link.out_bytes >= OUT_HIGH_WATER:
            self.node.dead_letter(self.target, msg, "unreachable" if link is None else "full", sender)
            if link is None:
                self.peer.connect_soon()
            return False
        codec = self.peer.remoting.codec
        try:
            body = codec.encode(msg)
        except MicroError as exc:
            self.node.dead_letter(self.target, msg, f"undeliverable: {exc.detail}", sender)
            return False
        frame = encode_parts(
            _TELL, 0, self._target, ref_fields(sender), "", codec.content_type, headers or {}, 0, body
        )
        if not link.fits(frame):
            self.node.dead_letter(self.target, msg, "too large", sender)
            return False
        if link.held:
            hold = link.held.get(self.target.path)
            if hold is not None and not hold.take_credit():  # held back, and no credit now
                self.node.dead_letter(self.target, msg, "full", sender)
                return False
        link.push(frame)
        return True

    async def ask(
        self,
        msg: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        endpoint: str | None,
        timeout: float,
        reply_headers: dict[str, str] | None = None,
    ) -> Any:
        """Send a request and wait for its answer; on timeout or cancellation send CANCEL."""
        peer = self.peer
        deadline = peer.remoting.now() + timeout
        link = peer.link
        waits = link is None or link.out_bytes >= OUT_HIGH_WATER  # for a link, or for room in it
        if link is None:
            with trio.move_on_at(deadline):
                link = await peer.connect(timeout)
            if link is None:
                raise RequestTimeout(
                    f"no connection to node {peer.node_id} within {timeout:g}s", id=self.target.path
                )
        if link.out_bytes >= OUT_HIGH_WATER:  # the send queue is full: wait for room, by the deadline
            with trio.move_on_at(deadline):
                await link.wait_room()
            if link.closed:  # dropped meanwhile: a request put on it would wait out its deadline
                with trio.move_on_at(deadline):
                    link = await peer.connect(timeout)
                if link is None:
                    raise RequestTimeout(
                        f"no connection to node {peer.node_id} within {timeout:g}s", id=self.target.path
                    )
            if link.out_bytes >= OUT_HIGH_WATER:
                raise RequestTimeout(
                    f"no room to send to node {peer.node_id} within {timeout:g}s", id=self.target.path
                )
        codec = peer.remoting.codec
        body = codec.encode(msg)
        corr = link.new_corr()
        reply = Reply()
        frame = encode_parts(
            _ASK,
            corr,
            self._target,
            None if sender is None else ref_fields(sender),
            endpoint or "",
            codec.content_type,
            headers or {},
            max(1, math.ceil((deadline - peer.remoting.now() if waits else timeout) * 1000)),  # what is left
            body,
        )
        pending = link.pending
        first = not pending  # no other request in flight on this link
        pending[corr] = reply
        poller = peer.remoting.poller
        if poller is not None and first:
            # Poll toward peers whose polled-for replies come in time, and now and then to any
            # peer (a probe: a peer that was slow may be fast again).
            link.lone_asks += 1
            if not (poller.worth(link.poll_time) or link.lone_asks % PROBE_EVERY == 0) or not poller.open():
                poller = None
        else:
            poller = None
        sent_at = 0.0 if poller is None else _clock()
        reply.label = self.target.path
        reply.timeout = timeout
        wheel = self.node.timeouts
        reply.slot = wheel.add(deadline, reply)  # a cancel scope per call would cost more
        try:
            if link.out_bytes >= OUT_HIGH_WATER or len(frame) > link.remoting.max_frame_size:
                await link.send(frame)  # waits for room; refuses an oversized frame with 400
            elif first and not link.out:
                link.write_at_once(frame)
            else:
                link.push(frame)  # behind requests in flight: leaves with them in one write
            if poller is None:
                value = await reply.wait()
            else:
                poller.begin()
                try:
                    value = await reply.wait()
                finally:
                    # How long polled-for replies take on this link: a moving average (1/8 each).
                    link.poll_time += (poller.end(sent_at) - link.poll_time) * 0.125
            if reply_headers is not None and reply.headers:
                reply_headers.update(reply.headers)
            return value
        except BaseException:
            # Timed out or cancelled before an answer came: tell the callee to stop working on it.
            reply.abandoned = True
            if pending.pop(corr, None) is not None and not link.closed:
                link.push(encode_parts(_CANCEL, corr, None, None, "", DEFAULT_CONTENT_TYPE, {}, 0, b""))
            raise
        finally:
            if reply.slot is not None:
                wheel.remove(reply.slot, reply)
                reply.slot = None

    async def open_stream(
        self,
        endpoint: str,
        request: Any,
        sender: ActorRef | None,
        headers: dict[str, str] | None,
        window: int,
        timeout: float,
    ) -> Stream:
        """Open a stream with a stream handler on the peer; returns once it accepted."""
        deadline = trio.current_time() + timeout
        peer = self.peer
        link = peer.link
        if link is None:
            with trio.move_on_at(deadline):
                link = await peer.connect(timeout)
            if link is None:
                raise RequestTimeout(f"no connection to node {peer.node_id} within {timeout:g}s")
        codec = peer.remoting.codec
        body = codec.encode(request)
        corr = link.new_corr()
        streams = link.streams
        stream = Stream(window, request=request, headers=headers, peer=self.target)
        stream.on_done = lambda _s: streams.pop(corr, None)
        stream.ops = RemoteStreamOps(link, corr, codec)
        meta = dict(headers or {})  # propagated metadata already merged (api.open_stream)
        meta["credit"] = str(window)
        ct = codec.content_type
        env = Envelope(Kind.STREAM_OPEN, corr, self.target, sender, endpoint, ct, meta, 0, body)
        streams[corr] = stream
        try:
            with trio.move_on_at(deadline):
                await link.send(encode_envelope(env))
                await stream.wait_accepted()
                return stream
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        await stream.aclose()
        raise RequestTimeout(f"stream {endpoint} on {self.target} not accepted within {timeout:g}s")

    def system(self, msg: Any) -> bool:
        """Runtime notices for a remote actor; only ``Terminated`` (for a remote watcher) travels."""
        if not isinstance(msg, Terminated):
            return False
        self.peer.watching.discard(msg.ref, self.target)  # the watch is over (if it was one)
        link = self.peer.link
        if link is None:
            return False
        body = self.peer.remoting.codec.encode(msg.reason)
        link.push(encode_envelope(Envelope(Kind.SYSTEM, 0, self.target, msg.ref, "terminated", body=body)))
        return True

    def add_watcher(self, watcher: ActorRef) -> None:
        """Watch this remote actor for ``watcher`` (a local actor)."""
        self.peer.watch(self.target, watcher)

    def remove_watcher(self, watcher: ActorRef) -> None:
        self.peer.unwatch(self.target, watcher)
