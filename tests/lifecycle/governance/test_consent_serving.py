"""Two serving replicas on one registry answer a withdrawal per policy at their next refresh (in-process)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from lifecycle.errors import GovernanceError
from lifecycle.governance import consent
from lifecycle.governance.consent import ConsentStore
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.settings import Settings
from serving.app import create_app
from serving.guards.keys import create_key
from serving.guards.killswitch import WITHDRAWN_MESSAGE
from serving.rollout.router import Router
from serving.settings import ServingSettings
from tests.lifecycle.governance.consent_helpers import publish, stage
from tests.serving.conftest import bearer

BODY = {"instances": [[0.5, -1.0, 2.0, 0.0], [3.0, 3.0, -3.0, 1.0]]}


@pytest.fixture
def replicas(registry: Registry, fedguard_home: Path) -> Iterator[list[TestClient]]:
    """demo:1 (clean, guys) and demo:2 (st-marys and guys) stable, served by two replicas with their own registry."""
    publish(registry, ("guys",))
    publish(registry, ("st-marys", "guys"))
    DeploymentStore(registry).adopt("demo", actor="ops")  # the newest, 2, is stable
    settings = ServingSettings(quota_rate=1000, quota_burst=1000)
    with ExitStack() as stack:
        yield [stack.enter_context(TestClient(create_app(Registry.open(Settings(home=fedguard_home)), settings)))
               for _ in range(2)]


def answers(clients: list[TestClient], key: dict[str, str]) -> list[tuple[int, object]]:
    out = []
    for client in clients:
        router: Router = client.app.state.fedguard.deployments  # type: ignore[attr-defined]
        router.refresh(force=True)  # what the 0.25 s poll does
        response = client.post("/v1/models/demo/predict", json=BODY, headers=key).json()
        out.append((response.get("version", 0), response.get("error", {}).get("message")))
    return out


def test_block_answers_503_with_a_generic_reason_on_every_replica(registry: Registry,
                                                                   replicas: list[TestClient]) -> None:
    key = bearer(create_key(registry, "predict", "app"))
    assert answers(replicas, key) == [(2, None), (2, None)]
    ConsentStore(registry).withdraw("st-marys", scope="site", reason="consent withdrawn 2026-12-01", actor="ops")
    assert answers(replicas, key) == [(0, WITHDRAWN_MESSAGE)] * 2
    assert "st-marys" not in WITHDRAWN_MESSAGE
    with pytest.raises(GovernanceError, match="consent was withdrawn"):  # nor can a revive by hand
        DeploymentStore(registry).revive("demo", actor="ops")
    assert answers(replicas, key) == [(0, WITHDRAWN_MESSAGE)] * 2
    late = Router.open(registry, ServingSettings())  # a replica started after the withdrawal
    assert late.live["demo"].stable is None and ("demo", 2) in late._tainted


def test_replace_serves_the_newest_clean_version_on_every_replica(registry: Registry, replicas: list[TestClient],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consent, "on_taint_policy", lambda registry, name: "replace")
    stage(registry, 1)  # the replacement: clean, signed and staged in this environment
    key = bearer(create_key(registry, "predict", "app"))
    ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="ops")
    assert answers(replicas, key) == [(1, None), (1, None)]
