"""Rollouts through the app: sticky canary, shadow, blue/green, rollback, kill switch, cut-out, metrics."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lifecycle.artifacts import WEIGHTS_NAME
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import create_key
from serving.rollout.router import Router, canary_bucket
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.serving.conftest import bearer

ROWS = [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0], [-2.0, 0.1, 0.3, -4.0], [1.0, 1.0, 1.0, 1.0],
        [-0.5, 2.5, -1.5, 0.7], [4.0, -4.0, 0.0, 2.0]]
BODY = {"instances": ROWS}


class Clock:
    """A settable clock (seconds) so that refresh intervals and windows never sleep."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Exploding:
    """A model runtime whose run fails, as a broken deployment would."""

    num_classes = 2

    def logits(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")


@pytest.fixture
def store(registry: Registry) -> DeploymentStore:
    """demo:1 deployed as stable, then demo:2 published (not yet served)."""
    publish_model(registry, make_publication())
    deployments = DeploymentStore(registry)
    deployments.adopt("demo", actor="serve")
    publish_model(registry, make_publication(seed=3))
    return deployments


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings() -> ServingSettings:
    return ServingSettings(quota_rate=1000, quota_burst=1000, kill_min_requests=4, kill_error_rate=0.5)


@pytest.fixture
def rollout_app(store: DeploymentStore, settings: ServingSettings, clock: Clock) -> FastAPI:
    return create_app(store.registry, settings, clock=clock)


@pytest.fixture
def http(rollout_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(rollout_app) as client:
        yield client


@pytest.fixture
def admin(registry: Registry) -> dict[str, str]:
    return bearer(create_key(registry, "admin", "ops"))


def router_of(app: FastAPI) -> Router:
    router: Router = app.state.fedguard.deployments
    return router


def labels(app: FastAPI, version: int) -> list[Any]:
    model = router_of(app)._cache[("demo", version)]
    return list(model.predict(np.asarray(ROWS, dtype=np.float32)))


def metric(client: TestClient, name: str, **labels_: str) -> float:
    """One sample of /metrics (0 if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels_.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric_name, _, rest = series.partition("{")
        given = ",".join(sorted(part for part in rest.rstrip("}").split(",") if part))
        if metric_name == name and given == wanted:
            return float(value)
    return 0.0


def test_canary_split_is_sticky_and_within_tolerance() -> None:
    keys = [f"{i:016x}" for i in range(4000)]
    in_canary = {k for k in keys if canary_bucket(k, "demo", 7) < 10.0}
    assert 0.08 <= len(in_canary) / len(keys) <= 0.12  # binomial sd 0.005: far inside, deterministic keys
    assert in_canary == {k for k in keys if canary_bucket(k, "demo", 7) < 10.0}, "same key, same side"
    assert in_canary <= {k for k in keys if canary_bucket(k, "demo", 7) < 25.0}, "raising the weight keeps them"
    redrawn = {k for k in keys if canary_bucket(k, "demo", 8) < 10.0}
    assert len(in_canary & redrawn) < len(in_canary) / 2, "a new rollout draws another sample"


def test_router_sends_the_weight_share_of_keys_to_the_canary(rollout_app: FastAPI, store: DeploymentStore) -> None:
    router = router_of(rollout_app)
    store.canary("demo", 2, 20, actor="ops")
    router.refresh(force=True)
    keys = [f"{i:016x}" for i in range(2000)]
    versions = [router.route("demo", k).model.version for k in keys]
    assert 0.17 <= versions.count(2) / len(keys) <= 0.23
    assert versions == [router.route("demo", k).model.version for k in keys]


def test_canary_answers_over_http_and_is_counted(http: TestClient, rollout_app: FastAPI, admin: dict[str, str],
                                                 registry: Registry) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 1
    response = http.post("/v1/admin/models/demo/canary", json={"version": 2, "weight": 100}, headers=admin)
    assert response.status_code == 200, response.text
    assert response.json()["shares"] == {"1": 0.0, "2": 100.0}
    answer = http.post("/v1/models/demo/predict", json=BODY, headers=key).json()
    assert answer["version"] == 2 and answer["predictions"] == labels(rollout_app, 2)
    assert metric(http, "fedguard_served_predictions_total", model="demo", version="2", role="canary") == 1
    assert metric(http, "fedguard_served_predictions_total", model="demo", version="1", role="stable") == 1
    assert metric(http, "fedguard_traffic_share_percent", model="demo", version="2") == 100


def test_shadow_is_compared_and_never_returned(http: TestClient, rollout_app: FastAPI, admin: dict[str, str],
                                               registry: Registry) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    assert http.post("/v1/admin/models/demo/shadow", json={"version": 2}, headers=admin).status_code == 200
    for _ in range(3):
        answer = http.post("/v1/models/demo/predict", json=BODY, headers=key).json()
        assert answer["version"] == 1 and answer["predictions"] == labels(rollout_app, 1)
    router_of(rollout_app).drain()
    expected = sum(a == b for a, b in zip(labels(rollout_app, 1), labels(rollout_app, 2), strict=True))
    assert metric(http, "fedguard_shadow_instances_total", model="demo", version="2") == 3 * len(ROWS)
    assert metric(http, "fedguard_shadow_agreements_total", model="demo", version="2") == 3 * expected
    assert metric(http, "fedguard_served_predictions_total", model="demo", version="2", role="canary") == 0


class Stalled(Executor):
    """An executor that accepts work and never runs it: a shadow that cannot keep up."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        return Future()


def test_a_slow_or_broken_shadow_never_holds_the_answer(store: DeploymentStore, registry: Registry) -> None:
    store.shadow("demo", 2, actor="ops")
    settings = ServingSettings(shadow_max_pending=2)
    router = Router.open(registry, settings, executor=Stalled())
    batch = np.asarray(ROWS, dtype=np.float32)
    policy = settings.output_policy("demo")
    for _ in range(5):
        route = router.route("demo", "0" * 16)
        assert route.model.version == 1 and route.shadow is not None
        route.predict(batch, policy)
    assert router.metrics.shadow_dropped.labels("demo", "queue-full")._value.get() == 3
    broken = Router.open(registry, ServingSettings())
    live = broken.live["demo"]
    assert live.candidate is not None
    broken.live["demo"] = dataclasses.replace(live, candidate=dataclasses.replace(live.candidate, runtime=Exploding()))
    fields = broken.route("demo", "0" * 16).predict(batch, policy)
    broken.drain()
    assert len(fields["predictions"]) == len(ROWS)
    assert broken.metrics.shadow_dropped.labels("demo", "shadow-failed")._value.get() == 1


def test_blue_green_promote_and_rollback(http: TestClient, admin: dict[str, str], registry: Registry) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    promoted = http.post("/v1/admin/models/demo/promote", json={"version": 2}, headers=admin)
    assert promoted.status_code == 200 and promoted.json()["stable_version"] == 2
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 2
    assert http.get("/v1/models", headers=key).json()["models"][0]["version"] == 2
    assert http.post("/v1/admin/models/demo/rollback", headers=admin).json()["stable_version"] == 1
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 1
    conflict = http.post("/v1/admin/models/demo/promote", headers=admin)
    assert conflict.status_code == 409 and "no candidate" in conflict.json()["error"]["message"]
    assert http.post("/v1/admin/models/demo/rollback", headers=key).status_code == 403
    assert http.post("/v1/admin/models/nope/rollback", headers=admin).status_code == 404
    listed = http.get("/v1/admin/models/demo/deployments", headers=admin).json()
    assert [e["action"] for e in listed["history"]] == ["adopt", "promote", "rollback"]
    assert listed["history"][1]["actor"].startswith("apikey:") and listed["history"][1]["shares"] == {"2": 100.0}
    assert listed["state"]["stable_version"] == 1 and listed["state"]["previous_version"] == 2


def test_a_tampered_version_cannot_be_deployed(http: TestClient, admin: dict[str, str], registry: Registry) -> None:
    weights = registry.get_version("demo", 2).artifact.model_dir / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    for path, body in (("canary", {"version": 2, "weight": 5}), ("shadow", {"version": 2}), ("kill", {"pin": 2})):
        refused = http.post(f"/v1/admin/models/demo/{path}", json=body, headers=admin)
        assert refused.status_code == 409 and "does not verify" in refused.json()["error"]["message"]
    assert DeploymentStore(registry).state("demo").revision == 1


def test_kill_answers_503_or_the_pinned_version_then_revive(http: TestClient, admin: dict[str, str],
                                                             registry: Registry) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    killed = http.post("/v1/admin/models/demo/kill", json={"reason": "drill"}, headers=admin)
    assert killed.status_code == 200 and killed.json()["shares"] == {}
    refused = http.post("/v1/models/demo/predict", json=BODY, headers=key)
    assert refused.status_code == 503
    assert refused.json()["error"] == {"code": "unavailable",
                                       "message": "this model is switched off for now; try again later"}
    assert metric(http, "fedguard_kill_switch_engaged", model="demo", mode="503") == 1
    assert http.post("/v1/admin/models/demo/kill", json={"pin": 2}, headers=admin).status_code == 200
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 2
    assert metric(http, "fedguard_served_predictions_total", model="demo", version="2", role="pinned") == 1
    assert http.post("/v1/admin/models/demo/revive", headers=admin).status_code == 200
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 1
    assert 'fedguard_kill_switch_engaged{mode="",model="demo"} 0.0' in http.get("/metrics").text.splitlines()


def test_a_change_by_another_replica_arrives_after_the_refresh_interval(
        http: TestClient, store: DeploymentStore, clock: Clock, registry: Registry) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).status_code == 200
    store.kill("demo", actor="other-replica")  # straight to the registry, as another machine would
    clock.now += 0.1
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).status_code == 200
    clock.now += 0.2  # past deploy_refresh_seconds (0.25): the next request starts a refresh, none waits for it
    assert _eventually(lambda: http.post("/v1/models/demo/predict", json=BODY, headers=key).status_code) == 503
    store.revive("demo", actor="other-replica")
    clock.now += 0.3  # an idle replica's scrape refreshes too: the gauge is current without a predict
    assert 'fedguard_kill_switch_engaged{mode="",model="demo"} 0.0' in http.get("/metrics").text.splitlines()
    store.kill("demo", actor="other-replica")
    clock.now -= 3600  # a clock stepped back must not stall the refresh
    assert metric(http, "fedguard_kill_switch_engaged", model="demo", mode="503") == 1


def _eventually(probe: Callable[[], int], seconds: float = 1.0) -> int:
    """``probe()`` repeated until it answers other than 200 or ``seconds`` of real time pass.

    ``seconds`` is the kill switch's bound.
    """
    deadline = time.monotonic() + seconds
    answer = probe()
    while answer == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
        answer = probe()
    return answer


def break_stable(app: FastAPI) -> None:
    """Test hook: make the served stable version's forward pass fail."""
    router = router_of(app)
    live = router.live["demo"]
    assert live.stable is not None
    router.live["demo"] = dataclasses.replace(live, stable=dataclasses.replace(live.stable, runtime=Exploding()))


@pytest.mark.parametrize("pins", [{}, {"demo": 2}])
def test_error_rate_cut_out_trips_the_kill_switch(store: DeploymentStore, registry: Registry, clock: Clock,
                                                  pins: dict[str, int]) -> None:
    settings = ServingSettings(kill_min_requests=4, kill_error_rate=0.5, kill_pins=pins)
    app = create_app(registry, settings, clock=clock)
    key = bearer(create_key(registry, "predict", "app"))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/v1/models/demo/predict", json=BODY, headers=key).status_code == 200
        break_stable(app)
        bad = {"instances": [[1.0]]}  # 422s are the caller's fault: they never count
        assert all(client.post("/v1/models/demo/predict", json=bad, headers=key).status_code == 422 for _ in range(5))
        statuses = [client.post("/v1/models/demo/predict", json=BODY, headers=key).status_code for _ in range(3)]
        assert statuses == [500, 500, 500]  # the 3rd failure makes 3 of 4 outcomes (>= 50%, >= 4): the trip
        after = client.post("/v1/models/demo/predict", json=BODY, headers=key)
        assert after.status_code == (200 if pins else 503)
        if pins:
            assert after.json()["version"] == 2
        assert metric(client, "fedguard_kill_switch_trips_total", model="demo", source="error-rate") == 1
    last = DeploymentStore(registry).history("demo")[-1]
    assert (last.action, last.source, last.actor) == ("kill", "error-rate", "serve:error-rate")
    assert last.reason == "3 of the last 4 predictions failed (75% >= 50%)"


def test_trip_is_the_hook_for_other_monitors(rollout_app: FastAPI, http: TestClient, registry: Registry) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    rollout_app.state.fedguard.deployments.trip("demo", "PSI 0.41 on f2", "drift")
    assert http.post("/v1/models/demo/predict", json=BODY, headers=key).status_code == 503
    last = DeploymentStore(registry).history("demo")[-1]
    assert (last.source, last.reason) == ("drift", "PSI 0.41 on f2")


def test_a_hand_built_state_still_routes(registry: Registry, published: VersionRecord) -> None:
    from serving.guards.quotas import create_quota_store
    from serving.models import load_served_models
    from serving.state import ServingState

    settings = ServingSettings()
    models = load_served_models(registry)
    state = ServingState(registry=registry, settings=settings, models=models, quotas=create_quota_store(settings))
    assert state.deployments.route("demo", "0" * 16).model.version == 1
