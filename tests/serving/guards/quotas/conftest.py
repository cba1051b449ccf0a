"""Quota stores for the contract suite: every test runs once per backend.

The Redis backend uses a unique key prefix per test and deletes its keys
afterwards. If Redis is unreachable the Redis tests FAIL (they never skip): a
missing server must not pass silently as "all green".
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from serving.guards.quotas import MemoryQuotaStore, QuotaLimits, QuotaStore
from serving.guards.quotas.base import LimitsFor

REDIS_URL = os.environ.get("FEDGUARD_TEST_REDIS", "redis://127.0.0.1:6379/0")
MakeStore = Callable[[LimitsFor], QuotaStore]


def fixed(rate: float = 1.0, burst: int = 3, daily_budget: int = 1_000) -> LimitsFor:
    """A resolver giving every pair the same limits."""
    limits = QuotaLimits(rate=rate, burst=burst, daily_budget=daily_budget)
    return lambda key_id, model: limits


def redis_store_factory() -> tuple[MakeStore, Callable[[], None]]:
    """Make Redis stores under one fresh prefix; the second callable deletes their keys."""
    from serving.guards.quotas.redis import RedisQuotaStore

    prefix = f"fedguard-test:{uuid.uuid4().hex}:"
    made: list[RedisQuotaStore] = []

    def make(limits_for: LimitsFor) -> QuotaStore:
        store = RedisQuotaStore(limits_for, REDIS_URL, prefix)
        made.append(store)
        return store

    def cleanup() -> None:
        for store in made:
            store.clear()
            store.close()

    probe = RedisQuotaStore(fixed(), REDIS_URL, prefix)
    try:
        probe.ping()
    except Exception as exc:  # noqa: BLE001 - turned into a clear failure
        pytest.fail(
            f"the Redis quota tests need a Redis server at {REDIS_URL} (set FEDGUARD_TEST_REDIS to change it): {exc}",
            pytrace=False,
        )
    finally:
        probe.close()
    return make, cleanup


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """Builds a store of the parametrized backend from a limits resolver."""
    if request.param == "memory":
        yield MemoryQuotaStore
        return
    make, cleanup = redis_store_factory()
    try:
        yield make
    finally:
        cleanup()
