"""Access rules: which accounts may reach which resources, with Go Micro's semantics, sans I/O.

A :class:`Rule` grants or denies a scope access to a :class:`Resource` (type, name,
endpoint). Deciding follows go-micro's ``auth.Verify`` exactly:

1. keep the rules whose type is ``*`` or the resource's type, whose name matches and whose
   endpoint matches (see below);
2. take them by priority, highest first, ties in the order given;
3. the first one that applies decides: scope ``""`` applies to everyone (public), scope ``*``
   to any account, any other scope to accounts that hold it;
4. if none applies, the answer is no.

Name and endpoint patterns are ``*`` (anything), the exact value, or a prefix wildcard:
Go Micro expands an endpoint ``a/b/c`` to the patterns ``a/*``, ``a/b/*``, ``a/b/c/*``, and we
do the same with ``.`` as the separator, so ``Greeter.*`` matches ``Greeter.hello`` and
``go.micro.*`` matches the name ``go.micro.auth``. Patterns are compiled once; a decision costs
one pass over the rules and is then cached until the rules change.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import attrs

from trimicro.mailbox.errors import BadRequest, Forbidden, Unauthorized

__all__ = [
    "DEFAULT_RULES",
    "MAX_PRIORITY",
    "MAX_RULE_STRING",
    "Access",
    "Principal",
    "Resource",
    "Rule",
    "Rules",
]

MAX_RULE_STRING: Final = 256
"""Longest id, scope, type, name or endpoint a rule may carry, in characters."""
MAX_PRIORITY: Final = 2**30 - 1
"""Rules from outside (:meth:`Rule.from_dict`) have priorities in ``[-MAX_PRIORITY, MAX_PRIORITY]``.

That is within Go Micro's ``int32`` and leaves the range above to rules built into the node,
so no operator rule can outrank them.
"""

_ANY = "*"
_PUBLIC = ""
_SEPARATORS = ("/", ".")


class Principal(Protocol):
    """What a decision needs from an account: its scopes (``tokens.Account`` is one)."""

    @property
    def scopes(self) -> Sequence[str]: ...


@attrs.frozen
class Resource:
    """Something that can be called: ``type`` ("service", "topic", "actor"), ``name``, ``endpoint``."""

    type: str
    name: str
    endpoint: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "endpoint": self.endpoint}

    @classmethod
    def from_dict(cls, data: object) -> Resource:
        """Parse a resource map strictly; raises :class:`BadRequest` for anything else."""
        if not isinstance(data, Mapping) or data.keys() != {"type", "name", "endpoint"}:
            raise BadRequest("resource must be a map of exactly type, name, endpoint")
        for key in ("type", "name", "endpoint"):
            _check_string(data[key], f"resource {key}", empty=False)
        return cls(data["type"], data["name"], data["endpoint"])


class Access(enum.Enum):
    """What a rule does to the accounts it applies to."""

    GRANTED = "granted"
    DENIED = "denied"


@attrs.frozen
class Rule:
    """Grant or deny ``scope`` access to ``resource``; the highest ``priority`` rule decides.

    ``scope`` is ``""`` for everyone including callers without credentials, ``"*"`` for any
    account, otherwise a scope an account must hold.
    """

    id: str
    scope: str
    resource: Resource
    access: Access
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "resource": self.resource.to_dict(),
            "access": self.access.value,
            "priority": self.priority,
        }

    @classmethod
    def from_dict(cls, data: object) -> Rule:
        """Parse a rule map strictly (``priority`` may be left out); raises :class:`BadRequest`."""
        if not isinstance(data, Mapping) or not (
            {"id", "scope", "resource", "access"} <= data.keys() <= _RULE_KEYS
        ):
            raise BadRequest("rule must be a map of id, scope, resource, access and optional priority")
        _check_string(data["id"], "rule id", empty=False)
        _check_string(data["scope"], "rule scope", empty=True)
        access = data["access"]
        if not isinstance(access, str) or access not in _ACCESS_VALUES:
            raise BadRequest("rule access must be granted or denied")
        priority = data.get("priority", 0)
        if type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise BadRequest(f"rule priority must be an integer within +-{MAX_PRIORITY}")
        resource = Resource.from_dict(data["resource"])
        return cls(data["id"], data["scope"], resource, Access(access), priority)


_RULE_KEYS = frozenset({"id", "scope", "resource", "access", "priority"})
_ACCESS_VALUES = frozenset(a.value for a in Access)


def _check_string(value: object, what: str, *, empty: bool) -> None:
    low = 0 if empty else 1
    if not isinstance(value, str) or not low <= len(value) <= MAX_RULE_STRING:
        raise BadRequest(f"{what} must be a string of {low}-{MAX_RULE_STRING} characters")


DEFAULT_RULES: Final = (Rule("default", _ANY, Resource(_ANY, _ANY, _ANY), Access.GRANTED, 0),)
"""Go Micro's default: any authenticated account may call anything until an operator adds rules."""


@attrs.frozen
class _Pattern:
    """A name or endpoint pattern, split once so matching is a couple of string comparisons."""

    text: str
    prefix: str | None  # "a/b" for "a/b/*"
    separator: str

    @classmethod
    def compile(cls, text: str) -> _Pattern:
        if len(text) >= 2 and text[-1] == _ANY and text[-2] in _SEPARATORS:
            return cls(text, text[:-2], text[-2])
        return cls(text, None, "")

    def matches(self, value: str) -> bool:
        if self.text == _ANY or self.text == value:
            return True
        if self.prefix is None or self.separator not in value:
            return False
        # Go Micro's expansion of ``value`` split at the separator, without building the list.
        return value == self.prefix or value.startswith(self.prefix + self.separator)


@attrs.frozen
class _Compiled:
    rule: Rule
    name: _Pattern
    endpoint: _Pattern

    def matches(self, resource: Resource) -> bool:
        t = self.rule.resource.type
        return (
            (t == _ANY or t == resource.type)
            and self.name.matches(resource.name)
            and self.endpoint.matches(resource.endpoint)
        )


def _compile(rules: Iterable[Rule]) -> tuple[_Compiled, ...]:
    """Rules sorted by priority, highest first; ``sorted`` is stable, like Go's ``SliceStable``."""
    compiled = (
        _Compiled(r, _Pattern.compile(r.resource.name), _Pattern.compile(r.resource.endpoint)) for r in rules
    )
    return tuple(sorted(compiled, key=lambda c: -c.rule.priority))


class Rules:
    """The rules in force and a bounded cache of their decisions.

    :meth:`verify` raises :class:`Unauthorized` when a caller without credentials is refused
    and :class:`Forbidden` when an account is; the detail is generic on purpose, the caller logs
    who and what. :meth:`replace` swaps the rules at once and forgets every cached decision.
    """

    __slots__ = ("_cache", "_compiled", "_rules", "_version", "cache_size")

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES, *, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must not be negative, got {cache_size}")
        self.cache_size = cache_size
        self._cache: dict[tuple[tuple[str, ...] | None, Resource], bool] = {}
        self._version = 0
        self._rules: tuple[Rule, ...] = ()
        self._compiled: tuple[_Compiled, ...] = ()
        self._install(rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, in the order given."""
        return self._rules

    @property
    def version(self) -> int:
        """Bumped by every :meth:`replace`: lets holders of derived state notice a change."""
        return self._version

    def replace(self, rules: Iterable[Rule]) -> None:
        """Put ``rules`` in force instead of the current ones."""
        self._install(rules)
        self._version += 1

    def _install(self, rules: Iterable[Rule]) -> None:
        self._rules = tuple(rules)
        self._compiled = _compile(self._rules)
        self._cache.clear()

    def allowed(self, account: Principal | None, resource: Resource) -> bool:
        """Whether ``account`` (None: no credentials) may reach ``resource``."""
        key = (None if account is None else tuple(account.scopes), resource)
        decision = self._cache.get(key)
        if decision is None:
            decision = self._decide(key[0], resource)
            if self.cache_size:
                if len(self._cache) >= self.cache_size:
                    del self._cache[next(iter(self._cache))]
                self._cache[key] = decision
        return decision

    def verify(self, account: Principal | None, resource: Resource) -> None:
        """Return if ``account`` may reach ``resource``; raise Unauthorized or Forbidden if not."""
        if self.allowed(account, resource):
            return
        if account is None:
            raise Unauthorized("unauthorized")
        raise Forbidden("forbidden")

    def _decide(self, scopes: tuple[str, ...] | None, resource: Resource) -> bool:
        for c in self._compiled:
            scope = c.rule.scope
            applies = scope == _PUBLIC or (scopes is not None and (scope == _ANY or scope in scopes))
            if applies and c.matches(resource):
                return c.rule.access is Access.GRANTED
        return False

    def __repr__(self) -> str:
        return f"Rules({len(self._rules)} rules, version={self._version})"
