"""Topic names and subscription patterns from an HTTP path, checked before anything else.

The broker's syntax (:mod:`trimicro.cluster.broker.topics`) refuses empty tokens, whitespace,
misplaced wildcards and names over its length limit. A path can carry more than a client could
type: percent-escapes decode to any character, and the broker lets through control and format
characters that are not whitespace (``\\x00``, ``\\x0e``, ``\\x7f``, a right-to-left override).
Such a topic is never a name anyone meant, and once published it turns up in logs, the
dashboard and other nodes' subscriptions, where a terminal or a browser would interpret it. So
the gateway refuses those too: every refusal is a 400 in Go Micro's error JSON.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from trimicro.actors import BadRequest

from ..broker import validate_pattern, validate_subject

__all__ = ["checked_pattern", "checked_topic"]

#: Unicode categories never accepted in a name: control, format, surrogate, private use.
_REFUSED = frozenset({"Cc", "Cf", "Cs", "Co"})


def _checked(text: str, what: str, syntax: Callable[[str], None]) -> str:
    try:
        syntax(text)
    except ValueError as exc:
        raise BadRequest(str(exc), id="gateway") from None
    for index, char in enumerate(text):
        if unicodedata.category(char) in _REFUSED:
            raise BadRequest(
                f"the {what} has a control or format character ({char!a}) at {index}", id="gateway"
            )
    return text


def checked_topic(topic: str) -> str:
    """``topic`` if a client may publish on it; 400 otherwise."""
    return _checked(topic, "topic", validate_subject)


def checked_pattern(pattern: str) -> str:
    """``pattern`` if a client may subscribe to it; 400 otherwise."""
    return _checked(pattern, "pattern", validate_pattern)
