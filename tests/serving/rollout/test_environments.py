"""Serving an environment (issue 14, point 2) and governance on every deployment path (tainted, failed gates)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lifecycle.errors import GovernanceError, NotFoundError
from lifecycle.governance.stages import StageStore
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from serving import cli
from serving.app import create_app
from serving.guards.keys import create_key
from serving.rollout.cli import deploy_app
from serving.settings import ServingSettings
from tests.lifecycle.governance.test_stages import add_versions, failed_decision, taint
from tests.serving.conftest import bearer
from tests.serving.rollout.test_router import BODY

NORTH = "clinic-north"
app = typer.Typer()
app.add_typer(deploy_app, name="deploy")
app.command("serve")(cli.serve)
runner = CliRunner()


@pytest.fixture
def three(registry: Registry, published: VersionRecord) -> Registry:
    """demo:1..3; demo:1 in production in clinic-north, demo:3 (the newest) what 'default' adopts."""
    add_versions(registry, 2)
    StageStore(registry).promote("demo", 1, to="production", environment=NORTH, actor="cli:ops")
    return registry


@pytest.fixture
def north(three: Registry) -> Iterator[TestClient]:
    with TestClient(create_app(three, ServingSettings(environment=NORTH, quota_rate=1000, quota_burst=1000))) as c:
        yield c


def test_a_server_of_a_named_environment_serves_that_environments_version(three: Registry, north: TestClient) -> None:
    key = bearer(create_key(three, "predict", "app"))
    admin = bearer(create_key(three, "admin", "ops"))
    assert north.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 1
    canary = north.post("/v1/admin/models/demo/canary", json={"version": 2, "weight": 100}, headers=admin)
    assert canary.status_code == 200 and canary.json()["environment"] == NORTH
    assert north.post("/v1/models/demo/predict", json=BODY, headers=key).json()["version"] == 2
    assert DeploymentStore(three).revisions() == {}, "the default environment's deployment is untouched"
    taint(three, 3)
    refused = north.post("/v1/admin/models/demo/shadow", json={"version": 3}, headers=admin)
    assert refused.status_code == 409 and "consent was withdrawn" in refused.json()["error"]["message"]
    # the default environment never adopts the newest version, 3: its lineage is tainted, and demo is all there is
    with pytest.raises(NotFoundError, match="no model can be served in environment 'default'"):
        create_app(three, ServingSettings())
    assert DeploymentStore(three).revisions() == {}


def test_a_named_environment_without_deployments_is_refused(registry: Registry, published: VersionRecord) -> None:
    with pytest.raises(NotFoundError, match="no model is deployed in environment 'clinic-south'.*--env clinic-south"):
        create_app(registry, ServingSettings(environment="clinic-south"))


def test_deploy_commands_take_an_environment_and_governance_refuses(three: Registry) -> None:
    def deploy(*args: str) -> Any:
        result = runner.invoke(app, ["deploy", *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert [s["stable_version"] for s in deploy("status", "--env", NORTH)] == [1]
    assert deploy("canary", "demo", "2", "--weight", "10", "--env", NORTH)["shares"] == {"1": 90.0, "2": 10.0}
    taint(three, 3)
    tainted = runner.invoke(app, ["deploy", "canary", "demo", "3", "--env", NORTH])
    assert isinstance(tainted.exception, GovernanceError) and tainted.exception.exit_code == 11
    assert "withdrawal #" in str(tainted.exception)
    failed_decision(three, 2, NORTH)
    for args in (["promote", "demo", "--env", NORTH], ["kill", "demo", "--pin", "2", "--env", NORTH]):
        result = runner.invoke(app, ["deploy", *args])
        assert isinstance(result.exception, GovernanceError), result.output
        assert "production gates failed in 'clinic-north'" in str(result.exception)
    assert deploy("kill", "demo", "--pin", "2")["pinned_version"] == 2, "no failed decision in 'default'"
    assert [e["action"] for e in deploy("history", "demo", "--env", NORTH)] == ["promote", "canary"]
    assert deploy("status")[0]["environment"] == "default"


def test_serve_names_its_environment(three: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr("uvicorn.run", lambda served, **kwargs: calls.append(served))
    result = runner.invoke(app, ["serve", "--env", NORTH])
    assert result.exit_code == 0, result.output
    assert "serving in environment" in result.stderr and f"'{NORTH}'" in result.stderr
    assert calls[0].state.fedguard.deployments.store.environment == NORTH
    assert isinstance(runner.invoke(app, ["serve", "--env", "nowhere"]).exception, NotFoundError)
    assert len(calls) == 1
