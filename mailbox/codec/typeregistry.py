"""String tags for message classes, so typed messages survive every codec.

A codec can carry maps, lists and scalars; it cannot know that a map was a ``Greet`` message. A
:class:`TypeRegistry` names each registered attrs class by a string tag, turns an instance into
``(tag, fields)`` for the wire and builds it back through the class's ``__init__`` (so attrs
validators and converters run on decoded data too). Registries are values that callers own: no
module-level mutable state, so two nodes in one process, or two tests, never share registrations.

:class:`~trimicro.mailbox.refs.ActorRef` (tag ``"$ref"``) and every
:class:`~trimicro.mailbox.errors.MicroError` (tag ``"$err"``) are known to every registry. Tags
starting with ``$`` are reserved for such built-ins.

A registry is strict: a tag it does not know fails the decode. A node that forwards values it
never handles itself (the HTTP gateway, which serves every service in any language) opts in to
``unknown_as_maps``: a value with an unknown tag then decodes as the plain map of its fields,
by name, as the wire carries them. Built-in tags stay strict either way.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs

from trimicro.mailbox.errors import (
    BadRequest,
    InternalServerError,
    MicroError,
    error_from_fields,
)
from trimicro.mailbox.refs import ActorRef, ref_binder

__all__ = [
    "ERROR_TAG",
    "REF_TAG",
    "DecodeError",
    "EncodeError",
    "TypeRegistry",
    "default_registry",
]

T = TypeVar("T")

#: Wire tag of :class:`ActorRef`.
REF_TAG = "$ref"
#: Wire tag of :class:`MicroError` and its subclasses.
ERROR_TAG = "$err"

_ERROR_FIELDS = {"id": str, "code": int, "detail": str, "status": str}


class DecodeError(BadRequest):
    """400: bytes that no codec should accept (malformed, over a limit, unknown type, bad fields).

    Carries Go Micro's fields, so a node can answer a bad request with it unchanged.
    """


class EncodeError(InternalServerError):
    """500: a value this side tried to send has no wire form (unregistered type, cycle, range).

    Like Go Micro's client and server, a failure to marshal is the sender's own fault, hence 500.
    """


def _error_from_wire(fields: Any) -> MicroError:
    if not isinstance(fields, dict):
        raise DecodeError(f"an error is a map of id/code/detail/status, not {type(fields).__name__}")
    for key, value in fields.items():
        want = _ERROR_FIELDS.get(key)
        if want is None:
            raise DecodeError(f"an error has no field {key!r:.80}")
        if type(value) is not want:
            raise DecodeError(f"error field {key!r} must be {want.__name__}, not {type(value).__name__}")
    return error_from_fields(fields)


def _ref_from_wire(fields: Any) -> ActorRef:
    if not isinstance(fields, list | tuple) or len(fields) != 3:
        raise DecodeError("an actor ref is [node: str, path: str, uid: int]")
    try:
        ref = ActorRef.from_fields(fields)
    except ValueError as exc:
        raise DecodeError(str(exc)[:300]) from None
    binder = ref_binder.get()
    return ref if binder is None else binder(ref)


def _error_to_wire(err: Any) -> Any:
    return err.to_fields()


def _ref_to_wire(ref: Any) -> Any:
    return ref.to_fields()


class TypeRegistry:
    """Maps attrs classes to string tags and back; one per node (or per test).

    Field maps use each attribute's ``__init__`` name (its attrs ``alias``, so ``_x`` travels as
    ``x``); attributes with ``init=False`` are not sent, ``__init__`` recomputes them.
    :meth:`to_wire` is shallow: field values are left as they are and the codec encodes them,
    calling back here for nested registered values. Likewise :meth:`from_wire` expects field
    values the codec already decoded.
    """

    __slots__ = ("_by_tag", "_by_type", "unknown_as_maps")

    def __init__(self, *, unknown_as_maps: bool = False) -> None:
        #: Decode a value whose tag is not registered as the map of its fields (see the module).
        self.unknown_as_maps = unknown_as_maps
        # type -> (tag, fields-of); tag -> build-from-fields. Both only grow, and a tag never
        # changes owner, so codecs may cache what they look up.
        self._by_type: dict[type, tuple[str, Callable[[Any], Any]]] = {ActorRef: (REF_TAG, _ref_to_wire)}
        self._by_tag: dict[str, Callable[[Any], Any]] = {
            REF_TAG: _ref_from_wire,
            ERROR_TAG: _error_from_wire,
        }

    def register(self, cls: type[T], tag: str | None = None) -> type[T]:
        """Give attrs class ``cls`` the wire tag ``tag`` (default: its ``__qualname__``).

        ``TypeError`` if ``cls`` is not an attrs class; ``ValueError`` if the tag is reserved or
        taken by another class, or ``cls`` already has another tag. Registering the same pair
        twice is harmless. Returns ``cls``, so it also works as a plain decorator.
        """
        if not _is_attrs_class(cls):
            raise TypeError(f"only attrs classes can be registered, not {cls!r}")
        if cls is ActorRef or issubclass(cls, MicroError):
            raise ValueError(f"{cls.__qualname__} is built in")
        if tag is None:
            tag = cls.__qualname__
        if not isinstance(tag, str) or not tag:
            raise ValueError(f"a type tag is a non-empty string, not {tag!r}")
        if tag.startswith("$"):
            raise ValueError(f"type tags starting with '$' are reserved, not {tag!r}")
        known = self._by_type.get(cls)
        if known is not None:
            if known[0] == tag:
                return cls
            raise ValueError(f"{cls.__qualname__} is already registered as {known[0]!r}")
        if tag in self._by_tag:
            raise ValueError(f"type tag {tag!r} is already taken")
        self._by_type[cls] = (tag, _fields_getter(cls))
        self._by_tag[tag] = _builder(cls, tag)
        return cls

    def message(self, tag: str | None = None) -> Callable[[type[T]], type[T]]:
        """Decorator form of :meth:`register`: ``@registry.message("greet")``."""

        def decorate(cls: type[T]) -> type[T]:
            return self.register(cls, tag)

        return decorate

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` (a tag or a class) is known here."""
        if isinstance(item, str):
            return item in self._by_tag
        return isinstance(item, type) and (item in self._by_type or issubclass(item, MicroError))

    def decodes(self, tag: str) -> bool:
        """Whether :meth:`from_wire` takes values tagged ``tag``: a registered tag, or any tag
        under ``unknown_as_maps``."""
        return tag in self._by_tag or (self.unknown_as_maps and not tag.startswith("$"))

    def to_wire(self, obj: Any) -> tuple[str, Any]:
        """``(tag, fields)`` for a registered value; :class:`EncodeError` for anything else."""
        entry = self._by_type.get(type(obj))
        if entry is None:
            entry = self._slow_entry(obj)
        return entry[0], entry[1](obj)

    def _slow_entry(self, obj: Any) -> tuple[str, Callable[[Any], Any]]:
        cls = type(obj)
        if isinstance(obj, MicroError):
            entry = (ERROR_TAG, _error_to_wire)
            self._by_type[cls] = entry  # bounded by the number of error classes
            return entry
        if attrs.has(cls):
            raise EncodeError(f"attrs class {cls.__qualname__} is not registered with this registry")
        raise EncodeError(f"values of type {cls.__qualname__} have no wire form")

    def from_wire(self, tag: str, fields: Any) -> Any:
        """Build the value tagged ``tag``; :class:`DecodeError` for unknown tags or bad fields.

        Under ``unknown_as_maps`` an unknown (non-built-in) tag gives its fields map itself.
        """
        build = self._by_tag.get(tag) if isinstance(tag, str) else None
        if build is None:
            if self.unknown_as_maps and isinstance(tag, str) and not tag.startswith("$"):
                if not isinstance(fields, dict):
                    raise DecodeError(f"{tag!r:.200} needs a map of fields, not {type(fields).__name__}")
                return fields
            raise DecodeError(f"unknown type tag {tag!r:.200}")
        return build(fields)


def _is_attrs_class(obj: object) -> bool:
    # A plain bool: ``attrs.has`` is a TypeGuard, which would narrow ``type[T]`` away.
    return isinstance(obj, type) and attrs.has(obj)


def _fields_getter(cls: type) -> Callable[[Any], dict[str, Any]]:
    sent = [a for a in attrs.fields(cls) if a.init]
    aliases = tuple(a.alias for a in sent)
    if not sent:
        return lambda obj: {}
    if len(sent) == 1:
        (alias,) = aliases
        get_one = operator.attrgetter(sent[0].name)
        return lambda obj: {alias: get_one(obj)}
    get_all = operator.attrgetter(*(a.name for a in sent))
    return lambda obj: dict(zip(aliases, get_all(obj), strict=True))


def _builder(cls: type, tag: str) -> Callable[[Any], Any]:
    sent = [a for a in attrs.fields(cls) if a.init]
    names = frozenset(a.alias for a in sent)
    required = frozenset(a.alias for a in sent if a.default is attrs.NOTHING)

    def build(fields: Any) -> Any:
        if not isinstance(fields, dict):
            raise DecodeError(f"{tag!r} needs a map of fields, not {type(fields).__name__}")
        try:
            return cls(**fields)
        except Exception as exc:
            raise DecodeError(_explain(tag, fields, names, required, exc)) from None

    return build


def _explain(
    tag: str,
    fields: dict[Any, Any],
    names: frozenset[str],
    required: frozenset[str],
    exc: Exception,
) -> str:
    # The input is untrusted: name at most a few offending keys, each shortened.
    unknown = sorted(repr(k)[:80] for k in itertools.islice(_unknown(fields, names), 8))
    missing = sorted(required.difference(fields))
    parts = []
    if unknown:
        parts.append(f"unknown fields {', '.join(unknown)}")
    if missing:
        parts.append(f"missing fields {', '.join(missing)}")
    if not parts:
        parts.append(f"fields refused by __init__: {type(exc).__name__}: {exc}"[:500])
    return f"{tag!r:.200}: {'; '.join(parts)}"


def _unknown(fields: dict[Any, Any], names: frozenset[str]) -> Iterator[Any]:
    return (k for k in fields if k not in names)


def default_registry(*, unknown_as_maps: bool = False) -> TypeRegistry:
    """A new registry that knows only the built-ins (``ActorRef``, ``MicroError``)."""
    return TypeRegistry(unknown_as_maps=unknown_as_maps)
