"""Endpoint bodies: structured strictly into the handler's annotation, or a 400 naming the field.

Map-typed handlers (``dict``, ``Mapping``, ``Any``, unannotated) are endpoint-only: any number of
them live in one actor. Properties (hypothesis): a valid body, as JSON would carry it, comes back
as the instance it was made from; a wrong value anywhere is a 400 naming that field's path; no
body whatsoever gets anything but a result or a bounded 400.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import string
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trimicro.actors import Actor, BadRequest, ask, handles, start_node
from trimicro.actors.bodies import MAX_ERROR_CHARS, MAX_ERRORS, MAX_EXPLAINED, body_converter

if TYPE_CHECKING:
    from decimal import Decimal  # only for a return annotation: never evaluated at run time


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@attrs.frozen
class Item:
    sku: str
    qty: int = 1
    size: Size | None = None


@attrs.frozen
class Order:
    customer: str
    items: list[Item]
    placed: dt.datetime
    level: Level = Level.LOW
    note: str | None = None
    price: float = 0.0
    gift: bool = False
    tags: frozenset[str] = frozenset()
    pair: tuple[int, str] = (0, "")
    counts: dict[str, int] = attrs.field(factory=dict)
    kind: Literal["web", "shop"] = "web"
    blob: bytes = b""


@attrs.frozen
class Hello:
    name: str


class Shop(Actor):
    service_name = "Shop"

    async def place(self, order: Order) -> Order:
        return order

    async def hello(self, msg: Hello) -> str:
        return f"hello {msg.name}"

    async def some(self, items: list[Item]) -> int:
        return sum(i.qty for i in items)


class Maps(Actor):
    """Many JSON-style endpoints: none of them is a dispatch-by-type handler."""

    service_name = "Maps"

    def __init__(self) -> None:
        self.unhandled: list[Any] = []

    async def one(self, body: dict) -> str:  # type: ignore[type-arg]
        return "one"

    async def two(self, body: dict) -> str:  # type: ignore[type-arg]
        return "two"

    async def three(self, body: dict[str, Any]) -> str:
        return "three"

    async def four(self, body: Mapping) -> str:  # type: ignore[type-arg]
        return "four"

    async def five(self, body: Mapping[str, Any]) -> str:
        return "five"

    async def six(self, body: Any) -> str:
        return "six"

    async def seven(self, body: Any) -> str:
        return "seven"

    async def eight(self, body):  # type: ignore[no-untyped-def]
        return "eight"

    async def nine(self, body):  # type: ignore[no-untyped-def]
        return "nine"

    async def receive(self, message: Any) -> Any:
        self.unhandled.append(message)
        return "fallback"


# ---- handler tables ------------------------------------------------------------------------------


async def test_an_actor_with_many_handlers_taking_maps_spawns_and_each_is_reached_by_name() -> None:
    async with start_node("n") as node:
        ref = await node.spawn(Maps, name="maps")
        names = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        for name in names:
            assert await ask(ref, {"k": 1}, endpoint=f"Maps.{name}") == name
        # A map sent without an endpoint is no handler's by type: the fallback gets it.
        assert await ask(ref, {"k": 1}) == "fallback"


async def test_a_map_handler_refuses_a_body_that_is_not_a_map() -> None:
    async with start_node("n") as node:
        ref = await node.spawn(Maps, name="maps")
        with pytest.raises(BadRequest) as caught:
            await ask(ref, [1, 2], endpoint="Maps.one")
        assert "expected a map, got list" in caught.value.detail
        assert await ask(ref, [1, 2], endpoint="Maps.six") == "six"  # Any: as it is


# ---- local asks by endpoint -------------------------------------------------------------------------


ORDER = {
    "customer": "Ann",
    "items": [{"sku": "a", "qty": 2, "size": "l"}, {"sku": "b"}],
    "placed": "2024-05-06T07:08:09+00:00",
    "level": 2,
    "note": None,
    "price": 3,
    "tags": ["x", "y"],
    "pair": [1, "one"],
    "counts": {"a": 1},
    "kind": "shop",
}


async def test_a_nested_body_is_structured_into_the_annotated_classes() -> None:
    async with start_node("n") as node:
        ref = await node.spawn(Shop, name="shop")
        order = await ask(ref, ORDER, endpoint="Shop.place")
    assert order == Order(
        customer="Ann",
        items=[Item("a", 2, Size.LARGE), Item("b")],
        placed=dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
        level=Level.HIGH,
        price=3.0,
        tags=frozenset({"x", "y"}),
        pair=(1, "one"),
        counts={"a": 1},
        kind="shop",
    )
    assert isinstance(order.price, float)
    assert type(order.level) is Level  # an IntEnum is an int too: still built as the enum
    assert type(order.items[0].size) is Size


async def test_a_wrong_body_is_a_400_naming_each_wrong_field_by_its_path() -> None:
    async with start_node("n") as node:
        ref = await node.spawn(Shop, name="shop")
        with pytest.raises(BadRequest) as caught:
            await ask(ref, {"name": 5}, endpoint="Shop.hello")
        assert caught.value.code == 400
        assert caught.value.detail == "body does not fit Hello: body.name: expected str, got int"
        bad = {
            **ORDER,
            "items": [{"sku": "a", "qty": "2"}, {"sku": "b", "size": "xl"}],
            "placed": "yesterday",
            "gift": 1,
            "extra": True,
        }
        with pytest.raises(BadRequest) as caught:
            await ask(ref, bad, endpoint="Shop.place")
        detail = caught.value.detail
        assert "body.items[0].qty: expected int, got str" in detail
        assert "body.items[1].size: expected one of 's', 'l' (Size), got 'xl'" in detail
        assert "body.placed: expected an ISO 8601 datetime, got 'yesterday'" in detail
        assert "body.gift: expected bool, got int" in detail
        assert "body: unknown fields extra" in detail
        # The actor carries on (a 400 is the caller's fault, not the actor's).
        assert await ask(ref, {"name": "Bo"}, endpoint="Shop.hello") == "hello Bo"


async def test_a_message_class_nested_in_the_actor_class_is_built_from_a_body() -> None:
    """Under ``from __future__ import annotations`` the annotation is the string ``"Add"``,
    which the module does not know: it resolves in the actor class (and ``Point`` beside it)."""

    class Adder(Actor):
        service_name = "A"

        @attrs.frozen
        class Point:
            x: int

        @attrs.frozen
        class Add:
            p: Adder.Point

        async def add(self, msg: Add) -> Any:
            return msg

    async with start_node("n") as node:
        ref = await node.spawn(Adder, name="a")
        assert await ask(ref, {"p": {"x": 1}}, endpoint="A.add") == Adder.Add(Adder.Point(1))
        with pytest.raises(BadRequest) as caught:
            await ask(ref, {"p": {"x": "zz"}}, endpoint="A.add")
        assert caught.value.detail == "body does not fit Add: body.p.x: expected int, got str"


async def test_a_method_does_not_shadow_the_module_names_an_annotation_uses() -> None:
    """The actor class's names help only where the module's do not resolve: a method named
    ``list`` leaves ``list[Item]`` the builtin's."""

    class Lister(Actor):
        service_name = "L"

        async def list(self, items: list[Item]) -> int:
            return sum(i.qty for i in items)

    async with start_node("n") as node:
        ref = await node.spawn(Lister, name="l")
        assert await ask(ref, [{"sku": "a", "qty": 2}], endpoint="L.list") == 2


async def test_a_class_no_body_can_be_built_into_is_refused_at_spawn_naming_its_field() -> None:
    """Never a raw map where a class was declared: a function-local class whose field names
    another local class (unresolvable under ``from __future__ import annotations``), or a field
    cattrs cannot build, fails the spawn with the class and field named."""

    @attrs.frozen
    class Point:
        x: int

    @attrs.frozen
    class Add:
        p: Point

    @attrs.frozen
    class Job:
        run: Callable[[int], int]

    class ByHandles(Actor):
        service_name = "A"

        @handles(Add)
        async def add(self, msg: Any) -> Any:
            return msg

    class ByAnnotation(Actor):
        service_name = "A"

        async def add(self, msg: Add) -> Any:
            return msg

    class WithCallable(Actor):
        service_name = "J"

        @handles(Job)
        async def run(self, msg: Any) -> Any:
            return msg

    async with start_node("n") as node:
        with pytest.raises(TypeError, match=r"ByHandles\.add: Add\.p: annotation does not resolve"):
            await node.spawn(ByHandles)
        with pytest.raises(TypeError, match=r"ByAnnotation\.add: the annotation of 'msg' does not resolve"):
            await node.spawn(ByAnnotation)
        with pytest.raises(TypeError, match=r"WithCallable\.run: .*Job\.run \(Callable"):
            await node.spawn(WithCallable)


async def test_nested_instances_from_a_local_caller_are_taken_as_they_are() -> None:
    """A local caller may put instances where a remote one sends maps (the type registry
    decodes registered classes to instances too): both give the same argument."""
    async with start_node("n") as node:
        ref = await node.spawn(Shop, name="shop")
        assert await ask(ref, [Item("a", 3), {"sku": "b", "qty": 4}], endpoint="Shop.some") == 7
        as_maps = await ask(ref, ORDER, endpoint="Shop.place")
        mixed = {**ORDER, "items": [Item("a", 2, Size.LARGE), {"sku": "b"}]}
        assert await ask(ref, mixed, endpoint="Shop.place") == as_maps
        with pytest.raises(BadRequest) as caught:
            await ask(ref, "abc", endpoint="Shop.some")  # not iterated into three items
        assert caught.value.detail == "body does not fit list[Item]: body: expected a list, got str"


# ---- properties of the converter ----------------------------------------------------------------------

PLACE = body_converter(Order)
assert PLACE is not None

text = st.text(string.ascii_letters + string.digits + " -_é", max_size=12)
items = st.builds(Item, sku=text, qty=st.integers(-(2**40), 2**40), size=st.none() | st.sampled_from(Size))
orders = st.builds(
    Order,
    customer=text,
    items=st.lists(items, max_size=4),
    placed=st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    level=st.sampled_from(Level),
    note=st.none() | text,
    price=st.floats(allow_nan=False),
    gift=st.booleans(),
    tags=st.frozensets(text, max_size=3),
    pair=st.tuples(st.integers(), text),
    counts=st.dictionaries(text, st.integers(), max_size=3),
    kind=st.sampled_from(["web", "shop"]),
    blob=st.binary(max_size=8),
)


def as_sent(value: Any) -> Any:
    """``value`` as a JSON or msgpack client sends it: maps, lists, scalars, ISO strings."""
    if attrs.has(type(value)):
        return {f.alias: as_sent(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, frozenset):
        return sorted(as_sent(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [as_sent(v) for v in value]
    if isinstance(value, dict):
        return {k: as_sent(v) for k, v in value.items()}
    return value


@given(orders)
def test_a_valid_body_comes_back_as_the_instance_it_was_sent_from(order: Order) -> None:
    assert PLACE(as_sent(order)) == order


#: Values of each kind; a field takes none of those of another kind.
KINDS: dict[str, st.SearchStrategy[Any]] = {
    "str": text,
    "int": st.integers(),
    "bool": st.booleans(),
    "none": st.none(),
    "list": st.lists(st.integers(), max_size=2),
    "map": st.dictionaries(st.sampled_from("xyz"), st.integers(), max_size=2),
}
#: Leaf paths of a sent Order (with one item), the setter of that leaf, and the kinds it takes.
LEAVES: list[tuple[str, Any, set[str]]] = [
    ("body.customer", lambda b, v: b.update(customer=v), {"str"}),
    ("body.items[0].sku", lambda b, v: b["items"][0].update(sku=v), {"str"}),
    ("body.items[0].qty", lambda b, v: b["items"][0].update(qty=v), {"int"}),
    ("body.items[0].size", lambda b, v: b["items"][0].update(size=v), {"none"}),
    ("body.note", lambda b, v: b.update(note=v), {"str", "none"}),
    ("body.price", lambda b, v: b.update(price=v), {"int"}),
    ("body.gift", lambda b, v: b.update(gift=v), {"bool"}),
    ("body.items", lambda b, v: b.update(items=v), {"list"}),
    ("body.counts", lambda b, v: b.update(counts=v), {"map"}),
    ("body.tags", lambda b, v: b.update(tags=v), {"list"}),
]


@given(orders, st.sampled_from(LEAVES), st.data())
def test_a_value_of_the_wrong_kind_anywhere_is_a_400_naming_its_path(
    order: Order, leaf: tuple[str, Any, set[str]], data: st.DataObject
) -> None:
    path, put, takes = leaf
    body = as_sent(attrs.evolve(order, items=[Item("a")]))
    kind = data.draw(st.sampled_from(sorted(set(KINDS) - takes)))
    wrong = data.draw(KINDS[kind])
    if path == "body.items[0].size" and wrong in ("s", "l"):
        return  # the values of the enum: not wrong
    put(body, wrong)
    with pytest.raises(BadRequest) as caught:
        PLACE(body)
    assert f"{path}: " in caught.value.detail or f"{path}[" in caught.value.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text | st.sampled_from(list(ORDER)), inner),
    max_leaves=30,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    json_values
    | st.builds(lambda extra: {**ORDER, **extra}, st.dictionaries(st.sampled_from(list(ORDER)), json_values))
)
def test_any_body_is_an_order_or_a_bounded_400(body: Any) -> None:
    try:
        result = PLACE(body)
    except BadRequest as exc:
        limit = len("body does not fit Order: ") + MAX_ERRORS * (MAX_ERROR_CHARS + 2) + 40
        assert len(exc.detail) <= limit
    else:
        assert isinstance(result, Order)
        json.dumps(attrs.asdict(result), default=str)  # plain values all the way down


class Colour(enum.StrEnum):
    RED = "red"


class Sku(str):
    """A str subclass: built from a str, refused from anything else."""


@pytest.mark.parametrize(
    ("kind", "body", "result"),
    [
        (Colour, "red", Colour.RED),
        (Colour, Colour.RED, Colour.RED),
        (Level, 2, Level.HIGH),
        (Level, True, None),  # True == 1, but not a level
        (Level, "2", None),
        (Colour, 5, None),
        (Sku, "a1", Sku("a1")),
        (Sku, 5, None),
    ],
)
def test_subclasses_of_scalars_are_built_as_themselves(kind: type, body: Any, result: Any) -> None:
    assert_converts(kind, body, result, kind)


def assert_converts(kind: Any, body: Any, result: Any, result_type: type) -> None:
    """``body`` as ``kind`` is ``result`` of type ``result_type``, or a 400 if ``result`` is None."""
    convert = body_converter(kind)
    assert convert is not None
    if result is None:
        with pytest.raises(BadRequest):
            convert(body)
    else:
        assert (convert(body), type(convert(body))) == (result, result_type)


@given(
    st.sampled_from([str, int, float, bool, bytes]),
    st.one_of(*KINDS.values(), st.floats(allow_nan=False), st.binary()),
)
def test_scalars_are_checked_never_coerced(kind: type, value: Any) -> None:
    convert = body_converter(kind)
    assert convert is not None
    integral = type(value) is float and value.is_integer()  # JSON Schema's "integer" takes 1.0
    fits = type(value) is kind or (kind is float and type(value) is int) or (kind is int and integral)
    if fits:
        assert convert(value) == value
        assert type(convert(value)) is kind
    else:
        with pytest.raises(BadRequest):
            convert(value)


@pytest.mark.parametrize(
    ("kind", "body", "result"),
    [
        (int, 3.0, 3),
        (int, -0.0, 0),
        (int, 1e20, 10**20),
        (int | None, 2.0, 2),
        (int | str, 2.0, 2),
        (int | str, "2.0", "2.0"),
        (Level, 2.0, Level.HIGH),
        (int, 1.5, None),
        (int, float("inf"), None),
        (int, float("nan"), None),
        (int, True, None),
        (int | str, True, None),  # a bool is no int in a union either
        (int | str, 2.5, None),
        (int | None, False, None),
        (int | None, Level.HIGH, Level.HIGH),  # an int subclass is an int, in a union too
        (int | str, Colour.RED, Colour.RED),
        (int | bool, True, True),
    ],
)
def test_a_float_with_no_fraction_is_an_int_and_nothing_else_is(kind: Any, body: Any, result: Any) -> None:
    """JSON Schema's "integer" (what the OpenAPI document says an int field takes) admits 1.0,
    and some JSON writers send whole numbers so: such a float becomes the int it equals."""
    assert_converts(kind, body, result, type(result))


convert_lines = body_converter(list[Item])
assert convert_lines is not None


def test_a_large_wrong_body_is_a_400_without_a_detailed_pass() -> None:
    """Naming every wrong value's path keeps an exception per value: a body of many wrong
    values gets the first error's words only, at the cost of one failed pass."""
    small = [{"sku": "a", "qty": "x"}] * 10
    with pytest.raises(BadRequest) as caught:
        convert_lines(small)
    assert caught.value.detail.startswith("body does not fit list[Item]: body[0].qty: expected int, got str;")
    large = [{"sku": "a", "qty": "x"}] * (MAX_EXPLAINED + 1)
    with pytest.raises(BadRequest) as caught:
        convert_lines(large)
    assert caught.value.detail == (
        "body does not fit list[Item]: expected int, got str (somewhere in a large body)"
    )


@attrs.frozen
class Amount:
    cents: int


class Ledger(Actor):
    service_name = "ledger"

    async def total(self, msg: Amount) -> Decimal:  # Decimal exists only for type checkers
        return msg.cents  # type: ignore[return-value]


async def test_a_return_annotation_only_type_checkers_see_does_not_fail_the_spawn() -> None:
    """Only the message parameter's annotation is evaluated: a return type imported under
    ``TYPE_CHECKING`` (common in typed code) used to fail the spawn with a NameError blamed on
    the parameter."""
    async with start_node() as node:
        ref = await node.spawn(Ledger)
        assert await ask(ref, {"cents": 5}, endpoint="ledger.total") == 5
        with pytest.raises(BadRequest):
            await ask(ref, {"cents": "5"}, endpoint="ledger.total")
