"""Endpoint bodies into the types their handlers declare: strict structuring with cattrs.

A request by endpoint name (``ask(ref, {"name": "Ann"}, endpoint="Greeter.hello")``, a call from
another node, the CLI, another language) carries a plain body: maps, lists and scalars from
JSON, msgpack or CBOR, or the Python values a local caller passed. Before the handler runs, the
body is structured into the handler's parameter annotation: attrs classes (nested too, by their
``__init__``, so validators and attrs converters run), lists, tuples, sets, maps, optionals,
unions of scalars, enums, literals, datetimes. A body that does not fit is a 400
:class:`BadRequest` whose detail names each wrong field by its path
(``body.items[1].qty: expected int, got str``); the handler never runs.

Strict, not coercing: cattrs' own hooks call the type on the value (``str(5) == "5"``,
``list("abc")``), which would let a wrong client pass unnoticed and hand the handler values
nobody sent. Here a scalar must already have its type (an int is accepted for a float, as JSON
has one number type, and a float with no fraction for an int, as JSON Schema's "integer"
admits ``1.0``; an ISO 8601 string is accepted for a datetime, date or time, as JSON has
none), a list field takes a list or tuple, a map field a map, a class field a map or an
instance of the class (a local caller's, or one the type registry decoded). A map with a key
its class has no field for is refused, as the class's ``__init__`` would. A type cattrs knows
nothing about must be an instance already.

Cost: cattrs generates one structuring function per type (Python source compiled once, cached
in the converter per class, reused by every handler taking that class); a handler's converter
is built once, with its class's handler table. The fast converter stops at the first wrong
field; only once a body has failed does the detailed converter (which collects every error
with its path, and is slower) run on it, to word the 400. The converters hold no
per-node state: a cache of generated functions by type, the same for every node.
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import datetime as dt
import enum
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_any_set,
    is_mapping,
    is_mutable_sequence,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.disambiguators import create_default_dis_func, is_supported_union
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    StructureHandlerNotFoundError,
)
from cattrs.gen import make_dict_structure_fn
from cattrs.strategies import configure_union_passthrough

from trimicro.mailbox.errors import BadRequest, MicroError
from trimicro.mailbox.logs import get_logger

from .scalars import (
    MAX_ERROR_CHARS,
    Hook,
    Mismatch,
    _bool,
    _bytes,
    _enum,
    _expected,
    _float,
    _int,
    _iso,
    _kind,
    _short,
    _str,
)

__all__ = ["MAX_ERROR_CHARS", "BodyConverter", "body_converter", "is_map_annotation"]

log = get_logger(__package__)

#: A body (as it came) -> the handler's argument; raises :class:`BadRequest` if it does not fit.
BodyConverter = Callable[[Any], Any]

#: Errors quoted in one 400 detail (characters per quoted error: :data:`.scalars.MAX_ERROR_CHARS`):
#: a body with thousands of wrong items must not make an answer of that size.
MAX_ERRORS = 5
#: Values (map entries and list items, all levels) of the largest body whose 400 names the
#: wrong fields' paths (see :func:`_explain`).
MAX_EXPLAINED = 10_000

#: Annotations that mean "any map": the body is passed as it is (a map is all that is checked).
_MAP_TYPES = (dict, abc.Mapping, abc.MutableMapping)


# ---- containers and classes: cattrs' hooks, behind a check of the container's own type -------


def _sequence_factory(t: Any, converter: cattrs.Converter) -> Hook:
    base = (list_structure_factory if is_mutable_sequence(t) else homogenous_tuple_structure_factory)(
        t, converter
    )

    def structure(value: Any, t: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return base(value, t)
        raise _expected("a list", value)

    return structure


def _set_factory(t: Any, converter: cattrs.Converter) -> Hook:
    args = typing.get_args(t)
    as_list = list[args[0]] if args else list  # type: ignore[valid-type]
    items = converter.get_structure_hook(as_list)
    make = frozenset if typing.get_origin(t) in (frozenset, abc.Set) or t in (frozenset, abc.Set) else set

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, (list, tuple, set, frozenset)):
            return make(items(list(value), as_list))
        raise _expected("a list", value)

    return structure


def _is_hetero_tuple(t: Any) -> bool:
    args = typing.get_args(t)
    return typing.get_origin(t) is tuple and bool(args) and args[-1] is not Ellipsis


def _hetero_tuple_factory(t: Any, converter: cattrs.Converter) -> Hook:
    args = typing.get_args(t)
    if args == ((),):  # tuple[()]
        args = ()
    hooks = [converter.get_structure_hook(a) for a in args]

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _expected(f"a list of {len(args)}", value)
        if len(value) != len(args):
            raise Mismatch(f"expected {len(args)} items, got {len(value)}")
        return tuple(h(v, a) for h, v, a in zip(hooks, value, args, strict=True))

    return structure


def _mapping_factory(t: Any, converter: cattrs.Converter) -> Hook:
    base = mapping_structure_factory(t, converter)

    def structure(value: Any, t: Any) -> Any:
        if isinstance(value, Mapping):
            return base(value, t)
        raise _expected("a map", value)

    return structure


def _is_class(t: Any) -> bool:
    return attrs.has(t) or dataclasses.is_dataclass(t)


def _init_keys(cls: type) -> frozenset[str]:
    """The map keys a class takes: its ``__init__`` argument names (attrs aliases)."""
    if attrs.has(cls):
        return frozenset(a.alias for a in attrs.fields(cls) if a.init)
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def _class_factory(t: Any, converter: cattrs.Converter) -> Hook:
    base = make_dict_structure_fn(t, converter)
    cls = typing.get_origin(t) or t
    what = f"a map for {cls.__name__}"
    # The fast converter checks unknown keys here, with one C-level subset test, rather than
    # in cattrs' generated code (a set built per map); the detailed one lets cattrs report them
    # beside the other errors of the same map.
    keys = None if converter.detailed_validation else _init_keys(cls)

    def structure(value: Any, t: Any) -> Any:
        if type(value) is not dict:  # the usual body is a dict: no instance or ABC checks
            if isinstance(value, cls):
                return value
            if not isinstance(value, Mapping):
                raise _expected(what, value)
        if keys is None or value.keys() <= keys:
            return base(value, t)
        raise ForbiddenExtraKeysError("", cls, set(value.keys()) - keys)

    return structure


#: What a union of scalars the union passthrough validates may hold.
_SCALARS = frozenset({str, bytes, int, bool, type(None)})


def _is_int_union(t: Any) -> bool:
    """``int | str`` and the like: scalars with an int and no float (which takes 1.0 already)."""
    args = typing.get_args(t)
    return (
        typing.get_origin(t) in (typing.Union, types.UnionType)
        and int in args
        and float not in args
        and set(args) <= _SCALARS
    )


def _int_union_factory(t: Any) -> Hook:
    """A union of scalars with an int: the value's class must be one of them (a bool is not
    an int here, as it is not for an int field), or the value a float with no fraction."""
    members = frozenset(typing.get_args(t))
    name = _type_name(t)

    takes_bool = bool in members
    bases = tuple(m for m in members if m is not bool and m is not type(None))

    def structure(value: Any, _: Any) -> Any:
        if value.__class__ in members:
            return value
        # A subclass of a member (an IntEnum, a StrEnum) is one, as for a plain int field; a
        # bool only where the union names bool.
        if isinstance(value, bases) and (takes_bool or not isinstance(value, bool)):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _expected(name, value)

    return structure


def _is_class_union(t: Any) -> bool:
    return is_supported_union(t) and sum(m is not type(None) for m in typing.get_args(t)) > 1


def _class_union_factory(t: Any, converter: cattrs.Converter) -> Hook:
    """``A | B`` (``| None``) of classes: an instance of one passes; a map goes to the class
    cattrs' disambiguation picks (by the fields only one of them has)."""
    members = [m for m in typing.get_args(t) if m is not type(None)]
    classes = tuple(typing.get_origin(m) or m for m in members)
    takes_none = len(members) < len(typing.get_args(t))
    pick = create_default_dis_func(converter, *members)
    hooks = {cls: converter.get_structure_hook(m) for cls, m in zip(classes, members, strict=True)}
    what = "a map for " + " or ".join(c.__name__ for c in classes)

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, classes) or (value is None and takes_none):
            return value
        if not isinstance(value, Mapping):
            raise _expected(what, value)
        cls = pick(value)
        if cls is None:
            raise Mismatch(f"expected {what}, got a map that fits none of them")
        return hooks[typing.get_origin(cls) or cls](value, cls)

    return structure


def _fallback_factory(t: Any) -> Hook:
    """A type cattrs has no hook for: the value must be an instance of it already."""
    if not isinstance(t, type):
        raise StructureHandlerNotFoundError(f"no way to structure {t!r}", t)
    name = t.__name__

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, t):
            return value
        raise _expected(name, value)

    return structure


def _converter(detailed: bool) -> cattrs.Converter:
    converter = cattrs.Converter(
        # An unknown key is a mistake, as it is for the class's __init__ (the fast converter
        # checks keys in _class_factory, before the generated code).
        forbid_extra_keys=detailed,
        prefer_attrib_converters=True,  # a field with an attrs converter gets the value as sent
        detailed_validation=detailed,
        use_alias=True,  # map keys are __init__'s argument names (``_x`` is sent as ``x``)
        structure_fallback_factory=_fallback_factory,
    )
    for t, hook in (
        (str, _str),
        (int, _int),
        (float, _float),
        (bool, _bool),
        (bytes, _bytes),
        (dt.datetime, _iso(dt.datetime)),
        (dt.date, _iso(dt.date)),
        (dt.time, _iso(dt.time)),
    ):
        converter.register_structure_hook(t, hook)
    converter.register_structure_hook(enum.Enum, _enum)
    # Registered later wins: these take over from cattrs' own (lenient) hooks.
    converter.register_structure_hook_factory(is_sequence, _sequence_factory)
    converter.register_structure_hook_factory(is_any_set, _set_factory)
    converter.register_structure_hook_factory(_is_hetero_tuple, _hetero_tuple_factory)
    converter.register_structure_hook_factory(is_mapping, _mapping_factory)
    converter.register_structure_hook_factory(_is_class, _class_factory)
    converter.register_structure_hook_factory(_is_class_union, _class_union_factory)
    # ``int | str`` and the like: the value must be of one of them (exactly).
    configure_union_passthrough(str | bytes | int | float | bool | None, converter)
    converter.register_structure_hook_factory(_is_int_union, _int_union_factory)
    return converter


_FAST = _converter(detailed=False)
#: Built on first use: only a body that failed the fast converter is structured again by it.
_detailed: cattrs.Converter | None = None


def _format(exc: BaseException, _type: Any) -> str:
    """One wrong field, in words (cattrs' ``transform_error`` adds where)."""
    if isinstance(exc, Mismatch):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown fields " + ", ".join(sorted(map(str, exc.extra_fields)))
    if isinstance(exc, AttributeError) and str(exc).endswith("has no attribute 'items'"):
        return "expected a map"
    return str(exc) or type(exc).__name__  # a validator's or attrs converter's own words


def _values_within(body: Any, budget: int) -> bool:
    """Whether ``body`` holds at most ``budget`` values (maps and lists counted through)."""
    pending = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, Mapping):
            budget -= len(value)
            pending.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            budget -= len(value)
            pending.extend(value)
        if budget < 0:
            return False
    return True


def _explain(body: Any, t: Any, first: Exception) -> str:
    """The 400 detail for ``body`` that did not fit ``t``: every wrong field, by path.

    The detailed converter keeps an exception per wrong value: a body of a million wrong
    items (a few MiB on the wire) would cost gigabytes, so a body over :data:`MAX_EXPLAINED`
    values gets the first error's words without its path.
    """
    global _detailed
    if not _values_within(body, MAX_EXPLAINED):
        return f"body does not fit {_type_name(t)}: {_short(_format(first, t))} (somewhere in a large body)"
    if _detailed is None:
        _detailed = _converter(detailed=True)
    try:
        _detailed.structure(body, t)
    except (ClassValidationError, IterableValidationError) as exc:
        errors = cattrs.transform_error(exc, path="body", format_exception=_format)
    except Exception as exc:
        errors = [f"{_format(exc, t)} @ body"]
    else:  # passed the second time (a validator that is not a function of its input)
        errors = [f"{_format(first, t)} @ body"]
    lines = []
    for error in errors[:MAX_ERRORS]:
        text, _, where = error.rpartition(" @ ")
        lines.append(_short(f"{where}: {text}" if text else where))
    more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
    return f"body does not fit {_type_name(t)}: " + "; ".join(lines) + more


def _type_name(t: Any) -> str:
    """``Order``, ``list[Item]``, ``Item | None``: names without their modules."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is None or not args:
        return "..." if t is Ellipsis else getattr(t, "__name__", None) or repr(t)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    return f"{_type_name(origin)}[{', '.join(map(_type_name, args))}]"


def is_map_annotation(hint: Any) -> bool:
    """``dict``, ``Mapping``, ``dict[str, Any]``...: a map of anything, taken as it is."""
    origin = typing.get_origin(hint) or hint
    if origin not in _MAP_TYPES:
        return False
    args = typing.get_args(hint)
    return not args or args[1] in (Any, object)


def _map_only(body: Any) -> Any:
    if type(body) is dict or isinstance(body, Mapping):
        return body
    raise BadRequest(f"body does not fit a map: expected a map, got {_kind(body)}")


def _classes_in(t: Any) -> list[type]:
    """The attrs classes and dataclasses ``t`` names: itself, or inside ``list[...]``, unions..."""
    found: list[type] = []
    pending = [t]
    while pending:
        t = pending.pop()
        if isinstance(t, type) and _is_class(t):
            found.append(t)
        pending.extend(typing.get_args(t))
    return found


def _field_types(cls: type) -> list[tuple[str, Any]]:
    fields = attrs.fields(cls) if attrs.has(cls) else dataclasses.fields(cls)
    return [(f.name, f.type) for f in fields]


def _resolve(hint: Any, namespace: Mapping[str, Any] | None) -> None:
    """Resolve the string annotations (``from __future__ import annotations``) of every class
    ``hint`` reaches, in the class's module and then ``namespace`` (the actor class's own names),
    so cattrs finds real types; raise :class:`TypeError` naming the field that does not resolve.

    cattrs would resolve them too, but in the class's module only, and its failure would leave
    the handler without a converter (see :func:`body_converter`).
    """
    seen: set[type] = set()
    pending = _classes_in(hint)
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        localns = dict(namespace or {})
        localns.setdefault(cls.__name__, cls)
        try:
            if any(isinstance(t, str) for _, t in _field_types(cls)):
                try:  # the module's names first, as cattrs would
                    _resolve_class(cls, None)
                except NameError:
                    _resolve_class(cls, localns)
        except Exception as exc:
            bad = next(
                (n for n, t in _field_types(cls) if isinstance(t, str) and _unresolvable(t, cls, localns)),
                None,
            )
            where = f"{cls.__name__}.{bad}" if bad else cls.__name__
            raise TypeError(f"{where}: annotation does not resolve ({exc})") from None
        for _, t in _field_types(cls):
            pending.extend(_classes_in(t))


def _resolve_class(cls: type, localns: dict[str, Any] | None) -> None:
    if attrs.has(cls):
        attrs.resolve_types(cls, localns=localns)
        return
    hints = typing.get_type_hints(cls, localns=localns)
    for f in dataclasses.fields(cls):
        f.type = hints.get(f.name, f.type)


def _unresolvable(annotation: str, cls: type, localns: Mapping[str, Any]) -> bool:
    module = sys.modules.get(cls.__module__)
    try:
        typing.get_type_hints(
            types.SimpleNamespace(__annotations__={"x": annotation}),
            globalns=vars(module) if module else {},
            localns=dict(localns),
        )
    except Exception:
        return True
    return False


def _unbuildable(hint: Any) -> str:
    """Which field of which class makes ``hint`` unbuildable (for the error at spawn)."""
    for cls in _classes_in(hint):
        for name, t in _field_types(cls):
            try:
                _FAST.get_structure_hook(t)
            except Exception as exc:
                return f"{cls.__name__}.{name} ({_type_name(t)}): {exc}"
    return _type_name(hint)


def body_converter(hint: Any, namespace: Mapping[str, Any] | None = None) -> BodyConverter | None:
    """How an endpoint's body becomes the argument of a handler annotated ``hint``; ``None``:
    the body as it is (no annotation, ``Any``, ``object``).

    A map annotation (``dict``, ``Mapping``, ``dict[str, Any]``) only checks that the body is a
    map and passes it on uncopied: JSON-style endpoints take maps as they came.

    Never a silent fallback for a class: the string annotations of attrs classes and dataclasses
    are resolved in their module and ``namespace`` (names the actor class sees); a class that
    still cannot be built (a name that does not resolve, as in a function-local class under
    ``from __future__ import annotations``; a field cattrs cannot build, like a ``Callable``)
    is a :class:`TypeError` here, when the handler table is built (at spawn), naming the class
    and field. Passing such a body on as it is would hand the handler a raw map where it
    declared a class, unchecked; ``cls(**body)`` would check the top level only. Any other type
    cattrs cannot build (``Callable``, a protocol) takes the body as it is, with a warning.
    """
    if hint is None or hint is Any or hint is object:
        return None
    if is_map_annotation(hint):
        return _map_only
    _resolve(hint, namespace)
    try:
        hook = _FAST.get_structure_hook(hint)
    except Exception as exc:  # StructureHandlerNotFoundError, or a class cattrs cannot generate for
        if _classes_in(hint):
            raise TypeError(f"a body cannot be built into {_type_name(hint)}: {_unbuildable(hint)}") from None
        log.warning("bodies: %s cannot be built from a body (%s): passed as it is", _type_name(hint), exc)
        return None
    cls = hint if isinstance(hint, type) else None

    def convert(body: Any) -> Any:
        if cls is not None and type(body) is cls:  # already the type (a local or registered caller)
            return body
        try:
            return hook(body, hint)
        except MicroError:  # a validator's own typed error stands
            raise
        except Exception as exc:
            raise BadRequest(_explain(body, hint, exc)) from None

    return convert
