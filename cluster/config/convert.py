"""Typed access to config values: :func:`convert` a merged value to an annotation (int, float,
bool, str, list, dict, generics, unions, attrs classes), leniently where a value comes as text
(the environment, flags: ``"8080"``, ``"yes"``, ``"a, b"``), and :func:`structure` an attrs
class from a map. A value that does not fit is a :class:`~trimicro.mailbox.errors.BadRequest`
naming its path."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs

from trimicro.mailbox.errors import BadRequest

__all__ = ["convert", "structure"]

T = TypeVar("T")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def convert(value: Any, hint: Any, path: str) -> Any:
    """``value`` as ``hint`` (int/float/bool/str/list/dict, generics, unions, attrs classes)."""
    if hint is None or hint is Any or hint is object:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, path)
            except BadRequest:
                continue
        raise BadRequest(f"config {path}: {value!r} does not fit {hint}")
    if origin in (list, Sequence):
        (item,) = typing.get_args(hint) or (Any,)
        return [convert(v, item, f"{path}[{i}]") for i, v in enumerate(convert(value, list, path))]
    if origin in (dict, Mapping):
        _, item = typing.get_args(hint) or (str, Any)
        return {k: convert(v, item, f"{path}.{k}") for k, v in convert(value, dict, path).items()}
    if isinstance(hint, type) and attrs.has(hint):
        return structure(value, hint, path)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
    elif hint is list:
        if isinstance(value, list | tuple):
            return list(value)
        if isinstance(value, str):  # from the environment or a flag: "a, b, c"
            return [s.strip() for s in value.split(",") if s.strip()]
    elif hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:
        raise BadRequest(f"config {path}: cannot convert to {getattr(hint, '__name__', hint)}")
    shown = "a map" if isinstance(value, Mapping) else "a list" if isinstance(value, list) else repr(value)
    raise BadRequest(f"config {path}: {shown} is not a valid {hint.__name__}")


def structure(value: Any, cls: type[T], path: str) -> T:
    """Build attrs class ``cls`` from a map: fields by annotation, attrs defaults, extras ignored."""
    if not isinstance(value, Mapping):
        raise BadRequest(f"config {path}: expected a map for {cls.__name__}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # an annotation that does not resolve is the class's bug: say so
        raise BadRequest(f"config {path}: cannot read the fields of {cls.__name__}: {exc}") from None
    kwargs: dict[str, Any] = {}
    fields: Any = attrs.fields(typing.cast(Any, cls))
    for field in fields:
        if not field.init:
            continue
        if field.name in value:
            kwargs[field.alias] = convert(value[field.name], hints.get(field.name), f"{path}.{field.name}")
        elif field.default is attrs.NOTHING:
            raise BadRequest(f"config {path}.{field.name}: missing, and {cls.__name__} has no default")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # attrs validators
        raise BadRequest(f"config {path}: does not fit {cls.__name__}: {exc}") from None
