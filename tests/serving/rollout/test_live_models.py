"""A running server follows the registry's live model set: taints, new deployments, and their guards.

In-process (TestClient) on a settable clock that never moves: the refresh
that the 0.25 s poll would run is forced by hand (``router.refresh(force=True)``),
so nothing sleeps and nothing refreshes behind the test's back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lifecycle.errors import StateError
from lifecycle.governance.objections import ObjectionStore
from lifecycle.governance.stages import StageStore
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from serving.app import create_app
from serving.guards.keys import create_key
from serving.guards.killswitch import WITHDRAWN_MESSAGE
from serving.guards.objections import ObjectionGuard, ObjectionsUnavailable
from serving.rollout.router import Router
from serving.settings import OutputPolicy, ServingSettings
from tests.conftest import make_publication
from tests.lifecycle.governance.test_stages import add_versions, taint
from tests.serving.conftest import bearer
from tests.serving.rollout.test_router import BODY, Clock

NORTH = "clinic-north"
LISTED = "MRN-000123"


class Server:
    """An app over ``registry`` with a predict key, its router, and a frozen clock."""

    def __init__(self, registry: Registry, settings: ServingSettings) -> None:
        self.app: FastAPI = create_app(registry, settings, clock=Clock())
        self.client = TestClient(self.app)
        self.key = bearer(create_key(registry, "predict", "app", actor="test"))
        self.router: Router = self.app.state.fedguard.deployments

    def predict(self, model: str = "demo", subject: str | None = None) -> Any:
        body: dict[str, Any] = dict(BODY) if subject is None else {**BODY, "subject_id": subject}
        return self.client.post(f"/v1/models/{model}/predict", json=body, headers=self.key)

    def listed(self) -> list[tuple[str, int]]:
        models = self.client.get("/v1/models", headers=self.key).json()["models"]
        return [(m["name"], m["version"]) for m in models]


def settings(**extra: Any) -> ServingSettings:
    return ServingSettings(quota_rate=1000, quota_burst=1000, **extra)


@pytest.fixture
def two(registry: Registry, published: VersionRecord) -> Registry:
    """demo:1 and demo:2 (one signed artifact); 'default' adopts demo:2 as stable."""
    add_versions(registry, 1)
    DeploymentStore(registry).adopt("demo", actor="serve")
    return registry


@pytest.fixture
def north(registry: Registry, published: VersionRecord) -> Iterator[Registry]:
    """demo:1 in production in clinic-north; 'other':1 published, not yet deployed there."""
    StageStore(registry).promote("demo", 1, to="production", environment=NORTH, actor="cli:ops")
    publish_model(registry, make_publication(name="other", seed=5))
    yield registry


def test_a_version_tainted_while_served_answers_503_at_the_next_refresh(two: Registry) -> None:
    server = Server(two, settings())
    assert server.predict().json()["version"] == 2
    taint(two, 2)  # a ModelTaint row only: the consent step that kills the deployment never ran
    assert DeploymentStore(two).state("demo").killed is False
    server.router.refresh(force=True)
    refused = server.predict()
    assert refused.status_code == 503 and refused.json()["error"]["message"] == WITHDRAWN_MESSAGE
    assert server.listed() == [], "a withdrawn model is not listed"


def test_a_tainted_candidate_is_dropped_and_stable_answers(two: Registry) -> None:
    DeploymentStore(two).canary("demo", 1, 100, actor="ops")
    server = Server(two, settings())
    assert server.predict().json()["version"] == 1  # the canary answers everyone
    taint(two, 1)
    server.router.refresh(force=True)
    assert server.predict().json()["version"] == 2
    assert server.router.live["demo"].candidate is None and ("demo", 1) in server.router._tainted


def test_a_model_blocked_at_startup_then_replaced_gets_its_objection_list(two: Registry) -> None:
    ObjectionStore(two).add("demo", "default", [LISTED], reason="letter", actor="cli:dpo")
    taint(two, 2)  # demo:2, the stable version, is never loaded: demo is not served at startup
    server = Server(two, settings())
    assert server.predict().status_code == 503
    assert server.predict(subject=LISTED).status_code == 403  # the guard follows every model the router holds
    DeploymentStore(two).promote("demo", 1, actor="ops")  # the clean version replaces it
    server.router.refresh(force=True)
    assert server.predict(subject=LISTED).status_code == 403, "scored a subject who objected"
    assert server.predict(subject="MRN-9").json()["version"] == 1
    assert server.listed() == [("demo", 1)]


def test_a_model_deployed_in_the_environment_after_startup_is_served_with_its_guards(north: Registry) -> None:
    ObjectionStore(north).add("other", NORTH, [LISTED], reason="letter", actor="cli:dpo")
    ranges = {"other": {"f0": (-10.0, 10.0)}}  # configured for a model registered but not yet deployed here
    server = Server(north, settings(environment=NORTH, feature_ranges=ranges))
    assert server.predict("other").status_code == 404
    StageStore(north).promote("other", 1, to="production", environment=NORTH, actor="cli:ops")
    server.router.refresh(force=True)
    assert server.predict("other").json() == {**server.predict("other").json(), "model": "other", "version": 1}
    assert server.predict("other", subject=LISTED).status_code == 403
    assert server.listed() == [("demo", 1), ("other", 1)]
    out_of_range = server.client.post("/v1/models/other/predict", json={"instances": [[99.0, 0.0, 0.0, 0.0]]},
                                      headers=server.key)
    assert out_of_range.status_code == 422 and "f0" in out_of_range.json()["error"]["message"]
    drift = server.app.state.fedguard.drift
    assert "other" in drift.monitors or "other" in drift.no_reference
    assert 'fedguard_models_served 2.0' in server.client.get("/metrics").text


def test_a_subject_for_a_model_without_a_loaded_list_is_refused_with_503(
        north: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(north, settings(environment=NORTH))
    guard: ObjectionGuard = server.app.state.fedguard.objections

    def down(environment: str) -> None:
        raise StateError("registry unreachable")

    monkeypatch.setattr(guard.store, "revisions", down)
    StageStore(north).promote("other", 1, to="production", environment=NORTH, actor="cli:ops")
    server.router.refresh(force=True)  # the list of 'other' fails to load (logged); the guard is not stale
    assert not guard.holds("other") and guard.holds("demo")
    assert server.predict("other", subject=LISTED).status_code == 503  # never scored on a list never read
    assert server.predict("other").status_code == 200
    with pytest.raises(ObjectionsUnavailable):
        guard.listed("other", LISTED)
    monkeypatch.undo()
    assert server.predict("other", subject=LISTED).status_code == 200  # the request loads it, then screens


def test_a_new_model_whose_guards_do_not_fit_answers_503_until_a_restart(north: Registry) -> None:
    server = Server(north, settings(environment=NORTH, outputs={"other": OutputPolicy(output_mode="top-k",
                                                                                       top_k=5)}))
    StageStore(north).promote("other", 1, to="production", environment=NORTH, actor="cli:ops")
    server.router.refresh(force=True)
    assert server.predict("other").status_code == 503
    assert "top_k is 5" in server.router._unprepared["other"]
    assert server.listed() == [("demo", 1)]
    assert server.predict().status_code == 200
