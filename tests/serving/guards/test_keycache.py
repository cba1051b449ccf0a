"""The per-process key cache: what it may answer, and how late a revocation made elsewhere arrives."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

import serving.guards.auth as auth_module
from lifecycle.errors import ConfigurationError
from lifecycle.registry import Registry, VersionRecord
from serving.app import create_app
from serving.guards.auth import resolve_key
from serving.guards.keycache import KeyCache
from serving.guards.keys import (
    AuthenticationError,
    CreatedKey,
    KeyInfo,
    authenticate,
    create_key,
    hash_secret,
    revoke_key,
)
from serving.settings import ServingSettings, build_settings
from tests.serving.conftest import bearer

PREDICT = "/v1/models/demo/predict"
GOOD = {"instances": [[0.5, -1.0, 2.0, 0.0]]}
T0 = 1_800_000_000.0


class Clock:
    """A settable clock for create_app(clock=...)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_revocation_elsewhere_is_honoured_within_the_cache_bound(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey
) -> None:
    clock = Clock()
    settings = ServingSettings(auth_cache_seconds=1.0, quota_burst=100)
    with TestClient(create_app(registry, settings, clock=clock)) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        revoke_key(registry, predict_key.info.key_id)  # e.g. the CLI, or another replica
        clock.now += 0.5
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        clock.now += 0.5  # exactly auth_cache_seconds after the look-up
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 401


def test_revocation_through_this_server_is_at_once(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, admin_key: CreatedKey
) -> None:
    with TestClient(create_app(registry, ServingSettings(auth_cache_seconds=60), clock=Clock())) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        revoked = client.post(f"/v1/admin/keys/{predict_key.info.key_id}/revoke", headers=bearer(admin_key))
        assert revoked.status_code == 200
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 401


def test_a_wrong_secret_is_never_answered_from_the_cache(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey
) -> None:
    with TestClient(create_app(registry, ServingSettings(auth_cache_seconds=60), clock=Clock())) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        forged = predict_key.key[:-4] + ("AAAA" if not predict_key.key.endswith("AAAA") else "BBBB")
        assert client.post(PREDICT, json=GOOD, headers=bearer(forged)).status_code == 401
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200


def test_expiry_is_checked_on_every_hit(registry: Registry, published: VersionRecord) -> None:
    created = create_key(registry, "predict", "short", expires_in=timedelta(minutes=1),
                         now=datetime.fromtimestamp(T0, UTC))
    clock = Clock(T0 + 59.5)
    with TestClient(create_app(registry, ServingSettings(auth_cache_seconds=60), clock=clock)) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(created)).status_code == 200
        clock.now = T0 + 60
        assert client.post(PREDICT, json=GOOD, headers=bearer(created)).status_code == 401


def test_cache_unit_bounds_and_disabling(registry: Registry) -> None:
    keys = [create_key(registry, "predict", f"k{i}") for i in range(3)]
    cache = KeyCache(ttl=10, max_entries=2)
    for key in keys:
        cache.remember(key.key, key.info, T0)
    assert cache.lookup(keys[0].key, T0) is None  # the oldest was dropped past max_entries
    assert cache.lookup(keys[2].key, T0 + 9.9) == keys[2].info
    assert cache.lookup(keys[2].key, T0 + 10) is None
    assert cache.lookup(keys[2].key, T0 - 1) is None  # a clock that went back does not extend trust
    assert cache.lookup("not-a-key", T0) is None and cache.lookup(None, T0) is None
    off = KeyCache(ttl=0)
    off.remember(keys[1].key, keys[1].info, T0)
    assert off.lookup(keys[1].key, T0) is None


def test_an_expired_cached_key_raises(registry: Registry) -> None:
    created = create_key(registry, "predict", "e", expires_in=timedelta(minutes=1), now=datetime.fromtimestamp(T0, UTC))
    cache = KeyCache(ttl=600)
    cache.remember(created.key, created.info, T0)
    with pytest.raises(AuthenticationError, match="expired"):
        cache.lookup(created.key, T0 + 61)
    assert cache.lookup(created.key, T0 + 1) is None  # forgotten once expired


def test_the_bound_comes_from_the_environment_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_settings().auth_cache_seconds == 1.0
    monkeypatch.setenv("FEDGUARD_SERVE_AUTH_CACHE_SECONDS", "0")
    assert build_settings().auth_cache_seconds == 0.0
    for bad in ("-1", "61", "nan"):
        monkeypatch.setenv("FEDGUARD_SERVE_AUTH_CACHE_SECONDS", bad)
        with pytest.raises(ConfigurationError, match="auth_cache_seconds"):
            build_settings()


def test_a_key_in_use_is_re_read_before_its_bound_so_a_revocation_arrives_early(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey
) -> None:
    clock = Clock()
    settings = ServingSettings(auth_cache_seconds=1.0, quota_burst=100)
    app = create_app(registry, settings, clock=clock)
    state = app.state.fedguard
    with TestClient(app) as client:
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        revoke_key(registry, predict_key.info.key_id)
        clock.now += 0.6  # past half the bound: answered from the cache, and one re-read starts
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 200
        deadline = time.monotonic() + 10
        while state.key_cache.lookup(predict_key.key, clock.now) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.post(PREDICT, json=GOOD, headers=bearer(predict_key)).status_code == 401  # before 1 s


def test_concurrent_misses_share_one_registry_query(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(registry, ServingSettings(auth_cache_seconds=60), clock=Clock())
    state = app.state.fedguard
    queries: list[str | None] = []

    def counting(registry: Registry, presented: str | None, now: datetime) -> KeyInfo:
        queries.append(presented)
        time.sleep(0.05)  # a slow registry: every caller arrives while the first query runs
        return authenticate(registry, presented, now=now)

    monkeypatch.setattr(auth_module, "authenticate", counting)

    async def burst() -> list[KeyInfo]:
        return await asyncio.gather(*(resolve_key(state, predict_key.key) for _ in range(20)))

    infos = asyncio.run(burst())
    assert queries == [predict_key.key]
    assert all(info == predict_key.info for info in infos)
    assert state.key_lookups == {}  # nothing left behind

    async def bad_burst() -> list[BaseException | KeyInfo]:
        forged = predict_key.key[:-1] + ("A" if not predict_key.key.endswith("A") else "B")
        return await asyncio.gather(*(resolve_key(state, forged) for _ in range(5)), return_exceptions=True)

    queries.clear()
    outcomes = asyncio.run(bad_burst())
    assert len(queries) == 1 and all(isinstance(o, AuthenticationError) for o in outcomes)


def test_a_refresh_lost_with_its_event_loop_does_not_block_later_ones(registry: Registry) -> None:
    created = create_key(registry, "predict", "r")
    cache = KeyCache(ttl=1.0)
    cache.remember(created.key, created.info, T0)
    assert cache.begin_refresh(created.info.key_id, T0 + 0.6)
    assert not cache.begin_refresh(created.info.key_id, T0 + 0.7)  # one at a time
    # That refresh never ends (its event loop went away); the entry expires and a miss re-reads it.
    cache.remember(created.key, created.info, T0 + 1.0)
    assert not cache.begin_refresh(created.info.key_id, T0 + 1.55)  # the lost one is younger than the bound
    assert cache.begin_refresh(created.info.key_id, T0 + 1.7)  # past it: another may start
    cache.end_refresh(created.info.key_id)
    cache.remember(created.key, created.info, T0 + 1.7)
    assert cache.begin_refresh(created.info.key_id, T0 + 2.3)


def test_a_lookup_left_by_another_event_loop_is_not_awaited(
    registry: Registry, published: VersionRecord, predict_key: CreatedKey
) -> None:
    app = create_app(registry, ServingSettings(auth_cache_seconds=60), clock=Clock())
    state = app.state.fedguard

    async def strand() -> None:  # a look-up whose loop closes before it completes
        asyncio.get_running_loop().create_task(asyncio.sleep(0))
        state.key_lookups[hash_secret(predict_key.key)] = asyncio.get_running_loop().create_task(asyncio.sleep(3600))

    asyncio.run(strand())
    info = asyncio.run(resolve_key(state, predict_key.key))  # another loop: a fresh query
    assert info == predict_key.info
