"""The console's model actions over HTTP: promote, demote, canary weight, roll back, kill and revive.

Each one must change what the registry says serves (the state every replica
reads) and be written to the audit trail under the operator's key
(``apikey:<key id>``), exactly as the CLI's command of the same name would
under the operator's user.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from fedguard.console import full_sources
from lifecycle.governance.stages import StageStore
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry, VersionRecord
from lifecycle.registry.tables import AuditEvent
from serving.app import create_app
from serving.guards.keys import CreatedKey
from serving.settings import ServingSettings
from tests.conftest import make_publication
from tests.serving.console.fixtures import csrf_of, origin, sign_in


@pytest.fixture
def admin(registry: Registry, published: VersionRecord, admin_key: CreatedKey) -> Iterator[TestClient]:
    """An operator signed in to a console whose server adopted demo:1; demo:2 is published after it started."""
    app = create_app(registry, ServingSettings(), console_sources=full_sources(registry))
    with TestClient(app, base_url="http://testserver") as client:
        sign_in(client, admin_key.key)
        publish_model(registry, make_publication(seed=1))
        yield client


def _act(client: TestClient, action: str, **fields: str) -> str:
    """Submit one of the model page's forms as the browser does; the answer's text (fails unless 200)."""
    token = csrf_of(client, "/console/models/demo")
    answer = client.post(f"/console/models/demo/{action}", data={"csrf_token": token, "confirm": "yes", **fields},
                         headers=origin(client))
    assert answer.status_code == 200, answer.text
    return answer.text


def _audited(registry: Registry, key: CreatedKey) -> list[tuple[str, str]]:
    """(action, subject) of every audit event written under the operator's key, oldest first."""
    with Session(registry.engine) as session:
        rows = session.exec(select(AuditEvent).where(AuditEvent.actor == f"apikey:{key.info.key_id}")
                            .order_by(col(AuditEvent.id))).all()
    return [(row.action, row.subject) for row in rows if row.action != "console.signin"]


def test_promote_then_roll_back(admin: TestClient, registry: Registry, admin_key: CreatedKey) -> None:
    deployments = DeploymentStore(registry)
    assert deployments.state("demo").stable_version == 1
    assert "promoted demo:2 to staging" in _act(admin, "promote", version="2", to="staging", env="default")
    assert "promoted demo:2 to production" in _act(admin, "promote", version="2", to="production", env="default")
    assert deployments.state("demo").stable_version == 2
    assert StageStore(registry).stage("demo", 2, "default") == "production"
    assert "rolled demo back" in _act(admin, "rollback", env="default")
    assert deployments.state("demo").stable_version == 1
    assert _audited(registry, admin_key) == [  # each promotion evaluates the stage's gates first, as the CLI's
        ("gates.evaluated", "demo:2"), ("stage.promoted", "demo:2"), ("gates.evaluated", "demo:2"),
        ("stage.promoted", "demo:2"), ("deployment.promote", "demo"), ("deployment.rollback", "demo")]


def test_demote(admin: TestClient, registry: Registry, admin_key: CreatedKey) -> None:
    _act(admin, "promote", version="2", to="staging", env="default")
    assert "demoted demo:2" in _act(admin, "demote", version="2", env="default", reason="failed review")
    assert StageStore(registry).stage("demo", 2, "default") == "registered"
    assert _audited(registry, admin_key)[-1] == ("stage.demoted", "demo:2")


def test_canary_weight(admin: TestClient, registry: Registry, admin_key: CreatedKey) -> None:
    assert "demo:2 answers 25% of keys" in _act(admin, "canary", version="2", weight="25", env="default")
    state = DeploymentStore(registry).state("demo")
    assert (state.stable_version, state.candidate_version, state.candidate_mode, state.canary_weight) == (
        1, 2, "canary", 25.0)
    assert _audited(registry, admin_key) == [("deployment.canary", "demo")]
    page = admin.get("/console/models/demo").text
    assert "canary version 2 at 25%" in page


@pytest.mark.parametrize("weight", ["150", "-1", "ten"])
def test_a_canary_weight_out_of_range_changes_nothing(admin: TestClient, registry: Registry, weight: str) -> None:
    token = csrf_of(admin, "/console/models/demo")
    answer = admin.post("/console/models/demo/canary", data={"csrf_token": token, "confirm": "yes", "version": "2",
                                                              "weight": weight}, headers=origin(admin))
    assert answer.status_code == 400 and "percentage between 0 and 100" in answer.text
    assert DeploymentStore(registry).state("demo").candidate_version is None


def test_kill_and_revive(admin: TestClient, registry: Registry, admin_key: CreatedKey) -> None:
    assert "killed demo" in _act(admin, "kill", env="default", reason="bad answers")
    state = DeploymentStore(registry).state("demo")
    assert state.killed and state.kill_reason == "bad answers"
    assert "revived demo" in _act(admin, "revive", env="default")
    assert not DeploymentStore(registry).state("demo").killed
    assert _audited(registry, admin_key) == [("deployment.kill", "demo"), ("deployment.revive", "demo")]
