"""Access rules: go-micro's rules_test cases, our prefix wildcards, and a reference model check."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.cluster.auth import Account
from trimicro.cluster.auth.rules import (
    DEFAULT_RULES,
    MAX_PRIORITY,
    MAX_RULE_STRING,
    Access,
    Resource,
    Rule,
    Rules,
)
from trimicro.mailbox.errors import BadRequest, Forbidden, Unauthorized

SRV = Resource("service", "go.micro.service.foo", "Foo.Bar")
WEB = Resource("service", "go.micro.web.foo", "/foo/bar")
G, D = Access.GRANTED, Access.DENIED


def _acc(*scopes: str) -> Account:
    return Account("a", "user", "00" * 32, scopes)


def _rule(scope: str, res: Resource, access: Access = G, priority: int = 0, id: str = "r") -> Rule:
    return Rule(id, scope, res, access, priority)


def _any(type: str = "*", name: str = "*", endpoint: str = "*") -> Resource:
    return Resource(type, name, endpoint)


def _outcome(rules: list[Rule], account: Account | None, resource: Resource) -> str:
    try:
        Rules(rules).verify(account, resource)
    except Unauthorized:
        return "unauthorized"
    except Forbidden:
        return "forbidden"
    return "ok"


# -- go-micro's rules_test.go, case by case ------------------------------------------------------

CASES: list[tuple[str, list[Rule], Account | None, Resource, str]] = [
    ("no rules and no account", [], None, SRV, "unauthorized"),
    ("no rules and an account", [], _acc(), SRV, "forbidden"),
    ("public rule grants without account", [_rule("", SRV)], None, SRV, "ok"),
    ("public rule grants with account", [_rule("", SRV)], _acc(), SRV, "ok"),
    ("public deny without account", [_rule("", SRV, D)], None, SRV, "unauthorized"),
    ("public deny with account", [_rule("", SRV, D)], _acc(), SRV, "forbidden"),
    ("account rule needs an account", [_rule("*", SRV)], None, SRV, "unauthorized"),
    ("account rule grants any account", [_rule("*", SRV)], _acc(), SRV, "ok"),
    ("account rule deny", [_rule("*", SRV, D)], _acc(), SRV, "forbidden"),
    ("scope rule grants the scope", [_rule("admin", SRV)], _acc("admin"), SRV, "ok"),
    ("scope rule refuses another scope", [_rule("admin", SRV)], _acc("dev"), SRV, "forbidden"),
    ("scope rule refuses no account", [_rule("admin", SRV)], None, SRV, "unauthorized"),
    ("scope deny", [_rule("admin", SRV, D)], _acc("admin"), SRV, "forbidden"),
    ("wildcard type", [_rule("*", _any("*", SRV.name, SRV.endpoint))], _acc(), SRV, "ok"),
    ("wildcard name", [_rule("*", _any("service", "*", SRV.endpoint))], _acc(), SRV, "ok"),
    ("wildcard endpoint", [_rule("*", _any("service", SRV.name, "*"))], _acc(), SRV, "ok"),
    ("other type", [_rule("*", _any("topic", "*", "*"))], _acc(), SRV, "forbidden"),
    ("other name", [_rule("*", _any("*", "go.micro.service.bar", "*"))], _acc(), SRV, "forbidden"),
    ("other endpoint", [_rule("*", _any("*", "*", "Foo.Baz"))], _acc(), SRV, "forbidden"),
    (
        "higher priority deny beats grant",
        [_rule("*", SRV, G, 0), _rule("*", SRV, D, 1)],
        _acc(),
        SRV,
        "forbidden",
    ),
    (
        "higher priority grant beats deny",
        [_rule("*", SRV, D, 0), _rule("*", SRV, G, 1)],
        _acc(),
        SRV,
        "ok",
    ),
    ("equal priority: first given wins", [_rule("*", SRV, D), _rule("*", SRV, G)], _acc(), SRV, "forbidden"),
    ("equal priority: first given wins 2", [_rule("*", SRV, G), _rule("*", SRV, D)], _acc(), SRV, "ok"),
    (
        "public deny outranks a lower account grant",
        [_rule("*", SRV, G, 0), _rule("", SRV, D, 5)],
        _acc("admin"),
        SRV,
        "forbidden",
    ),
    (
        "scope rule skipped for no account, lower public grant applies",
        [_rule("admin", SRV, D, 9), _rule("", SRV, G, 0)],
        None,
        SRV,
        "ok",
    ),
    (
        "non-matching scope deny is skipped",
        [_rule("dev", SRV, D, 9), _rule("admin", SRV, G, 0)],
        _acc("admin"),
        SRV,
        "ok",
    ),
    ("path wildcard", [_rule("*", _any(endpoint="/foo/*"))], _acc(), WEB, "ok"),
    ("path wildcard of the endpoint itself", [_rule("*", _any(endpoint="/foo/bar/*"))], _acc(), WEB, "ok"),
    ("root path wildcard", [_rule("*", _any(endpoint="/*"))], _acc(), WEB, "ok"),
    ("other path", [_rule("*", _any(endpoint="/bar/*"))], _acc(), WEB, "forbidden"),
    ("path prefix is per segment", [_rule("*", _any(endpoint="/fo/*"))], _acc(), WEB, "forbidden"),
    (
        "path wildcard deny beats grant",
        [_rule("*", _any(endpoint="/foo/*"), D, 1), _rule("*", _any())],
        _acc(),
        WEB,
        "forbidden",
    ),
    ("dot prefix endpoint", [_rule("*", _any(endpoint="Foo.*"))], _acc(), SRV, "ok"),
    ("dot prefix is per segment", [_rule("*", _any(endpoint="Fo.*"))], _acc(), SRV, "forbidden"),
    ("dot prefix of another", [_rule("*", _any(endpoint="Bar.*"))], _acc(), SRV, "forbidden"),
    ("dot prefix name", [_rule("*", _any(name="go.micro.*"))], _acc(), SRV, "ok"),
    ("dot prefix name, other", [_rule("*", _any(name="go.macro.*"))], _acc(), SRV, "forbidden"),
    (
        "dot prefix deny over a public grant",
        [_rule("", _any(), G, 0), _rule("", _any(endpoint="Foo.*"), D, 1)],
        None,
        SRV,
        "unauthorized",
    ),
    ("default rules: any account", list(DEFAULT_RULES), _acc(), SRV, "ok"),
    ("default rules: no account", list(DEFAULT_RULES), None, SRV, "unauthorized"),
]


@pytest.mark.parametrize(
    ("rules", "account", "resource", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_go_micro_cases(
    rules: list[Rule], account: Account | None, resource: Resource, expected: str
) -> None:
    assert _outcome(rules, account, resource) == expected


def test_greeter_prefix() -> None:
    rules = Rules([_rule("", _any("actor", "greeter", "Greeter.*"))])
    rules.verify(None, Resource("actor", "greeter", "Greeter.hello"))
    rules.verify(None, Resource("actor", "greeter", "Greeter.hello.world"))
    for endpoint in ("Greeter", "Greeterx.hello", "Other.hello"):
        with pytest.raises(Unauthorized):
            rules.verify(None, Resource("actor", "greeter", endpoint))


def test_errors_are_generic() -> None:
    rules = Rules([])
    with pytest.raises(Unauthorized) as no_creds:
        rules.verify(None, SRV)
    with pytest.raises(Forbidden) as denied:
        rules.verify(_acc("admin"), SRV)
    assert (no_creds.value.detail, no_creds.value.code) == ("unauthorized", 401)
    assert (denied.value.detail, denied.value.code) == ("forbidden", 403)


def test_default_rules_are_go_micros() -> None:
    expected = (Rule("default", "*", Resource("*", "*", "*"), Access.GRANTED, 0),)
    assert expected == DEFAULT_RULES
    assert Rules().rules == DEFAULT_RULES


# -- cache and replace -----------------------------------------------------------------------------


def test_replace_forgets_cached_decisions_and_bumps_version() -> None:
    rules = Rules([_rule("*", SRV)])
    rules.verify(_acc(), SRV)
    assert rules.version == 0
    rules.replace([_rule("*", SRV, D)])
    assert rules.version == 1
    with pytest.raises(Forbidden):
        rules.verify(_acc(), SRV)


def test_cache_is_bounded() -> None:
    rules = Rules(cache_size=4)
    for i in range(10):
        rules.verify(_acc(f"s{i}"), SRV)
    assert len(rules._cache) == 4
    uncached = Rules(cache_size=0)
    uncached.verify(_acc(), SRV)
    assert len(uncached._cache) == 0


def test_cache_keys_on_scopes_not_identity() -> None:
    rules = Rules([_rule("admin", SRV)])
    rules.verify(_acc("admin"), SRV)
    with pytest.raises(Forbidden):
        rules.verify(attrs.evolve(_acc("admin"), scopes=("dev",)), SRV)


# -- dict form -------------------------------------------------------------------------------------


def test_rule_dict_round_trip() -> None:
    rule = Rule("r1", "admin", Resource("service", "foo", "Foo.*"), Access.DENIED, -3)
    d = rule.to_dict()
    assert d == {
        "id": "r1",
        "scope": "admin",
        "resource": {"type": "service", "name": "foo", "endpoint": "Foo.*"},
        "access": "denied",
        "priority": -3,
    }
    assert Rule.from_dict(d) == rule
    for edge in (MAX_PRIORITY, -MAX_PRIORITY):
        assert Rule.from_dict({**d, "priority": edge}).priority == edge
    del d["priority"]
    assert Rule.from_dict(d).priority == 0


def _good() -> dict[str, Any]:
    return Rule("r1", "", Resource("service", "foo", "*"), Access.GRANTED, 1).to_dict()


@pytest.mark.parametrize(
    "change",
    [
        {"id": ""},
        {"id": 1},
        {"id": "x" * (MAX_RULE_STRING + 1)},
        {"scope": None},
        {"scope": "s" * (MAX_RULE_STRING + 1)},
        {"access": "GRANTED"},
        {"access": 0},
        {"access": ["granted"]},
        {"priority": True},
        {"priority": 1.0},
        {"priority": MAX_PRIORITY + 1},
        {"priority": -MAX_PRIORITY - 1},
        {"priority": "1"},
        {"resource": None},
        {"resource": {"type": "service", "name": "foo"}},
        {"resource": {"type": "service", "name": "foo", "endpoint": "", "x": 1}},
        {"resource": {"type": "service", "name": "", "endpoint": "*"}},
        {"resource": {"type": 1, "name": "foo", "endpoint": "*"}},
        {"extra": 1},
    ],
)
def test_rule_from_dict_is_strict(change: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        Rule.from_dict({**_good(), **change})


@pytest.mark.parametrize("bad", [None, [], "rule", {"id": "r"}])
def test_rule_from_dict_refuses_non_rules(bad: object) -> None:
    with pytest.raises(BadRequest):
        Rule.from_dict(bad)


# -- reference model -------------------------------------------------------------------------------


def _expansions(value: str, sep: str) -> list[str]:
    comps = value.split(sep)
    if len(comps) <= 1:
        return []
    return [sep.join(comps[:i]) + sep + "*" for i in range(1, len(comps) + 1)]


def reference_verify(rules: list[Rule], account: Account | None, res: Resource) -> str:
    """go-micro's ``Verify``, transcribed plainly, with '.' expanded the way '/' is."""
    valid_types = ["*", res.type]
    valid_names = ["*", res.name, *_expansions(res.name, "/"), *_expansions(res.name, ".")]
    valid_endpoints = ["*", res.endpoint, *_expansions(res.endpoint, "/"), *_expansions(res.endpoint, ".")]
    filtered = [
        r
        for r in rules
        if r.resource.type in valid_types
        and r.resource.name in valid_names
        and r.resource.endpoint in valid_endpoints
    ]
    filtered.sort(key=lambda r: r.priority, reverse=True)  # stable, like sort.SliceStable
    denied = "unauthorized" if account is None else "forbidden"
    for rule in filtered:
        if rule.scope == "":
            return denied if rule.access == Access.DENIED else "ok"
        if account is None:
            continue
        if rule.scope == "*":
            return denied if rule.access == Access.DENIED else "ok"
        if rule.scope in account.scopes:
            return denied if rule.access == Access.DENIED else "ok"
    return denied


# A small vocabulary, so random rules often match random resources and collide on priority.
_VALUES = ["foo", "fo", "foo.bar", "foo.bar.baz", "foo.", "/foo", "/foo/bar", "foo/bar", "/", ".", "x"]
_values = st.sampled_from(_VALUES)
_patterns = st.one_of(
    st.just("*"),
    _values,
    st.sampled_from([v[:i] for v in _VALUES for i in range(len(v) + 1)]).flatmap(
        lambda prefix: st.sampled_from([prefix + "/*", prefix + ".*"])
    ),
)
_scopes = st.sampled_from(["", "*", "admin", "dev"])
_resource_values = st.builds(Resource, st.sampled_from(["service", "topic"]), _values, _values)
_rule_values = st.builds(
    Rule,
    st.just("r"),
    _scopes,
    st.builds(Resource, st.sampled_from(["*", "service", "topic"]), _patterns, _patterns),
    st.sampled_from(Access),
    st.integers(-1, 1),
)
_accounts = st.one_of(
    st.none(), st.lists(st.sampled_from(["admin", "dev", "ops", "*"]), max_size=3).map(lambda s: _acc(*s))
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(_rule_values, max_size=8),
    st.lists(_rule_values, max_size=8),
    st.lists(_accounts, min_size=1, max_size=4),
    st.lists(_resource_values, min_size=1, max_size=4),
)
def test_compiled_cached_rules_agree_with_the_reference(
    first: list[Rule], second: list[Rule], accounts: list[Account | None], resources: list[Resource]
) -> None:
    rules = Rules(first, cache_size=3)
    for current in (first, second):
        for _ in range(2):  # the second pass is answered (partly) from the cache
            for account in accounts:
                for resource in resources:
                    expected = reference_verify(current, account, resource)
                    try:
                        rules.verify(account, resource)
                        got = "ok"
                    except Unauthorized:
                        got = "unauthorized"
                    except Forbidden:
                        got = "forbidden"
                    assert got == expected, (current, account, resource)
        rules.replace(second)
