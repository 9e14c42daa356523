"""Subject matching for pub/sub, with NATS semantics, sans-I/O.

A *subject* is a string of tokens separated by ``"."`` (``"orders.eu.created"``). Messages are
published to concrete subjects; subscribers give *patterns*, which may use two wildcards:

* ``"*"`` matches exactly one token, in any position (``"orders.*.created"``);
* ``">"`` matches one or more trailing tokens and may only be the last token (``"orders.>"``
  matches ``"orders.eu"`` and ``"orders.eu.created"`` but not ``"orders"``).

Subjects and patterns are non-empty, at most :data:`MAX_SUBJECT_LENGTH` characters, contain no
whitespace and no empty tokens; a token that contains ``"*"`` or ``">"`` must be exactly that
wildcard (``"a*"`` is invalid). Published subjects contain no wildcards at all.

:class:`SubscriptionIndex` is a token trie like the ``sublist`` of the NATS server: it maps
patterns to subscriber values (for example actor addresses), each optionally in a queue group,
and answers "who wants this subject?" in time proportional to the subject's length rather than
to the number of subscriptions, with a small LRU cache in front. :func:`any_match` answers the
same question for a plain collection of patterns, such as the interest a remote node announced.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "MAX_SUBSCRIPTIONS",
    "InvalidSubject",
    "Match",
    "SubscriptionIndex",
    "any_match",
    "matches",
    "validate_pattern",
    "validate_subject",
]

MAX_SUBJECT_LENGTH = 256
"""Longest subject or pattern accepted, in characters."""

MAX_SUBSCRIPTIONS = 100_000
"""Default bound on the number of subscriptions one :class:`SubscriptionIndex` holds."""

_STAR = "*"
_GT = ">"
_WHITESPACE = re.compile(r"\s")

T = TypeVar("T", bound=Hashable)


class InvalidSubject(ValueError):
    """A subject or pattern breaks the syntax rules (see the module docstring)."""


def _split(text: str, what: str) -> list[str]:
    """Checks what subjects and patterns share and returns the tokens."""
    if not isinstance(text, str):
        raise InvalidSubject(f"{what} must be a str, not {type(text).__name__}")
    if not text:
        raise InvalidSubject(f"{what} is empty")
    if len(text) > MAX_SUBJECT_LENGTH:
        raise InvalidSubject(f"{what} is longer than {MAX_SUBJECT_LENGTH} characters")
    if _WHITESPACE.search(text):
        raise InvalidSubject(f"{what} {text!r} contains whitespace")
    tokens = text.split(".")
    for token in tokens:
        if not token:
            raise InvalidSubject(f"{what} {text!r} has an empty token")
        if token not in (_STAR, _GT) and (_STAR in token or _GT in token):
            raise InvalidSubject(f"{what} {text!r}: wildcard inside token {token!r}")
    return tokens


def _subject_tokens(subject: str) -> list[str]:
    tokens = _split(subject, "subject")
    for token in tokens:
        if token in (_STAR, _GT):
            raise InvalidSubject(f"subject {subject!r} contains wildcard {token!r}")
    return tokens


def _pattern_tokens(pattern: str) -> list[str]:
    tokens = _split(pattern, "pattern")
    for token in tokens[:-1]:
        if token == _GT:
            raise InvalidSubject(f"pattern {pattern!r}: '>' may only be the last token")
    return tokens


def validate_subject(subject: str) -> None:
    """Raises :class:`InvalidSubject` unless ``subject`` is valid for publishing (no wildcards)."""
    _subject_tokens(subject)


def validate_pattern(pattern: str) -> None:
    """Raises :class:`InvalidSubject` unless ``pattern`` is a valid subscription pattern."""
    _pattern_tokens(pattern)


def _match_tokens(pattern: list[str], subject: list[str]) -> bool:
    n = len(subject)
    for i, token in enumerate(pattern):
        if token == _GT:
            return n > i  # one or more tokens left
        if i >= n or (token != _STAR and token != subject[i]):
            return False
    return len(pattern) == n


def matches(pattern: str, subject: str) -> bool:
    """Whether the published ``subject`` matches the subscription ``pattern``.

    Raises :class:`InvalidSubject` if either is malformed.
    """
    return _match_tokens(_pattern_tokens(pattern), _subject_tokens(subject))


def any_match(patterns: Iterable[str], subject: str) -> bool:
    """Whether any of ``patterns`` matches ``subject`` (e.g. does a remote node want it?).

    Raises :class:`InvalidSubject` if the subject or a pattern examined is malformed.
    """
    tokens = _subject_tokens(subject)
    return any(_match_tokens(_pattern_tokens(p), tokens) for p in patterns)


@dataclass(slots=True)
class Match(Generic[T]):
    """Who wants a subject: plain subscribers, and the members of each queue group.

    Every plain subscriber gets the message; each queue group gets it once, delivered to one
    member the caller picks. Values appear at most once in ``plain`` and in each group.
    """

    plain: list[T] = field(default_factory=list)
    groups: dict[str, list[T]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.plain or self.groups)

    def copy(self) -> Match[T]:
        return Match(list(self.plain), {name: list(members) for name, members in self.groups.items()})


class _Node(Generic[T]):
    """One trie level: children by token (``"*"`` and ``">"`` included) and the subscriptions
    whose pattern ends here."""

    __slots__ = ("children", "plain", "queues")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.plain: dict[T, None] = {}
        self.queues: dict[str, dict[T, None]] = {}

    def is_empty(self) -> bool:
        return not (self.children or self.plain or self.queues)


def _check_queue(queue: str | None) -> None:
    if queue is not None and (not isinstance(queue, str) or not queue or _WHITESPACE.search(queue)):
        raise ValueError(f"invalid queue group name {queue!r}")


class SubscriptionIndex(Generic[T]):
    """Patterns to subscriber values, as a token trie, with an LRU cache of match results.

    A subscription is the triple ``(pattern, value, queue)``; adding one that is already present
    changes nothing. ``value`` must be hashable (an actor address, say).
    """

    def __init__(self, *, max_subscriptions: int = MAX_SUBSCRIPTIONS, cache_size: int = 1024) -> None:
        if max_subscriptions < 0 or cache_size < 0:
            raise ValueError("max_subscriptions and cache_size must be >= 0")
        self.max_subscriptions = max_subscriptions
        self.cache_size = cache_size
        self._root: _Node[T] = _Node()
        self._count = 0
        self._by_value: dict[T, dict[tuple[str, str | None], None]] = {}
        self._pattern_counts: dict[str, int] = {}
        self._cache: OrderedDict[str, Match[T]] = OrderedDict()
        self._hits = 0
        self._misses = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, item: object) -> bool:
        """``(pattern, value)`` or ``(pattern, value, queue)`` in index."""
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            return False
        pattern, value, *rest = item
        queue = rest[0] if rest else None
        try:
            subs = self._by_value.get(value)
        except TypeError:
            return False
        return subs is not None and (pattern, queue) in subs

    def patterns(self) -> set[str]:
        """Every pattern that has at least one subscriber."""
        return set(self._pattern_counts)

    def cache_info(self) -> tuple[int, int, int]:
        """``(hits, misses, current size)`` of the match cache."""
        return self._hits, self._misses, len(self._cache)

    def add(self, pattern: str, value: T, queue: str | None = None) -> bool:
        """Subscribes ``value`` to ``pattern`` (in queue group ``queue`` if given).

        Returns ``False`` if that exact subscription already existed. Raises
        :class:`InvalidSubject` for a bad pattern, ``ValueError`` for a bad queue name or when
        the index already holds ``max_subscriptions`` subscriptions.
        """
        tokens = _pattern_tokens(pattern)
        _check_queue(queue)
        key = (pattern, queue)
        subs = self._by_value.get(value)
        if subs is not None and key in subs:
            return False
        if self._count >= self.max_subscriptions:
            raise ValueError(f"subscription limit reached ({self.max_subscriptions})")
        node = self._root
        for token in tokens:
            child = node.children.get(token)
            if child is None:
                child = node.children[token] = _Node()
            node = child
        if queue is None:
            node.plain[value] = None
        else:
            node.queues.setdefault(queue, {})[value] = None
        if subs is None:
            subs = self._by_value[value] = {}
        subs[key] = None
        self._pattern_counts[pattern] = self._pattern_counts.get(pattern, 0) + 1
        self._count += 1
        self._cache.clear()
        return True

    def remove(self, pattern: str, value: T, queue: str | None = None) -> bool:
        """Unsubscribes; returns whether that subscription existed."""
        tokens = _pattern_tokens(pattern)
        subs = self._by_value.get(value)
        if subs is None or (pattern, queue) not in subs:
            return False
        self._remove(tokens, pattern, value, queue)
        return True

    def remove_value(self, value: T) -> int:
        """Removes every subscription of ``value`` (an actor that stopped); returns how many."""
        subs = self._by_value.get(value)
        if not subs:
            return 0
        keys = list(subs)
        for pattern, queue in keys:
            self._remove(pattern.split("."), pattern, value, queue)
        return len(keys)

    def _remove(self, tokens: list[str], pattern: str, value: T, queue: str | None) -> None:
        path: list[_Node[T]] = [self._root]
        for token in tokens:
            path.append(path[-1].children[token])
        node = path[-1]
        if queue is None:
            del node.plain[value]
        else:
            members = node.queues[queue]
            del members[value]
            if not members:
                del node.queues[queue]
        # Prune nodes left empty, deepest first.
        for depth in range(len(tokens), 0, -1):
            if not path[depth].is_empty():
                break
            del path[depth - 1].children[tokens[depth - 1]]
        subs = self._by_value[value]
        del subs[(pattern, queue)]
        if not subs:
            del self._by_value[value]
        left = self._pattern_counts[pattern] - 1
        if left:
            self._pattern_counts[pattern] = left
        else:
            del self._pattern_counts[pattern]
        self._count -= 1
        self._cache.clear()

    def match(self, subject: str) -> Match[T]:
        """Subscribers whose pattern matches the published ``subject``.

        The result is the caller's to keep (a copy of the cached entry). Raises
        :class:`InvalidSubject` for a malformed subject or one containing wildcards.
        """
        return self.match_view(subject).copy()

    def match_view(self, subject: str) -> Match[T]:
        """:meth:`match` without the copy, for the hot path: the caller must not change it (a
        later ``add``/``remove`` leaves it as it was and caches a new one)."""
        cached = self._cache.get(subject)
        if cached is not None:
            self._cache.move_to_end(subject)
            self._hits += 1
            return cached
        tokens = _subject_tokens(subject)
        self._misses += 1
        hits: list[_Node[T]] = []
        level: list[_Node[T]] = [self._root]
        for token in tokens:
            following: list[_Node[T]] = []
            for node in level:
                children = node.children
                gt = children.get(_GT)
                if gt is not None:
                    hits.append(gt)  # at least this token remains
                exact = children.get(token)
                if exact is not None:
                    following.append(exact)
                star = children.get(_STAR)
                if star is not None:
                    following.append(star)
            level = following
            if not level:
                break
        else:
            hits.extend(level)
        plain: dict[T, None] = {}
        groups: dict[str, dict[T, None]] = {}
        for node in hits:
            plain.update(node.plain)
            for name, members in node.queues.items():
                groups.setdefault(name, {}).update(members)
        result: Match[T] = Match(list(plain), {name: list(members) for name, members in groups.items()})
        if self.cache_size:
            self._cache[subject] = result
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result
