"""The link protocol without I/O: a link's states, the events that move it, and the rules on
correlation ids and stream credit (docs/protocol.md §3.3, §4.3-4.6), in the manner of h11's
``_state.py``: everything that decides whether a link may do something lives here, as one
table, so the rules can be read (and fuzzed) without a socket.

A link exists once the secure handshake is over (:mod:`trimicro.mailbox.secure` is its own
sans-I/O machine). It then waits for the peer's ``hello`` (which says what optional frames the
peer understands), is open, may be *retired* (a duplicate link between the same two nodes: it
finishes the exchanges that started on it, and new ones take the other link), and ends closed.

:class:`LinkProtocol` holds the state and this side's correlation counter; the trio code in
:mod:`.link` calls :meth:`LinkProtocol.handle` at each transition (hello, retire, close)
and :meth:`LinkProtocol.check_peer_corr` on every exchange the peer starts. A frame of any
kind keeps the state it finds (the table says so), which is why the reader does not consult
the table per frame: that would cost the hot path and decide nothing.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from typing import Final

from trimicro.mailbox.errors import BadRequest, InternalServerError

from . import MAX_CREDIT

__all__ = [
    "TRANSITIONS",
    "BadCorrelation",
    "BadCredit",
    "LinkEvent",
    "LinkProtocol",
    "LinkState",
    "LinkStateError",
    "check_credit",
]


class LinkState(enum.Enum):
    """Where a link is in its life."""

    #: Handshake done, the peer's ``hello`` not yet received: every frame is served, but the
    #: optional frames (``tells``, ``items``, ``tells.hold``) are not sent to the peer yet.
    AWAITING_HELLO = "awaiting-hello"
    #: The peer's ``hello`` arrived: its features are known.
    OPEN = "open"
    #: A duplicate link: exchanges that started here finish here; new ones take the other link.
    RETIRING = "retiring"
    #: Ended: nothing is read or written; waiting asks failed with 503.
    CLOSED = "closed"


class LinkEvent(enum.Enum):
    """What can happen to a link."""

    #: The peer's ``SYSTEM hello``.
    HELLO = "hello"
    #: Any other frame from the peer (every kind of §4 but ``hello``).
    FRAME = "frame"
    #: This side decided the link is a duplicate (``Link.retire``).
    RETIRE = "retire"
    #: The link ended: closed by this side, the peer's EOF, a broken connection, silence.
    CLOSE = "close"


_S, _E = LinkState, LinkEvent

#: The whole state machine: ``(state, event) -> next state``. A pair not listed is illegal
#: (:class:`LinkStateError`). docs/protocol.md §3.8 shows this table.
TRANSITIONS: Final[dict[tuple[LinkState, LinkEvent], LinkState]] = {
    (_S.AWAITING_HELLO, _E.HELLO): _S.OPEN,
    (_S.AWAITING_HELLO, _E.FRAME): _S.AWAITING_HELLO,
    (_S.AWAITING_HELLO, _E.RETIRE): _S.RETIRING,
    (_S.AWAITING_HELLO, _E.CLOSE): _S.CLOSED,
    # A repeated hello is allowed (with another incarnation it closes the link: the peer
    # restarted; that is the peer table's decision, after the transition).
    (_S.OPEN, _E.HELLO): _S.OPEN,
    (_S.OPEN, _E.FRAME): _S.OPEN,
    (_S.OPEN, _E.RETIRE): _S.RETIRING,
    (_S.OPEN, _E.CLOSE): _S.CLOSED,
    # The peer may still answer, stream and send anything on a link this side retires.
    (_S.RETIRING, _E.HELLO): _S.RETIRING,
    (_S.RETIRING, _E.FRAME): _S.RETIRING,
    (_S.RETIRING, _E.CLOSE): _S.CLOSED,
    # Closing is idempotent (several causes at once).
    (_S.CLOSED, _E.CLOSE): _S.CLOSED,
}


class LinkStateError(InternalServerError):
    """An event the link's state does not allow (a frame handled after the close, a second
    retire): a bug on this side, not the peer's doing (the peer cannot cause one: frames
    after a close are never read)."""

    def __init__(self, state: LinkState, event: LinkEvent) -> None:
        super().__init__(f"link event {event.value} is illegal in state {state.value}")
        self.state = state
        self.event = event


class BadCorrelation(BadRequest):
    """The peer started an exchange with a ``corr`` it may not use (§3.3): one of this side's
    parity, or one still live. Answered with ERROR 400 on that ``corr``."""


class BadCredit(BadRequest):
    """A STREAM_CREDIT outside 1..2^20 (§4.5): the stream ends with 400."""


def check_credit(n: object) -> int:
    """The credit a STREAM_CREDIT body grants, or :class:`BadCredit`."""
    if type(n) is not int or not 1 <= n <= MAX_CREDIT:
        raise BadCredit("stream credit must be an integer from 1 to 2^20")
    return n


class LinkProtocol:
    """One link's protocol state: its :class:`LinkState` and this side's correlation ids.

    Each side numbers the exchanges it starts, the dialer (``initiator``) with odd ids, the
    acceptor with even ones, so an id names one exchange whoever started it (§3.3).
    """

    __slots__ = ("_corrs", "initiator", "new_corr", "peer_parity", "state")

    def __init__(self, initiator: bool) -> None:
        self.initiator = initiator
        self.state = LinkState.AWAITING_HELLO
        self._corrs = itertools.count(1 if initiator else 2, 2)
        #: A fresh id for an exchange this side starts: the counter's own ``__next__`` (a C
        #: call; a method around ``next`` cost three times as much, once per request sent).
        self.new_corr: Callable[[], int] = self._corrs.__next__
        #: ``corr % 2`` of the exchanges the peer starts (the reader checks it inline).
        self.peer_parity = 0 if initiator else 1

    def handle(self, event: LinkEvent) -> LinkState:
        """Apply ``event``: the new state, or :class:`LinkStateError` (the state unchanged)."""
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise LinkStateError(self.state, event) from None
        return self.state

    @property
    def closed(self) -> bool:
        return self.state is LinkState.CLOSED

    def check_peer_corr(self, corr: int, live: bool) -> None:
        """Refuse (:class:`BadCorrelation`) an exchange the peer starts with ``corr``:
        ``live`` says whether an exchange by that id is still going on here."""
        if corr % 2 != self.peer_parity or live:
            raise BadCorrelation(f"bad or reused corr {corr}")
