"""Two real uvicorn replicas sharing one PostgreSQL registry and one Redis quota store (issue 5, point 10)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from lifecycle.errors import StateError
from lifecycle.packaging import publish_model
from lifecycle.registry import Registry
from lifecycle.settings import Settings
from serving.guards.keys import create_key, list_keys
from serving.guards.quotas.factory import limits_resolver
from serving.guards.quotas.redis import RedisQuotaStore
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.serving.conftest import bearer
from tests.serving.guards.quotas.conftest import REDIS_URL
from tests.serving.test_integration import running

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.redis]
PREDICT = "/v1/models/demo/predict"
BODY = {"instances": [[0.5, -1.0, 2.0, 0.0]]}
T0 = 1_800_000_000.0


class Clock:
    """One settable clock for both replicas (quotas and the key cache read it)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registries(pg_url: str, tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    """Two Registry objects (two engines, as in two processes) on one PostgreSQL database and one home."""
    settings = Settings(home=tmp_path / "home", database_url=pg_url)
    first = Registry.open(settings)
    publish_model(first, make_publication())
    second = Registry.open(settings)
    yield first, second
    first.engine.dispose()
    second.engine.dispose()


def test_two_replicas_share_keys_revocations_and_quotas(registries: tuple[Registry, Registry]) -> None:
    registry_a, registry_b = registries
    prefix = f"fedguard-test:{uuid.uuid4().hex}:"
    settings = ServingSettings(quota_backend="redis", redis_url=REDIS_URL, quota_prefix=prefix, quota_burst=3,
                               quota_rate=0.001, auth_cache_seconds=1.0)
    shared = RedisQuotaStore(limits_resolver(settings), REDIS_URL, prefix)  # to check and clean up
    try:
        shared.ping()
    except StateError as exc:
        pytest.fail(f"this test needs Redis at {REDIS_URL} (FEDGUARD_TEST_REDIS): {exc}", pytrace=False)
    clock = Clock()
    admin = create_key(registry_a, "admin", "ops")
    from_a = create_key(registry_a, "predict", "made-on-a")
    from_b = create_key(registry_b, "predict", "made-on-b")
    with ExitStack() as stack:
        port_a = stack.enter_context(running(registry_a, settings, clock))
        port_b = stack.enter_context(running(registry_b, settings, clock))
        a = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port_a}", timeout=10))
        b = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port_b}", timeout=10))
        try:
            # A key created through either registry is accepted by the other replica.
            assert b.post(PREDICT, json=BODY, headers=bearer(from_a)).status_code == 200
            assert a.post(PREDICT, json=BODY, headers=bearer(from_b)).status_code == 200

            # Quotas over Redis are shared: a burst of 3 for the pair (from_a, demo), across both replicas.
            assert a.post(PREDICT, json=BODY, headers=bearer(from_a)).status_code == 200
            assert b.post(PREDICT, json=BODY, headers=bearer(from_a)).status_code == 200
            refused = a.post(PREDICT, json=BODY, headers=bearer(from_a))
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            assert b.post(PREDICT, json=BODY, headers=bearer(from_a)).status_code == 429
            assert shared.consume(from_a.info.key_id, "demo", 1, clock()).allowed is False  # one bucket in Redis

            # A revocation through A's admin endpoint: A refuses at once, B within auth_cache_seconds.
            assert b.post(PREDICT, json=BODY, headers=bearer(from_b)).status_code == 200  # B has it cached now
            revoked = a.post(f"/v1/admin/keys/{from_b.info.key_id}/revoke", headers=bearer(admin))
            assert revoked.json() == {"key_id": from_b.info.key_id, "revoked": True}
            assert a.post(PREDICT, json=BODY, headers=bearer(from_b)).status_code == 401
            clock.now += settings.auth_cache_seconds
            denied = b.post(PREDICT, json=BODY, headers=bearer(from_b))
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
            assert [k.revoked for k in list_keys(registry_b) if k.key_id == from_b.info.key_id] == [True]
        finally:
            shared.clear()
            shared.close()


def test_without_the_key_cache_a_revocation_reaches_the_other_replica_at_once(
    registries: tuple[Registry, Registry],
) -> None:
    registry_a, registry_b = registries
    settings = ServingSettings(auth_cache_seconds=0)
    admin = create_key(registry_a, "admin", "ops")
    user = create_key(registry_b, "predict", "user")
    with running(registry_a, settings) as port_a, running(registry_b, settings) as port_b, \
            httpx.Client(timeout=10) as http:
        assert http.post(f"http://127.0.0.1:{port_b}{PREDICT}", json=BODY, headers=bearer(user)).status_code == 200
        url = f"http://127.0.0.1:{port_a}/v1/admin/keys/{user.info.key_id}/revoke"
        assert http.post(url, headers=bearer(admin)).status_code == 200
        assert http.post(f"http://127.0.0.1:{port_b}{PREDICT}", json=BODY, headers=bearer(user)).status_code == 401
