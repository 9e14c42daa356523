"""attrs validators in the JSON Schemas of the OpenAPI document (cluster/introspect.py): each one
JSON Schema can state becomes its keyword, and the schema admits exactly what the class admits
(checked value by value with hypothesis against jsonschema), never less."""

from __future__ import annotations

import enum
import re
from typing import Any

import attrs
import jsonschema
from attrs import validators as v
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from trimicro.actors import Actor
from trimicro.cluster.gateway.openapi import document
from trimicro.cluster.introspect import endpoint_schemas, json_schema
from trimicro.cluster.registry import Endpoint, NodeInfo, Service


class Size(enum.Enum):
    S = "s"
    M = "m"


@attrs.frozen
class Item:
    qty: int = attrs.field(validator=v.gt(0))
    price: float = attrs.field(validator=[v.ge(0), v.lt(1000)])
    name: str = attrs.field(validator=v.and_(v.min_len(1), v.max_len(8), v.matches_re(r"[a-z]+")))
    tags: list[str] = attrs.field(factory=list, validator=v.deep_iterable(v.min_len(2), v.max_len(3)))
    note: str | None = attrs.field(default=None, validator=v.optional(v.in_(["gift", "rush"])))
    size: int = attrs.field(default=1, validator=v.in_(range(1, 10)))
    prefix: str = attrs.field(default="ab", validator=v.matches_re("ab", func=re.match))
    counts: dict[str, int] = attrs.field(
        factory=dict, validator=v.deep_mapping(v.min_len(1), v.le(5), v.max_len(2))
    )
    both: int = attrs.field(default=5, validator=[v.ge(1), v.ge(3), v.le(9), v.le(7)])
    # What JSON Schema cannot say adds nothing: a regex with flags, a converter's input.
    loose: str = attrs.field(default="x", validator=v.matches_re("x", re.IGNORECASE))
    converted: int = attrs.field(default=1, converter=abs, validator=v.ge(0))


def test_validators_become_json_schema_keywords() -> None:
    props = json_schema(Item)["properties"]
    assert props["qty"] == {"type": "integer", "exclusiveMinimum": 0}
    assert props["price"] == {"type": ["number", "integer"], "minimum": 0, "exclusiveMaximum": 1000}
    assert props["name"] == {"type": "string", "minLength": 1, "maxLength": 8, "pattern": "^(?:[a-z]+)$"}
    assert props["tags"] == {"type": "array", "items": {"type": "string", "minLength": 2}, "maxItems": 3}
    assert props["note"]["enum"] == ["gift", "rush", None]  # optional: None stays allowed
    assert props["size"] == {"type": "integer", "minimum": 1, "maximum": 9}
    assert props["prefix"]["pattern"] == "^(?:ab)"
    counts = props["counts"]
    assert counts["propertyNames"] == {"type": "string", "minLength": 1}
    assert counts["additionalProperties"] == {"type": "integer", "maximum": 5}
    assert counts["maxProperties"] == 2
    assert props["both"] == {"type": "integer", "minimum": 3, "maximum": 7}  # the stricter bound
    assert props["loose"] == {"type": "string"} and props["converted"] == {"type": "integer"}


class Shop(Actor):
    service_name = "Shop"

    async def add(self, item: Item) -> Item:
        return item


def test_the_document_with_constraints_is_valid_openapi() -> None:
    schemas = endpoint_schemas(Shop)
    endpoint = Endpoint("Shop.add", {"": "Item"}, {"": "Item"})
    service = Service("shop", "1", endpoints=(endpoint,), nodes=(NodeInfo("n1", "127.0.0.1:1"),))
    doc = document([service], {("shop", "1"): schemas})
    validate(doc)
    body = doc["paths"]["/api/shop/Shop.add"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["qty"]["exclusiveMinimum"] == 0


def _accepts(schema: dict[str, Any], value: Any) -> bool:
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    return True


def _attrs_accepts(field: str, value: Any) -> bool:
    a = attrs.fields_dict(Item)[field]
    try:
        a.validator(None, a, value)  # type: ignore[misc]
    except (ValueError, TypeError):
        return False
    return True


SCHEMA = json_schema(Item)["properties"]
texts = st.text(alphabet="ab-Z0 ", max_size=10)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.tuples(st.just("qty"), st.integers(-3, 3)),
        st.tuples(st.just("price"), st.floats(-10, 1100, allow_nan=False)),
        st.tuples(st.just("name"), texts),
        st.tuples(st.just("tags"), st.lists(texts, max_size=5)),
        st.tuples(st.just("note"), st.one_of(st.none(), st.sampled_from(["gift", "rush", "slow", ""]))),
        st.tuples(st.just("size"), st.integers(-2, 12)),
        st.tuples(st.just("prefix"), texts),
        st.tuples(st.just("counts"), st.dictionaries(texts, st.integers(0, 8), max_size=4)),
        st.tuples(st.just("both"), st.integers(0, 10)),
    )
)
def test_the_schema_admits_exactly_what_the_validators_admit(case: tuple[str, Any]) -> None:
    field, value = case
    assert _accepts(SCHEMA[field], value) == _attrs_accepts(field, value), (field, value, SCHEMA[field])
