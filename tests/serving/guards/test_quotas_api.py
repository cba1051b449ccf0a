"""Quotas through the HTTP API: 429 and Retry-After, overrides, and replicas sharing Redis."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lifecycle.errors import ConfigurationError, StateError
from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import CreatedKey, create_key
from serving.guards.quotas import MemoryQuotaStore, QuotaLimits, create_quota_store, limits_resolver
from serving.guards.quotas.base import day_end
from serving.settings import ServingSettings, build_settings
from tests.serving.conftest import bearer
from tests.serving.guards.quotas.conftest import redis_store_factory

PREDICT = "/v1/models/demo/predict"
ONE = {"instances": [[0.5, -1.0, 2.0, 0.0]]}
TWO = {"instances": [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]}
NOW = 1_800_000_000.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def quota_settings(**limits: object) -> ServingSettings:
    return ServingSettings(max_instances=8, max_body_bytes=4096, **limits)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_client(registry: Registry, settings: ServingSettings, clock: FakeClock) -> TestClient:
    return TestClient(create_app(registry, settings, clock=clock))


def test_rate_limit_answers_429_with_retry_after(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, clock: FakeClock
) -> None:
    with make_client(registry, quota_settings(quota_rate=0.25, quota_burst=2), clock) as client:
        assert [client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code for _ in range(2)] == [200, 200]
        refused = client.post(PREDICT, json=ONE, headers=bearer(predict_key))
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "4"  # one token at 0.25/s
        assert refused.json()["error"]["code"] == "rate_limited"
        assert predict_key.info.key_id not in refused.text
        clock.now += 4
        assert client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code == 200


def test_daily_budget_counts_instances_and_waits_for_midnight(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, clock: FakeClock
) -> None:
    with make_client(registry, quota_settings(quota_daily_budget=3), clock) as client:
        assert client.post(PREDICT, json=TWO, headers=bearer(predict_key)).status_code == 200
        refused = client.post(PREDICT, json=TWO, headers=bearer(predict_key))  # 2 > 1 left
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) == int(day_end(NOW) - NOW)
        assert client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code == 200
        clock.now = day_end(NOW)
        assert client.post(PREDICT, json=TWO, headers=bearer(predict_key)).status_code == 200


def test_invalid_and_unauthenticated_requests_consume_nothing(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, clock: FakeClock
) -> None:
    with make_client(registry, quota_settings(quota_burst=1, quota_rate=0.001), clock) as client:
        assert client.post(PREDICT, json={"instances": [[1.0]]}, headers=bearer(predict_key)).status_code == 422
        assert client.post("/v1/models/nope/predict", json=ONE, headers=bearer(predict_key)).status_code == 404
        assert client.post(PREDICT, json=ONE).status_code == 401
        assert client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code == 200
        assert client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code == 429


def test_keys_have_separate_quotas_and_a_key_override_wins(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, clock: FakeClock
) -> None:
    vip = create_key(registry, "predict", "vip", actor="test")
    settings = quota_settings(
        quota_burst=1, quota_rate=0.001,
        model_quotas={"demo": {"burst": 2}},
        key_quotas={vip.info.key_id: {"burst": 5}},
    )
    with make_client(registry, settings, clock) as client:
        codes = [client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code for _ in range(3)]
        assert codes == [200, 200, 429]  # the model's override
        codes = [client.post(PREDICT, json=ONE, headers=bearer(vip)).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]  # the key's override


def test_limits_resolve_defaults_then_model_then_key() -> None:
    settings = quota_settings(
        quota_rate=3.0, quota_burst=4, quota_daily_budget=100,
        model_quotas={"demo": {"daily_budget": 50, "burst": 2}},
        key_quotas={"0123456789abcdef": {"burst": 9}},
    )
    limits_for = limits_resolver(settings)
    assert limits_for("fedcba9876543210", "other") == QuotaLimits(3.0, 4, 100)
    assert limits_for("fedcba9876543210", "demo") == QuotaLimits(3.0, 2, 50)
    assert limits_for("0123456789abcdef", "demo") == QuotaLimits(3.0, 9, 50)


def test_quota_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDGUARD_SERVE_QUOTA_BACKEND", "redis")
    monkeypatch.setenv("FEDGUARD_SERVE_QUOTA_DAILY_BUDGET", "7")
    monkeypatch.setenv("FEDGUARD_SERVE_KEY_QUOTAS", json.dumps({"0123456789abcdef": {"rate": 0.5}}))
    settings = build_settings()
    assert (settings.quota_backend, settings.quota_daily_budget) == ("redis", 7)
    assert limits_resolver(settings)("0123456789abcdef", "demo") == QuotaLimits(0.5, 20, 7)


@pytest.mark.parametrize(
    "name, value",
    [
        ("FEDGUARD_SERVE_QUOTA_BACKEND", "memcached"),
        ("FEDGUARD_SERVE_QUOTA_RATE", "0"),
        ("FEDGUARD_SERVE_MODEL_QUOTAS", '{"demo": {"burst": 0}}'),
        ("FEDGUARD_SERVE_KEY_QUOTAS", '{"k": {"burts": 3}}'),
    ],
)
def test_bad_quota_settings_are_configuration_errors(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match="invalid serving setting"):
        build_settings()


def test_factory_builds_the_memory_store_by_default() -> None:
    assert isinstance(create_quota_store(quota_settings()), MemoryQuotaStore)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_redis_stops_the_server_at_creation(registry: Registry, published: VersionRecord) -> None:
    settings = quota_settings(quota_backend="redis", redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    with pytest.raises(StateError, match="cannot reach the Redis quota store"):
        create_app(registry, settings)


def test_redis_failing_mid_flight_answers_503(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey
) -> None:
    from serving.guards.quotas.redis import RedisQuotaStore

    store = RedisQuotaStore(limits_resolver(quota_settings()), f"redis://127.0.0.1:{_closed_port()}/0")
    with TestClient(create_app(registry, quota_settings(), quota_store=store)) as client:
        response = client.post(PREDICT, json=ONE, headers=bearer(predict_key))
    assert response.status_code == 503 and response.json()["error"]["code"] == "unavailable"


def test_openapi_documents_429(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/v1/models/{name}/predict"]["post"]["responses"]["429"]
    assert "Retry-After" in answer["headers"]


# -- replicas -------------------------------------------------------------------------


@pytest.fixture
def redis_replicas(
    registry: Registry, published: VersionRecord
) -> Iterator[tuple[FastAPI, FastAPI]]:
    """Two apps, each with its own Redis connection, counting under one shared prefix."""
    make, cleanup = redis_store_factory()
    settings = quota_settings(quota_rate=1e-6, quota_burst=10, quota_daily_budget=25)
    limits_for = limits_resolver(settings)
    clock = FakeClock()
    try:
        yield (create_app(registry, settings, quota_store=make(limits_for), clock=clock),
               create_app(registry, settings, quota_store=make(limits_for), clock=clock))
    finally:
        cleanup()


def _hammer(apps: tuple[FastAPI, FastAPI], key: CreatedKey, body: dict[str, list[list[float]]], n: int) -> list[int]:
    with TestClient(apps[0]) as first, TestClient(apps[1]) as second:
        clients = (first, second)
        with ThreadPoolExecutor(max_workers=16) as pool:
            return list(pool.map(
                lambda i: clients[i % 2].post(PREDICT, json=body, headers=bearer(key)).status_code, range(n)
            ))


@pytest.mark.redis
def test_two_replicas_sharing_redis_refuse_exactly_past_the_rate_limit(
    redis_replicas: tuple[FastAPI, FastAPI], predict_key: CreatedKey
) -> None:
    codes = _hammer(redis_replicas, predict_key, ONE, 40)
    assert codes.count(200) == 10 and codes.count(429) == 30


@pytest.mark.redis
def test_two_replicas_sharing_redis_refuse_exactly_past_the_daily_budget(
    registry: Registry, redis_replicas: tuple[FastAPI, FastAPI]
) -> None:
    # Small requests: the bucket (10 requests) binds before the budget (12 two-instance requests).
    key = create_key(registry, "predict", "harvester", actor="test")
    codes = _hammer(redis_replicas, key, TWO, 30)
    assert codes.count(200) == 10 and codes.count(429) == 20
    other = create_key(registry, "predict", "bulk", actor="test")
    big = {"instances": TWO["instances"] * 4}  # 8-instance requests: the budget binds, 3 x 8 <= 25
    codes = _hammer(redis_replicas, other, big, 30)
    assert codes.count(200) == 3 and codes.count(429) == 27


def test_one_replica_in_memory_is_exact_under_concurrency(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, clock: FakeClock
) -> None:
    app = create_app(registry, quota_settings(quota_rate=1e-6, quota_burst=7), clock=clock)
    with TestClient(app) as client, ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda _: client.post(PREDICT, json=ONE, headers=bearer(predict_key)).status_code,
                              range(30)))
    assert codes.count(200) == 7 and codes.count(429) == 23
