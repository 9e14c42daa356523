"""Client-side selection: strategies, filters, circuit breaker, retry rules and the Selector facade.

Everything is sans-I/O: time is an explicit ``now`` and randomness a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimicro.cluster.registry import Endpoint, NodeInfo, Service
from trimicro.cluster.selector import (
    BreakerSelector,
    BreakerState,
    CircuitBreaker,
    ConsistentHash,
    LeastOutstanding,
    NoNodes,
    Outstanding,
    RandomStrategy,
    RetryPolicy,
    RoundRobin,
    filter_nodes,
)
from trimicro.mailbox.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InternalServerError,
    MicroError,
    NotFound,
    RequestTimeout,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)


def nodes(*ids: str) -> list[NodeInfo]:
    return [NodeInfo(id=i, address=f"{i}:1234") for i in ids]


def service(*ids: str, name: str = "greeter", version: str = "latest") -> Service:
    return Service(name=name, version=version, nodes=tuple(nodes(*ids)))


# --------------------------------------------------------------------------------------------
# Strategies


def test_random_is_roughly_uniform() -> None:
    strategy = RandomStrategy(random.Random(1234))
    pool = nodes("a", "b", "c", "d")
    draws = 8000
    counts = Counter(strategy.pick(pool, None).id for _ in range(draws))
    expected = draws / len(pool)
    chi2 = sum((counts[n.id] - expected) ** 2 / expected for n in pool)
    assert chi2 < 16.27  # 3 degrees of freedom, p = 0.001
    assert set(counts) == {"a", "b", "c", "d"}


def test_random_with_same_seed_repeats() -> None:
    pool = nodes("a", "b", "c")
    first, again = RandomStrategy(random.Random(7)), RandomStrategy(random.Random(7))
    assert [first.pick(pool, None) for _ in range(50)] == [again.pick(pool, None) for _ in range(50)]


def test_round_robin_cycles_in_order() -> None:
    strategy = RoundRobin()
    pool = nodes("a", "b", "c")
    assert [strategy.pick(pool, None).id for _ in range(7)] == ["a", "b", "c", "a", "b", "c", "a"]


def test_round_robin_start_and_shrinking_list() -> None:
    strategy = RoundRobin(start=1)
    assert strategy.pick(nodes("a", "b", "c"), None).id == "b"
    assert strategy.pick(nodes("a", "b"), None).id == "a"  # position 2 wraps on two nodes


@pytest.mark.parametrize("strategy", [RandomStrategy(random.Random(0)), RoundRobin(), ConsistentHash()])
def test_strategies_refuse_an_empty_list(strategy: RandomStrategy | RoundRobin | ConsistentHash) -> None:
    with pytest.raises(ValueError):
        strategy.pick([], "key")


def test_outstanding_counts() -> None:
    tracker = Outstanding()
    tracker.start("a")
    tracker.start("a")
    tracker.done("a")
    assert tracker.count("a") == 1
    tracker.done("a")
    tracker.done("a")  # unmatched: ignored, never negative
    assert tracker.count("a") == 0
    with pytest.raises(RuntimeError), tracker.track("b"):
        assert tracker.count("b") == 1
        raise RuntimeError
    assert tracker.count("b") == 0


def test_p2c_never_picks_the_most_loaded_and_prefers_the_idle() -> None:
    strategy = LeastOutstanding(random.Random(42))
    for _ in range(10):
        strategy.outstanding.start("a")
    strategy.outstanding.start("b")
    pool = nodes("a", "b", "c")
    counts = Counter(strategy.pick(pool, None).id for _ in range(3000))
    assert counts["a"] == 0  # it loses against whichever node it is paired with
    # c wins both pairs it is in (2/3 of draws), b only the pair (a, b) (1/3).
    assert 1800 < counts["c"] < 2200
    assert 800 < counts["b"] < 1200


def test_p2c_two_nodes_always_the_less_loaded_and_single_node() -> None:
    tracker = Outstanding()
    strategy = LeastOutstanding(random.Random(3), tracker)
    tracker.start("a")
    assert {strategy.pick(nodes("a", "b"), None).id for _ in range(50)} == {"b"}
    assert strategy.pick(nodes("a"), None).id == "a"


def test_p2c_follows_the_load_as_it_changes() -> None:
    strategy = LeastOutstanding(random.Random(5))
    pool = nodes("a", "b", "c", "d")
    for _ in range(400):
        node = strategy.pick(pool, None)
        strategy.outstanding.start(node.id)  # nothing ever finishes: load must stay balanced
    loads = [strategy.outstanding.count(n.id) for n in pool]
    assert max(loads) - min(loads) <= 2


def test_consistent_hash_needs_a_key() -> None:
    with pytest.raises(ValueError):
        ConsistentHash().pick(nodes("a"), None)


def test_consistent_hash_is_stable_and_order_independent() -> None:
    strategy = ConsistentHash()
    pool = nodes(*(f"n{i}" for i in range(6)))
    shuffled = list(pool)
    random.Random(9).shuffle(shuffled)
    for key in (f"user-{i}" for i in range(200)):
        first = strategy.pick(pool, key)
        assert strategy.pick(pool, key) == first
        assert ConsistentHash().pick(shuffled, key) == first


def test_consistent_hash_weight_is_a_fixed_function() -> None:
    # blake2b, not hash(): the same on every process and Python version.
    assert ConsistentHash.weight("k", "n") == ConsistentHash.weight("k", "n")
    assert ConsistentHash.weight("ab", "c") != ConsistentHash.weight("a", "bc")


def test_consistent_hash_spreads_keys() -> None:
    pool = nodes("a", "b", "c", "d")
    counts = Counter(ConsistentHash().pick(pool, f"key-{i}").id for i in range(4000))
    assert all(800 < counts[n.id] < 1200 for n in pool), counts


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(st.text(min_size=1, max_size=8), min_size=2, max_size=8),
    keys=st.sets(st.text(max_size=12), min_size=1, max_size=60),
    data=st.data(),
)
def test_consistent_hash_removal_moves_only_the_removed_nodes_keys(
    ids: set[str], keys: set[str], data: st.DataObject
) -> None:
    strategy = ConsistentHash()
    pool = nodes(*sorted(ids))
    gone = data.draw(st.sampled_from(pool))
    remaining = [n for n in pool if n != gone]
    for key in keys:
        before = strategy.pick(pool, key)
        after = strategy.pick(remaining, key)
        if before != gone:
            assert after == before
        else:
            assert after in remaining


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=8),
    new=st.text(min_size=1, max_size=8),
    keys=st.sets(st.text(max_size=12), min_size=1, max_size=60),
)
def test_consistent_hash_join_moves_keys_only_to_the_new_node(
    ids: set[str], new: str, keys: set[str]
) -> None:
    ids.discard(new)
    if not ids:
        return
    strategy = ConsistentHash()
    pool = nodes(*sorted(ids))
    joined = NodeInfo(id=new, address="new:1")
    for key in keys:
        before = strategy.pick(pool, key)
        after = strategy.pick([*pool, joined], key)
        assert after in (before, joined)


# --------------------------------------------------------------------------------------------
# Filters

HELLO = Endpoint(name="Greeter.hello")
BYE = Endpoint(name="Greeter.bye")
V1 = Service(
    name="greeter",
    version="v1",
    metadata={"region": "eu"},
    endpoints=(HELLO,),
    nodes=(NodeInfo("n1", "h1:1", {"zone": "a"}), NodeInfo("n2", "h2:1")),
)
V2 = Service(
    name="greeter",
    version="v2",
    metadata={"region": "us"},
    endpoints=(HELLO, BYE),
    nodes=(NodeInfo("n3", "h3:1", {"region": "eu"}), NodeInfo("n4", "h4:1", {"zone": "a"})),
)


def ids_of(found: list[NodeInfo]) -> list[str]:
    return [n.id for n in found]


def test_filter_without_conditions_keeps_every_node_in_order() -> None:
    assert ids_of(filter_nodes([V1, V2])) == ["n1", "n2", "n3", "n4"]


def test_filter_by_version() -> None:
    assert ids_of(filter_nodes([V1, V2], version="v2")) == ["n3", "n4"]
    assert filter_nodes([V1, V2], version="v3") == []


def test_filter_by_metadata_node_overrides_service() -> None:
    assert ids_of(filter_nodes([V1, V2], metadata={"region": "eu"})) == ["n1", "n2", "n3"]
    assert ids_of(filter_nodes([V1, V2], metadata={"region": "us"})) == ["n4"]
    assert ids_of(filter_nodes([V1, V2], metadata={"region": "eu", "zone": "a"})) == ["n1"]
    assert filter_nodes([V1, V2], metadata={"missing": "x"}) == []


def test_filter_by_endpoint() -> None:
    assert ids_of(filter_nodes([V1, V2], endpoint="Greeter.bye")) == ["n3", "n4"]
    assert ids_of(filter_nodes([V1, V2], endpoint="Greeter.hello")) == ["n1", "n2", "n3", "n4"]
    assert filter_nodes([V1, V2], endpoint="Greeter.nope") == []
    assert filter_nodes([service("x")], endpoint="Greeter.hello") == []  # no endpoints listed


def test_filter_combines_conditions_and_dedupes_nodes() -> None:
    assert ids_of(filter_nodes([V1, V2], version="v2", metadata={"zone": "a"}, endpoint="Greeter.bye")) == [
        "n4"
    ]
    twice = [service("a", "b", version="v1"), service("b", "c", version="v2")]
    assert ids_of(filter_nodes(twice)) == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------
# Circuit breaker


def fail(breaker: CircuitBreaker, node_id: str, now: float, times: int) -> None:
    for _ in range(times):
        breaker.failure(node_id, now)


def test_breaker_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_for=1.0)
    fail(breaker, "a", 0.0, 2)
    assert breaker.allow("a", 0.0)
    breaker.success("a")  # not consecutive any more
    fail(breaker, "a", 0.0, 2)
    assert breaker.state("a", 0.0) is BreakerState.CLOSED
    breaker.failure("a", 0.0)
    assert breaker.state("a", 0.0) is BreakerState.OPEN
    assert not breaker.allow("a", 0.5)
    assert breaker.allow("b", 0.5)  # per node


def test_breaker_half_open_allows_one_trial_and_success_closes() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0)
    breaker.failure("a", 10.0)
    assert not breaker.allow("a", 10.99)
    assert breaker.state("a", 11.0) is BreakerState.HALF_OPEN
    assert breaker.would_allow("a", 11.0)
    assert breaker.would_allow("a", 11.0)  # peeking claims nothing
    assert breaker.allow("a", 11.0)
    assert not breaker.allow("a", 11.0)  # the single trial is taken
    breaker.success("a")
    assert breaker.state("a", 11.0) is BreakerState.CLOSED
    assert breaker.allow("a", 11.0)
    assert breaker.last_failure("a") == float("-inf")


def test_breaker_backoff_doubles_up_to_the_maximum_and_resets_on_success() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_for=1.0, max_open_for=4.0)
    fail(breaker, "a", 0.0, 2)  # open for 1: until 1
    now = 1.0
    for period in (2.0, 4.0, 4.0):  # each failed trial doubles the period, capped at 4
        assert breaker.state("a", now) is BreakerState.HALF_OPEN
        assert breaker.allow("a", now)
        breaker.failure("a", now)
        assert not breaker.allow("a", now + period - 0.001)
        now += period
    assert now == 11.0
    assert breaker.allow("a", now)
    breaker.success("a")
    fail(breaker, "a", now, 2)
    assert not breaker.allow("a", now + 0.999)
    assert breaker.allow("a", now + 1.0)  # back to the first period


def test_breaker_explicit_timeline() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0, max_open_for=30.0)
    breaker.failure("a", 0.0)  # open [0, 1)
    assert breaker.allow("a", 1.0)
    breaker.failure("a", 1.5)  # trial failed: open [1.5, 3.5)
    assert not breaker.allow("a", 3.49)
    assert breaker.allow("a", 3.5)
    breaker.failure("a", 3.5)  # open [3.5, 7.5)
    assert not breaker.allow("a", 7.49)
    assert breaker.allow("a", 7.5)


def test_breaker_late_failure_while_open_does_not_extend() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0)
    breaker.failure("a", 0.0)
    breaker.failure("a", 0.5)  # a call sent before it opened, reporting late
    assert breaker.last_failure("a") == 0.5
    assert breaker.allow("a", 1.0)


def test_breaker_unanswered_trial_does_not_wedge_the_node() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0)
    breaker.failure("a", 0.0)
    assert breaker.allow("a", 1.0)  # trial sent, never answered
    assert not breaker.allow("a", 1.5)
    assert breaker.allow("a", 2.0)  # another trial one period later


def test_breaker_mark_down_opens_at_once() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_for=1.0)
    breaker.mark_down("a", 5.0)
    assert breaker.state("a", 5.0) is BreakerState.OPEN
    assert not breaker.allow("a", 5.9)
    breaker.mark_down("a", 5.5)  # repeated while open: period unchanged
    assert breaker.allow("a", 6.0)
    breaker.mark_down("a", 6.1)  # down again during the trial: re-open, doubled
    assert not breaker.allow("a", 8.0)
    assert breaker.allow("a", 8.1)
    breaker.forget("a")
    assert breaker.state("a", 8.1) is BreakerState.CLOSED


def test_breaker_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(open_for=5.0, max_open_for=1.0)


# --------------------------------------------------------------------------------------------
# Retry policy

RETRY_TABLE = [
    # error, delivered, idempotent, retried
    (ServiceUnavailable("down"), False, False, True),
    (TooManyRequests("full"), False, False, True),
    (RequestTimeout("slow"), False, False, True),
    (MicroError("bad gateway", code=502), False, False, True),
    (MicroError("gateway timeout", code=504), False, False, True),
    (InternalServerError("boom"), False, False, False),
    (ServiceUnavailable("down"), True, False, False),
    (TooManyRequests("full"), True, False, False),
    (RequestTimeout("slow"), True, False, False),
    (InternalServerError("boom"), True, False, False),
    (ServiceUnavailable("down"), True, True, True),
    (TooManyRequests("full"), True, True, True),
    (RequestTimeout("slow"), True, True, True),
    (InternalServerError("boom"), True, True, True),
    (MicroError("not implemented", code=501), True, True, False),
    (BadRequest("no"), False, True, False),
    (Unauthorized("no"), False, True, False),
    (Forbidden("no"), True, True, False),
    (NotFound("no"), False, True, False),
    (Conflict("no"), True, True, False),
    (NoNodes("no nodes of service x"), False, False, True),
    (RuntimeError("a bug"), False, True, False),
    (OSError("reset"), False, True, False),
    (KeyboardInterrupt(), False, True, False),
]


@pytest.mark.parametrize(
    ("error", "delivered", "idempotent", "retried"),
    RETRY_TABLE,
    ids=[f"{type(e).__name__}-{d}-{i}" for e, d, i, _ in RETRY_TABLE],
)
def test_retry_rules(error: BaseException, delivered: bool, idempotent: bool, retried: bool) -> None:
    assert RetryPolicy().should_retry(error, delivered=delivered, idempotent=idempotent) is retried


def test_retry_delay_is_full_jitter_exponential_and_capped() -> None:
    policy = RetryPolicy(backoff=0.05, max_backoff=1.0)
    rng = random.Random(11)
    for attempt, ceiling in [(1, 0.05), (2, 0.1), (3, 0.2), (5, 0.8), (6, 1.0), (1000, 1.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < 0.05 * ceiling  # full jitter reaches down to zero
        assert max(delays) > 0.95 * ceiling
    with pytest.raises(ValueError):
        policy.delay(0, rng)


def test_retry_budget_starts_with_minimum_and_is_exhausted() -> None:
    policy = RetryPolicy(budget_ratio=0.5, budget_min=2)
    assert policy.can_retry()
    policy.record_retry()
    policy.record_retry()
    assert not policy.can_retry()
    policy.record_request()
    assert not policy.can_retry()  # half a token is not a retry
    policy.record_request()
    assert policy.can_retry()
    assert policy.tokens == pytest.approx(1.0)


def test_retry_budget_is_capped() -> None:
    policy = RetryPolicy(budget_ratio=0.2, budget_min=10)
    for _ in range(10_000):
        policy.record_request()
    assert policy.tokens == pytest.approx(100.0)  # 10 * budget_min
    for _ in range(100):
        assert policy.can_retry()
        policy.record_retry()
    assert not policy.can_retry()


def test_retry_budget_limits_steady_state_to_the_ratio() -> None:
    policy = RetryPolicy(budget_ratio=0.2, budget_min=10)
    retries = 0
    for _ in range(1000):  # every request fails and wants a retry
        policy.record_request()
        if policy.can_retry():
            policy.record_retry()
            retries += 1
    assert retries <= 10 + 0.2 * 1000


def test_may_retry_combines_attempts_rule_and_budget() -> None:
    policy = RetryPolicy(attempts=3, budget_min=1)
    down = ServiceUnavailable("down")
    assert policy.may_retry(1, down, delivered=False, idempotent=False)
    assert not policy.may_retry(3, down, delivered=False, idempotent=False)
    assert not policy.may_retry(1, BadRequest("x"), delivered=False, idempotent=False)
    policy.record_retry()
    assert not policy.may_retry(1, down, delivered=False, idempotent=False)


# --------------------------------------------------------------------------------------------
# Selector


def test_selector_default_is_seeded_random() -> None:
    pool = [service("a", "b", "c")]
    first, again = BreakerSelector(rng=random.Random(2)), BreakerSelector(rng=random.Random(2))
    picks = [first.select(pool, now=0.0).id for _ in range(100)]
    assert picks == [again.select(pool, now=0.0).id for _ in range(100)]
    assert set(picks) == {"a", "b", "c"}
    assert isinstance(first.strategy, RandomStrategy)


def test_selector_skips_excluded_nodes() -> None:
    selector = BreakerSelector(rng=random.Random(4))
    pool = [service("a", "b", "c")]
    assert {selector.select(pool, now=0.0, exclude={"a", "b"}).id for _ in range(20)} == {"c"}
    # Everything tried already: try again rather than refuse.
    assert selector.select(pool, now=0.0, exclude={"a", "b", "c"}).id in {"a", "b", "c"}


def test_selector_skips_open_breakers() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0)
    selector = BreakerSelector(breaker=breaker, rng=random.Random(4))
    pool = [service("a", "b", "c")]
    breaker.failure("a", 0.0)
    breaker.mark_down("b", 0.0)
    assert {selector.select(pool, now=0.5).id for _ in range(20)} == {"c"}


def test_selector_falls_back_to_least_recently_failed_when_all_open() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=10.0)
    selector = BreakerSelector(breaker=breaker, rng=random.Random(4))
    pool = [service("a", "b", "c")]
    breaker.failure("a", 2.0)
    breaker.failure("b", 1.0)
    breaker.failure("c", 3.0)
    assert selector.select(pool, now=4.0).id == "b"
    breaker.failure("b", 4.0)  # the forced call failed too: the next fallback rotates
    assert selector.select(pool, now=4.0).id == "a"
    assert selector.select(pool, now=4.0, exclude={"a"}).id == "c"


def test_selector_claims_the_half_open_trial_for_the_picked_node_only() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0)
    selector = BreakerSelector(strategy=RoundRobin(), breaker=breaker)
    pool = [service("a", "b")]
    breaker.failure("a", 0.0)
    breaker.failure("b", 0.0)
    assert selector.select(pool, now=1.0).id == "a"  # a's trial
    assert breaker.state("b", 1.0) is BreakerState.HALF_OPEN  # b's trial untouched
    assert selector.select(pool, now=1.0).id == "b"  # only b is allowed now
    assert breaker.state("a", 1.0) is BreakerState.OPEN


def test_selector_with_consistent_hash_fails_over_to_the_second_choice() -> None:
    selector = BreakerSelector(strategy=ConsistentHash())
    pool = [service("a", "b", "c", "d")]
    owner = selector.select(pool, now=0.0, key="cart-42")
    assert selector.select(pool, now=0.0, key="cart-42") == owner
    second = selector.select(pool, now=0.0, key="cart-42", exclude={owner.id})
    remaining = [n for n in pool[0].nodes if n != owner]
    assert second == ConsistentHash().pick(remaining, "cart-42")


def test_selector_applies_filters() -> None:
    selector = BreakerSelector(rng=random.Random(1))
    picks = {selector.select([V1, V2], now=0.0, version="v2", metadata={"zone": "a"}).id for _ in range(10)}
    assert picks == {"n4"}
    assert selector.select([V1, V2], now=0.0, endpoint="Greeter.bye").id in {"n3", "n4"}


def test_selector_raises_no_nodes_when_nothing_matches() -> None:
    selector = BreakerSelector()
    with pytest.raises(NoNodes) as info:
        selector.select([V1, V2], now=0.0, version="v9")
    assert isinstance(info.value, ServiceUnavailable)
    assert info.value.code == 503
    assert "no nodes of service greeter" in info.value.detail
    assert "version=v9" in info.value.detail
    with pytest.raises(NoNodes, match="no nodes of service"):
        selector.select([], now=0.0)
    with pytest.raises(NoNodes):
        selector.select([service(name="empty")], now=0.0)


@pytest.mark.parametrize(
    ("error", "counts_as_failure"),
    [
        (None, False),
        (BadRequest("x"), False),
        (NotFound("x"), False),
        (RequestTimeout("x"), True),
        (TooManyRequests("x"), True),
        (InternalServerError("x"), True),
        (ServiceUnavailable("x"), True),
        (OSError("reset"), True),
    ],
)
def test_selector_report_feeds_the_breaker(error: BaseException | None, counts_as_failure: bool) -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_for=1.0)
    selector = BreakerSelector(breaker=breaker)
    selector.report("a", now=0.0, error=error)
    assert (breaker.state("a", 0.0) is BreakerState.OPEN) is counts_as_failure


def test_selector_report_success_closes_and_cancellation_is_neutral() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_for=1.0)
    selector = BreakerSelector(breaker=breaker)
    selector.report("a", now=0.0, error=ServiceUnavailable("x"))
    selector.report("a", now=0.0, error=KeyboardInterrupt())  # says nothing about the node
    selector.report("a", now=0.0)
    selector.report("a", now=0.0, error=ServiceUnavailable("x"))
    assert breaker.state("a", 0.0) is BreakerState.CLOSED  # only one failure since the success
