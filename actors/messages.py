"""Messages the runtime itself sends to actors, and records it publishes."""

from __future__ import annotations

from typing import Any

import attrs

from trimicro.mailbox.refs import ActorRef

__all__ = ["DeadLetter", "Terminated"]


@attrs.frozen
class Terminated:
    """Death-watch notice: ``ref`` stopped; ``reason`` is ``None`` for a normal stop.

    Delivered as a system message, so a full mailbox does not lose it.
    """

    ref: ActorRef
    reason: str | None = None


@attrs.frozen
class DeadLetter:
    """A message that could not be delivered or handled, and why.

    ``reason`` is one of ``"stopped"`` (the target is gone), ``"full"`` (a non-blocking send met
    a full mailbox), ``"unhandled"`` (no handler for its type), ``"late-reply"`` (the asker had
    already given up), ``"failed"`` (a tell whose handler raised); for another node's actor
    also ``"unreachable"`` or ``"unreachable: <why>"`` (no link, or the link closed with the
    tell still queued), ``"undeliverable: <why>"`` and ``"too large"``.
    """

    recipient: ActorRef | None
    message: Any
    reason: str
    sender: ActorRef | None = None
