"""Pub/sub subject matching: NATS examples, validation, the subscription trie and its cache.

Properties check :func:`matches` against a regex reference and :class:`SubscriptionIndex`
against brute force over the subscriptions it holds.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.cluster.broker.topics import (
    MAX_SUBJECT_LENGTH,
    InvalidSubject,
    Match,
    SubscriptionIndex,
    any_match,
    matches,
    validate_pattern,
    validate_subject,
)

# --- examples ---------------------------------------------------------------------------------

MATCH_TABLE = [
    ("foo", "foo", True),
    ("foo", "bar", False),
    ("foo", "foo.bar", False),
    ("foo.bar", "foo", False),
    ("foo.*", "foo.bar", True),
    ("foo.*", "foo.bar.baz", False),
    ("foo.*", "foo", False),
    ("*.bar", "foo.bar", True),
    ("*.bar", "foo.baz", False),
    ("*.bar", "bar", False),
    ("foo.*.baz", "foo.bar.baz", True),
    ("foo.*.baz", "foo.bar.qux", False),
    ("*", "foo", True),
    ("*", "foo.bar", False),
    ("*.*", "foo.bar", True),
    ("foo.>", "foo.bar", True),
    ("foo.>", "foo.bar.baz", True),
    ("foo.>", "foo", False),
    ("foo.>", "bar.baz", False),
    (">", "foo", True),
    (">", "foo.bar.baz", True),
    ("*.>", "foo", False),
    ("*.>", "foo.bar", True),
    ("foo.*.>", "foo.bar.baz.qux", True),
    ("foo.*.>", "foo.bar", False),
    ("time.us.*", "time.us.east", True),
    ("time.us.*", "time.us.east.atlanta", False),
    ("time.us.>", "time.us.east.atlanta", True),
    ("time.*.east", "time.us.east", True),
    ("Foo", "foo", False),  # case-sensitive
    ("a-b_c.d~e", "a-b_c.d~e", True),
]


@pytest.mark.parametrize(("pattern", "subject", "expected"), MATCH_TABLE)
def test_matches_table(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected
    assert any_match([pattern], subject) is expected
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add(pattern, "s")
    assert (index.match(subject).plain == ["s"]) is expected


BAD_COMMON = [
    "",
    ".",
    "foo.",
    ".foo",
    "foo..bar",
    "foo bar",
    "foo\tbar",
    "foo.\nbar",
    " foo",
    "foo\u00a0bar",
    "a*",
    "foo.b*r",
    "foo.>bar",
    "foo.>>",
    "**",
    "x" * (MAX_SUBJECT_LENGTH + 1),
]


@pytest.mark.parametrize("text", [*BAD_COMMON, "*", ">", "foo.*", "foo.>", "*.bar", "foo.*.bar"])
def test_invalid_subjects(text: str) -> None:
    with pytest.raises(InvalidSubject):
        validate_subject(text)
    with pytest.raises(InvalidSubject):
        matches(">", text)
    with pytest.raises(InvalidSubject):
        SubscriptionIndex[str]().match(text)


@pytest.mark.parametrize("text", [*BAD_COMMON, ">.foo", "foo.>.bar", ">.>", "foo.>.*"])
def test_invalid_patterns(text: str) -> None:
    with pytest.raises(InvalidSubject):
        validate_pattern(text)
    with pytest.raises(InvalidSubject):
        matches(text, "foo")
    index: SubscriptionIndex[str] = SubscriptionIndex()
    with pytest.raises(InvalidSubject):
        index.add(text, "v")
    assert len(index) == 0


@pytest.mark.parametrize("text", ["foo", "foo.bar", "a.b.c.d", "x" * MAX_SUBJECT_LENGTH, "123.$SYS.é"])
def test_valid_subjects(text: str) -> None:
    validate_subject(text)
    validate_pattern(text)


@pytest.mark.parametrize("text", ["*", ">", "foo.*", "*.foo", "foo.>", "*.*.>", "foo.*.bar.>"])
def test_valid_patterns(text: str) -> None:
    validate_pattern(text)


def test_invalid_subject_is_value_error() -> None:
    assert issubclass(InvalidSubject, ValueError)
    with pytest.raises(InvalidSubject):
        validate_subject(123)  # type: ignore[arg-type]


def test_any_match() -> None:
    assert not any_match([], "foo")
    assert any_match(["bar", "foo.*", "x.>"], "foo.y")
    assert not any_match(["bar", "foo.*", "x.>"], "foo")
    assert any_match(iter(["nope", ">"]), "a.b")
    with pytest.raises(InvalidSubject):
        any_match(["foo"], "foo.*")
    with pytest.raises(InvalidSubject):
        any_match(["foo..x"], "foo")


# --- the index --------------------------------------------------------------------------------


def test_index_add_remove() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    assert len(index) == 0
    assert not index.match("foo.bar")
    assert index.add("foo.*", "a")
    assert not index.add("foo.*", "a")  # the same subscription twice is one
    assert index.add("foo.>", "b")
    assert index.add("foo.bar", "c")
    assert len(index) == 3
    assert index.patterns() == {"foo.*", "foo.>", "foo.bar"}
    assert ("foo.*", "a") in index
    assert ("foo.*", "b") not in index
    assert sorted(index.match("foo.bar").plain) == ["a", "b", "c"]
    assert index.match("foo.bar.baz").plain == ["b"]
    assert index.match("foo").plain == []

    assert index.remove("foo.*", "a")
    assert not index.remove("foo.*", "a")
    assert not index.remove("foo.bar", "a")
    assert not index.remove("foo.bar", "c", queue="q")
    assert sorted(index.match("foo.bar").plain) == ["b", "c"]
    assert index.patterns() == {"foo.>", "foo.bar"}
    assert index.remove("foo.>", "b")
    assert index.remove("foo.bar", "c")
    assert len(index) == 0
    assert index.patterns() == set()
    assert index._root.is_empty()  # pruned all the way up


def test_index_dedup_plain() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for pattern in ("foo.bar", "foo.*", "*.bar", "foo.>", ">"):
        index.add(pattern, "a")
    index.add("foo.bar", "b")
    assert len(index) == 6
    m = index.match("foo.bar")
    assert sorted(m.plain) == ["a", "b"]
    assert m.groups == {}


def test_index_queue_groups() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("orders.*", "w1", queue="workers")
    index.add("orders.>", "w1", queue="workers")  # same member, two patterns: listed once
    index.add("orders.created", "w2", queue="workers")
    index.add("orders.*", "a1", queue="audit")
    index.add("orders.*", "p")
    index.add("orders.*", "w1")  # also a plain subscriber
    assert len(index) == 6
    m = index.match("orders.created")
    assert sorted(m.plain) == ["p", "w1"]
    assert {k: sorted(v) for k, v in m.groups.items()} == {"workers": ["w1", "w2"], "audit": ["a1"]}
    m = index.match("orders.eu.created")
    assert m.plain == []
    assert m.groups == {"workers": ["w1"]}

    # Queue is part of the subscription's identity.
    assert not index.remove("orders.*", "a1")
    assert index.remove("orders.*", "a1", queue="audit")
    assert "audit" not in index.match("orders.created").groups
    with pytest.raises(ValueError):
        index.add("orders.*", "x", queue="")
    with pytest.raises(ValueError):
        index.add("orders.*", "x", queue="has space")


def test_index_remove_value() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("a.*", "dead")
    index.add("a.>", "dead", queue="q")
    index.add("b", "dead")
    index.add("a.*", "alive")
    index.add("a.>", "alive", queue="q")
    assert index.remove_value("dead") == 3
    assert index.remove_value("dead") == 0
    assert index.remove_value("never") == 0
    assert len(index) == 2
    assert index.patterns() == {"a.*", "a.>"}
    m = index.match("a.x")
    assert m.plain == ["alive"]
    assert m.groups == {"q": ["alive"]}
    assert not index.match("b")
    assert "dead" not in index._by_value


def test_index_values_any_hashable() -> None:
    index: SubscriptionIndex[tuple[str, int]] = SubscriptionIndex()
    index.add("x", ("node", 1))
    index.add("x", ("node", 2), queue="g")
    assert index.match("x") == Match([("node", 1)], {"g": [("node", 2)]})


def test_index_limit() -> None:
    index: SubscriptionIndex[int] = SubscriptionIndex(max_subscriptions=3)
    for i in range(3):
        index.add("s", i)
    assert not index.add("s", 0)  # an existing subscription is not a new one
    with pytest.raises(ValueError, match="limit"):
        index.add("s", 99)
    index.remove("s", 0)
    index.add("s", 99)
    assert len(index) == 3


def test_index_default_limit() -> None:
    assert SubscriptionIndex[int]().max_subscriptions == 100_000


def test_cache_invalidation() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("foo.*", "a")
    assert index.match("foo.bar").plain == ["a"]
    assert index.match("foo.bar").plain == ["a"]
    hits, misses, size = index.cache_info()
    assert (hits, misses, size) == (1, 1, 1)

    index.add("foo.bar", "b")
    assert index.cache_info()[2] == 0
    assert sorted(index.match("foo.bar").plain) == ["a", "b"]
    index.add("foo.>", "c", queue="q")
    assert index.match("foo.bar").groups == {"q": ["c"]}
    index.remove("foo.*", "a")
    assert index.match("foo.bar").plain == ["b"]
    index.remove_value("b")
    assert index.match("foo.bar").plain == []
    assert index.match("foo.bar").groups == {"q": ["c"]}
    # A no-op add or remove may keep the cache.
    index.add("foo.>", "c", queue="q")
    index.remove("nothing", "c")
    assert index.match("foo.bar").groups == {"q": ["c"]}


def test_cache_results_are_copies() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("foo", "a", queue="q")
    index.add("foo", "b")
    first = index.match("foo")
    first.plain.append("mutated")
    first.groups["q"].append("mutated")
    first.groups["new"] = ["x"]
    assert index.match("foo") == Match(["b"], {"q": ["a"]})


def test_cache_bounded_lru() -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex(cache_size=4)
    index.add(">", "all")
    for i in range(10):
        index.match(f"s{i}")
    assert index.cache_info()[2] == 4
    index.match("s6")  # cached: becomes most recent
    hits_before = index.cache_info()[0]
    index.match("s10")  # evicts s7, the least recent
    index.match("s6")
    assert index.cache_info()[0] == hits_before + 1
    index.match("s7")
    assert index.cache_info()[0] == hits_before + 1

    uncached: SubscriptionIndex[str] = SubscriptionIndex(cache_size=0)
    uncached.add("a", "x")
    assert uncached.match("a").plain == ["x"]
    assert uncached.cache_info() == (0, 1, 0)


# --- properties -------------------------------------------------------------------------------

ALPHABET = ["a", "b", "c"]
tokens_st = st.sampled_from(ALPHABET)
subjects_st = st.lists(tokens_st, min_size=1, max_size=5).map(".".join)


@st.composite
def patterns_st(draw: st.DrawFn) -> str:
    toks = draw(st.lists(st.sampled_from([*ALPHABET, "*"]), min_size=0, max_size=5))
    if not toks or draw(st.booleans()):
        toks.append(">" if draw(st.booleans()) else draw(st.sampled_from([*ALPHABET, "*"])))
    return ".".join(toks)


def regex_matches(pattern: str, subject: str) -> bool:
    parts = []
    for tok in pattern.split("."):
        if tok == "*":
            parts.append(r"[^.]+")
        elif tok == ">":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        else:
            parts.append(re.escape(tok))
    return re.fullmatch(r"\.".join(parts), subject) is not None


@given(patterns_st(), subjects_st)
def test_matches_agrees_with_regex(pattern: str, subject: str) -> None:
    validate_pattern(pattern)
    validate_subject(subject)
    assert matches(pattern, subject) == regex_matches(pattern, subject)


@given(st.text(min_size=1, max_size=12).filter(lambda s: re.search(r"[\s.*>]", s) is None), subjects_st)
def test_literal_tokens_any_text(token: str, subject: str) -> None:
    subject = f"{token}.{subject}"
    assert matches(f"{token}.>", subject)
    assert matches(subject, subject)
    assert matches(re.sub(r"[^.]+", "*", subject), subject)


SUB = tuple[str, str, str | None]
VALUES = ["v1", "v2", "v3", "v4"]
subs_st = st.tuples(patterns_st(), st.sampled_from(VALUES), st.sampled_from([None, "q1", "q2"]))
Op = tuple[str, SUB] | tuple[str, str]
ops_st: st.SearchStrategy[list[Op]] = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["add", "remove"]), subs_st),
        st.tuples(st.just("remove_value"), st.sampled_from(VALUES)),
        st.tuples(st.just("match"), subjects_st),
    ),
    max_size=40,
)


def brute_force(model: set[SUB], subject: str) -> tuple[set[str], dict[str, set[str]]]:
    plain: set[str] = set()
    groups: dict[str, set[str]] = {}
    for pattern, value, queue in model:
        if matches(pattern, subject):
            if queue is None:
                plain.add(value)
            else:
                groups.setdefault(queue, set()).add(value)
    return plain, groups


def check(index: SubscriptionIndex[str], model: set[SUB], subject: str) -> None:
    m = index.match(subject)
    assert len(m.plain) == len(set(m.plain))
    for members in m.groups.values():
        assert len(members) == len(set(members))
    assert (set(m.plain), {k: set(v) for k, v in m.groups.items()}) == brute_force(model, subject)


@settings(max_examples=150, deadline=None)
@given(ops_st, st.lists(subjects_st, min_size=1, max_size=8))
def test_index_agrees_with_brute_force(ops: list[Op], probes: list[str]) -> None:
    index: SubscriptionIndex[str] = SubscriptionIndex(cache_size=8)
    model: set[SUB] = set()
    for op, arg in ops:
        if isinstance(arg, tuple):
            pattern, value, queue = arg
            if op == "add":
                assert index.add(pattern, value, queue) == (arg not in model)
                model.add(arg)
            else:
                assert index.remove(pattern, value, queue) == (arg in model)
                model.discard(arg)
        elif op == "remove_value":
            gone = {sub for sub in model if sub[1] == arg}
            assert index.remove_value(arg) == len(gone)
            model -= gone
        else:
            check(index, model, arg)
        assert len(index) == len(model)
        assert index.patterns() == {sub[0] for sub in model}
    for subject in probes:
        check(index, model, subject)
        check(index, model, subject)  # again, from the cache
    for value in VALUES:
        index.remove_value(value)
    assert len(index) == 0
    assert index._root.is_empty()


@given(st.lists(patterns_st(), max_size=10), subjects_st)
def test_any_match_agrees_with_matches(patterns: list[str], subject: str) -> None:
    assert any_match(patterns, subject) == any(regex_matches(p, subject) for p in patterns)
