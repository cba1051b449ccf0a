"""The QuotaStore contract: one suite, run against the memory and the Redis store."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.guards.quotas import QuotaLimits
from serving.guards.quotas.base import DAY_SECONDS, day_end
from tests.serving.guards.quotas.conftest import MakeStore, fixed

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
K, M = "0123456789abcdef", "demo"


def test_burst_then_refused_with_time_to_next_token(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=2.0, burst=3))
    assert [store.consume(K, M, 1, NOW).allowed for _ in range(3)] == [True, True, True]
    refused = store.consume(K, M, 1, NOW)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.5)
    assert store.consume(K, M, 1, NOW + 0.49).allowed is False
    assert store.consume(K, M, 1, NOW + 0.5).allowed is True


def test_bucket_refills_at_rate_and_caps_at_burst(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=1.0, burst=2))
    for _ in range(2):
        assert store.consume(K, M, 1, NOW).allowed
    later = NOW + 1_000.0  # long idle: still only `burst` tokens
    assert [store.consume(K, M, 1, later).allowed for _ in range(3)] == [True, True, False]


def test_daily_budget_counts_instances(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=100.0, burst=100, daily_budget=10))
    first = store.consume(K, M, 4, NOW)
    assert (first.allowed, first.remaining, first.retry_after) == (True, 6, 0.0)
    assert store.consume(K, M, 4, NOW).remaining == 2
    refused = store.consume(K, M, 4, NOW)
    assert (refused.allowed, refused.remaining) == (False, 2)
    assert refused.retry_after == pytest.approx(day_end(NOW) - NOW)
    last = store.consume(K, M, 2, NOW)
    assert (last.allowed, last.remaining) == (True, 0)


def test_budget_resets_on_the_next_utc_day(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=100.0, burst=100, daily_budget=3))
    assert store.consume(K, M, 3, NOW).allowed
    assert not store.consume(K, M, 1, day_end(NOW) - 0.001).allowed
    tomorrow = store.consume(K, M, 3, day_end(NOW))
    assert (tomorrow.allowed, tomorrow.remaining) == (True, 0)


def test_a_refused_request_consumes_nothing(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=1.0, burst=1, daily_budget=5))
    assert not store.consume(K, M, 6, NOW).allowed  # over budget: the token stays
    ok = store.consume(K, M, 5, NOW)
    assert (ok.allowed, ok.remaining) == (True, 0)
    store2 = make_store(fixed(rate=1.0, burst=1, daily_budget=5))
    assert store2.consume("fedcba9876543210", M, 1, NOW).allowed
    assert not store2.consume("fedcba9876543210", M, 1, NOW).allowed  # out of tokens: budget stays
    assert store2.consume("fedcba9876543210", M, 1, NOW + 1).remaining == 3


def test_pairs_are_independent(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=1.0, burst=1))
    assert store.consume(K, M, 1, NOW).allowed
    assert not store.consume(K, M, 1, NOW).allowed
    assert store.consume(K, "other", 1, NOW).allowed
    assert store.consume("fedcba9876543210", M, 1, NOW).allowed


def test_limits_are_resolved_per_pair(make_store: MakeStore) -> None:
    def limits_for(key_id: str, model: str) -> QuotaLimits:
        return QuotaLimits(rate=1.0, burst=2 if model == "big" else 1, daily_budget=100)

    store = make_store(limits_for)
    assert [store.consume(K, "big", 1, NOW).allowed for _ in range(3)] == [True, True, False]
    assert [store.consume(K, "small", 1, NOW).allowed for _ in range(2)] == [True, False]


def test_a_clock_going_backwards_mints_no_tokens(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=1.0, burst=1))
    assert store.consume(K, M, 1, NOW).allowed
    assert not store.consume(K, M, 1, NOW - 50).allowed  # a replica with a slow clock
    assert not store.consume(K, M, 1, NOW + 0.5).allowed
    assert store.consume(K, M, 1, NOW + 1).allowed


def test_concurrent_consumers_are_refused_exactly_past_the_limit(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=1e-6, burst=10, daily_budget=1_000))
    with ThreadPoolExecutor(max_workers=16) as pool:
        decisions = list(pool.map(lambda _: store.consume(K, M, 1, NOW), range(60)))
    assert sum(d.allowed for d in decisions) == 10
    budget_store = make_store(fixed(rate=1e6, burst=1_000, daily_budget=25))
    with ThreadPoolExecutor(max_workers=16) as pool:
        decisions = list(pool.map(lambda _: budget_store.consume("fedcba9876543210", M, 1, NOW), range(60)))
    assert sum(d.allowed for d in decisions) == 25
    assert min(d.remaining for d in decisions) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=3, allow_nan=False), st.integers(min_value=1, max_value=4)),
        min_size=1, max_size=30,
    ),
    rate=st.sampled_from([0.5, 1.0, 4.0]),
    burst=st.integers(min_value=1, max_value=5),
)
def test_never_more_than_burst_plus_refill_and_budget(
    make_store: MakeStore, steps: list[tuple[float, int]], rate: float, burst: int
) -> None:
    budget = 20
    store = make_store(fixed(rate=rate, burst=burst, daily_budget=budget))
    key = uuid.uuid4().hex[:16]  # a fresh pair per example (hypothesis may replay one)
    start = now = float(int(NOW // DAY_SECONDS) * DAY_SECONDS)  # stays within one UTC day
    allowed = spent = 0
    for dt, cost in steps:
        now += dt
        decision = store.consume(key, M, cost, now)
        if decision.allowed:
            allowed, spent = allowed + 1, spent + cost
            assert decision.remaining == budget - spent
        else:
            assert decision.retry_after > 0
    assert allowed <= burst + rate * (now - start) + 1e-9
    assert spent <= budget


def test_throttle_lowers_a_keys_rate_and_burst_until_it_ends(make_store: MakeStore) -> None:
    store = make_store(fixed(rate=100.0, burst=50, daily_budget=1_000))
    other = "fedcba9876543210"
    assert store.consume(K, M, 1, NOW).allowed
    store.throttle(K, rate=0.5, burst=1, until=NOW + 100.0)
    assert store.consume(K, M, 1, NOW).allowed  # the bucket is cut to the lowered burst (1 token)
    refused = store.consume(K, M, 1, NOW)
    assert not refused.allowed and refused.retry_after == pytest.approx(2.0)
    assert store.consume(K, "other-model", 1, NOW).allowed  # every model of the key: 1 token there too
    assert not store.consume(K, "other-model", 1, NOW).allowed
    assert all(store.consume(other, M, 1, NOW).allowed for _ in range(10))  # other keys keep their limits
    assert store.consume(K, M, 1, NOW + 2.0).allowed and not store.consume(K, M, 1, NOW + 2.0).allowed
    after = NOW + 100.0  # ended: the normal rate refills again
    assert [store.consume(K, M, 1, after + 1.0).allowed for _ in range(20)] == [True] * 20
