"""Scalars in a request body: checked, never converted (but int <-> float when the value is
exact, an ISO 8601 string -> a date or time), and enum members by value.

Split from :mod:`trimicro.actors.bodies` (which builds the converter around these hooks) to keep
each module readable in one sitting; the behaviour is documented there.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_ERROR_CHARS", "Hook", "Mismatch"]

#: Characters per quoted error: a body with thousands of wrong items must not make an answer
#: of that size.
MAX_ERROR_CHARS = 200

Hook = Callable[[Any, Any], Any]


class Mismatch(TypeError):
    """A value of the wrong type; its message is what the 400 says about that field."""


def _kind(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _expected(what: str, value: Any) -> Mismatch:
    return Mismatch(f"expected {what}, got {_kind(value)}")


# ---- scalars: checked, never converted (but int <-> float, ISO string -> datetime) -----------
#
# cattrs finds these by ``functools.singledispatch``, which also hands them every subclass (an
# IntEnum is an int, a StrEnum a str): ``t`` says which, and a subclass is built from the value.


def _subclass(value: Any, t: Any, base: type) -> Any:
    """``value`` (already checked against ``base``) as ``t``, a subclass of ``base``."""
    if isinstance(value, t):
        return value
    if issubclass(t, enum.Enum):
        return _enum(value, t)
    return t(value)


def _str(value: Any, t: Any) -> Any:
    if isinstance(value, str):
        return value if t is str else _subclass(value, t, str)
    if t is not str and issubclass(t, enum.Enum):
        return _enum(value, t)
    raise _expected("str", value)


def _int(value: Any, t: Any) -> Any:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return value if t is int else _subclass(value, t, int)
    if isinstance(value, float) and value.is_integer():
        # JSON Schema's "integer" (the OpenAPI document's word for an int) admits 1.0, and
        # JSON writers such as JavaScript's may send an int so: only an exact one, never 1.5.
        return _int(int(value), t)
    if t is not int and issubclass(t, enum.Enum):
        return _enum(value, t)
    raise _expected("int", value)


def _float(value: Any, t: Any) -> Any:
    if type(value) is float:
        return value if t is float else _subclass(value, t, float)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if t is float else _subclass(value, t, float)
    if t is not float and issubclass(t, enum.Enum):
        return _enum(value, t)
    raise _expected("float", value)


def _bool(value: Any, _: Any) -> bool:
    if value is True or value is False:
        return value
    raise _expected("bool", value)


def _bytes(value: Any, t: Any) -> Any:
    if isinstance(value, bytes):
        return value if t is bytes else _subclass(value, t, bytes)
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value) if t is bytes else _subclass(bytes(value), t, bytes)
    raise _expected("bytes", value)


@functools.cache
def _takes_bool(t: type[enum.Enum]) -> bool:
    return any(isinstance(m.value, bool) for m in t)


def _enum(value: Any, t: type[enum.Enum]) -> Any:
    """A member of enum ``t``: a member, or a member's value (a bool only if a value is one:
    ``True == 1`` would otherwise pick the member of value 1)."""
    if isinstance(value, t):
        return value
    if not isinstance(value, bool) or _takes_bool(t):
        try:
            return t(value)
        except (ValueError, TypeError):
            pass
    members = list(t)
    values = ", ".join(repr(m.value) for m in members[:10]) + (", ..." if len(members) > 10 else "")
    raise Mismatch(f"expected one of {values} ({t.__name__}), got {_short(repr(value), 40)}")


def _iso(kind: type[Any]) -> Hook:
    """A hook for ``datetime``, ``date`` or ``time``: an instance, or an ISO 8601 string."""
    name = kind.__name__

    def structure(value: Any, _: Any) -> Any:
        # A datetime is a date too; a date field takes a date, not a datetime cut short.
        if type(value) is kind or (isinstance(value, kind) and kind is not dt.date):
            return value
        if isinstance(value, str):
            try:
                return kind.fromisoformat(value)
            except ValueError:
                raise Mismatch(f"expected an ISO 8601 {name}, got {value[:40]!r}") from None
        raise _expected(f"{name} (an ISO 8601 string)", value)

    return structure


def _short(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
