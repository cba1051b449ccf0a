"""Stages per environment (issue 14, points 2, 3 and 8), on SQLite and PostgreSQL: promote, refuse, override, demote."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session, col, select

from lifecycle.errors import ConfigurationError, GovernanceError, NotFoundError
from lifecycle.governance import gates, stages
from lifecycle.governance.approvals import approvals, approve
from lifecycle.governance.decisions import CriterionResult, GateReport
from lifecycle.governance.operator import ApproverKey
from lifecycle.governance.stages import Override, StageStore
from lifecycle.governance.tables import Approval, ConsentWithdrawal, GateDecision, ModelTaint, StageEvent
from lifecycle.packaging import publish_model
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.registry.tables import AuditEvent, ModelVersion
from lifecycle.settings import Settings
from tests.conftest import make_publication

NORTH, SOUTH = "clinic-north", "clinic-south"


def add_versions(registry: Registry, count: int) -> None:
    """Register ``count`` more versions of 'demo' over the same signed artifact (no signing: fast)."""
    first = registry.get_version("demo", 1)
    for _ in range(count):
        registry.publish(name="demo", artifact=first.artifact, signer_fingerprint=first.signer_fingerprint,
                         run_id=uuid.uuid4().hex, run_config={}, rounds=1, sites=list(first.sites),
                         metrics=first.metrics, watermark=first.watermark, actor="test")


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    """demo:1, demo:2 and demo:3 (one signed artifact), on each backend."""
    opened = Registry.open(backend_settings)
    publish_model(opened, make_publication())
    add_versions(opened, 2)
    yield opened
    opened.engine.dispose()


@pytest.fixture
def store(registry: Registry) -> StageStore:
    return StageStore(registry)


def failing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gate evaluation fails on accuracy (as a declared min-accuracy criterion would)."""
    def evaluate(registry: Registry, name: str, version: int, stage: str, **kwargs: Any) -> GateReport:
        return GateReport(name, version, stage, kwargs.get("environment", ""), None, (
            CriterionResult("signature-verified", True, True, True, "ok"),
            CriterionResult("min-accuracy", False, 0.5, 0.9, "metrics.accuracy")))

    monkeypatch.setattr(gates, "evaluate", evaluate)


def taint(registry: Registry, version: int) -> None:
    with registry.transaction() as session:
        withdrawal = ConsentWithdrawal(site="site-0", scope="site", actor="test", source="operator")
        session.add(withdrawal)
        session.flush()
        row = session.exec(select(ModelVersion).where(ModelVersion.version == version)).one()
        session.add(ModelTaint(model_version_id=row.id, withdrawal_id=withdrawal.id))


def failed_decision(registry: Registry, version: int, environment: str) -> None:
    """A stored production decision of ``demo:version`` that failed on accuracy."""
    with registry.transaction() as session:
        row = session.exec(select(ModelVersion).where(ModelVersion.version == version)).one()
        assert row.id is not None
        session.add(GateDecision(model_version_id=row.id, stage="production", environment=environment,
                                 trigger="publish", passed=False, actor="test",
                                 criteria_json='[{"criterion": "min-accuracy", "passed": false}]'))


def actions(registry: Registry, prefix: str) -> list[str]:
    with Session(registry.engine) as session:
        return [e.action for e in session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
                if e.action.startswith(prefix)]


def test_promotions_per_environment_serve_several_versions_at_once(store: StageStore, registry: Registry) -> None:
    staged = store.promote("demo", 1, to="staging", environment=NORTH, actor="cli:ops")
    assert (staged.from_stage, staged.to_stage, staged.deployment) == ("registered", "staging", None)
    assert store.stage("demo", 1, NORTH) == "staging" and store.stage("demo", 1, SOUTH) == "registered"
    north = store.promote("demo", 1, to="production", environment=NORTH, actor="cli:ops")
    south = store.promote("demo", 2, to="production", environment=SOUTH, actor="cli:ops")  # skipping staging
    assert north.gates.passed and north.deployment is not None and north.deployment.stable_version == 1
    assert south.deployment is not None and south.deployment.stable_version == 2
    assert DeploymentStore(registry, NORTH).state("demo").stable_version == 1
    assert DeploymentStore(registry, SOUTH).state("demo").stable_version == 2
    assert DeploymentStore(registry).revisions() == {}, "the default environment is untouched"
    replaced = store.promote("demo", 3, to="production", environment=NORTH, actor="cli:ops")
    assert replaced.replaced == 1 and store.stage("demo", 1, NORTH) == "staging"
    state = DeploymentStore(registry, NORTH).state("demo")
    assert (state.stable_version, state.previous_version) == (3, 1)
    assert store.live("demo") == {NORTH: {"staging": [1], "production": [3]}, SOUTH: {"production": [2]}}
    assert [(r.version, r.from_stage, r.to_stage) for r in store.history("demo", environment=NORTH)] == [
        (1, "registered", "staging"), (1, "staging", "production"), (3, "registered", "production"),
        (1, "production", "staging")]
    assert all(r.gate_decision_id is not None for r in store.history("demo") if r.actor == "cli:ops"
               and r.from_stage != "production")
    assert store.environments("demo") == [NORTH, SOUTH]
    assert actions(registry, "stage.") == ["stage.promoted"] * 4 + ["stage.demoted"]
    assert registry.verify_audit_chain() > 0
    with pytest.raises(ConfigurationError, match="already in production"):
        store.promote("demo", 3, to="staging", environment=NORTH, actor="cli:ops")


def test_a_failing_gate_refuses_with_every_criterion_named_and_changes_nothing(
        store: StageStore, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    failing(monkeypatch)
    with pytest.raises(GovernanceError, match=r"min-accuracy \(measured 0.5, threshold 0.9\).*--override") as info:
        store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops")
    assert info.value.exit_code == 11 and "\n" not in str(info.value)
    assert store.stage("demo", 2, NORTH) == "registered" and store.history("demo") == []
    assert DeploymentStore(registry, NORTH).revisions() == {}
    assert actions(registry, "stage.") == []


def test_a_tainted_version_fails_its_consent_gate(store: StageStore, registry: Registry) -> None:
    taint(registry, 2)
    with pytest.raises(GovernanceError, match=r"consent-clean \(measured False, threshold True\)"):
        store.promote("demo", 2, to="staging", environment=NORTH, actor="cli:ops")
    assert store.stage("demo", 2, NORTH) == "registered"


def test_an_override_needs_a_reason_and_is_an_audit_event_of_its_own(
        store: StageStore, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    failing(monkeypatch)
    failed_decision(registry, 2, "")  # failed at publication; the override below answers it
    key = ApproverKey.generate("Dr A. Jones")
    with pytest.raises(ConfigurationError, match="reason"):
        store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops", override=Override(key, " "))
    result = store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops",
                           override=Override(key, "urgent clinical need, reviewed by the board"))
    assert result.override and result.approvals == (key.fingerprint,)
    assert DeploymentStore(registry, NORTH).state("demo").stable_version == 2
    (event,) = store.history("demo")
    assert event.override and event.reason.startswith("urgent") and key.fingerprint[:16] in event.actor
    assert actions(registry, "stage.") == ["stage.override"]
    (record,) = approvals(registry, "demo", 2)
    assert (record.kind, record.used, record.approver_name) == ("override", True, "Dr A. Jones")
    # The deployment paths honour the override in NORTH only, where the failed decision was overridden.
    DeploymentStore(registry, NORTH).kill("demo", pin=2, actor="ops")
    DeploymentStore(registry, SOUTH).kill("demo", pin=1, actor="ops")
    with pytest.raises(GovernanceError, match=r"production gates failed at publication \(decision #\d+: min-accuracy"):
        DeploymentStore(registry, SOUTH).kill("demo", pin=2, actor="ops")


def test_production_needs_n_approvals_by_distinct_keys_each_used_once(
        store: StageStore, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stages, "required_approvals", lambda registry, name, stage: 2 if stage == "production" else 0)
    alice, bob = ApproverKey.generate("Alice"), ApproverKey.generate("Bob")
    approve(registry, "demo", 2, stage="production", environment=NORTH, key=alice)
    with pytest.raises(ConfigurationError, match="already approved"):
        approve(registry, "demo", 2, stage="production", environment=NORTH, key=alice)
    approve(registry, "demo", 2, stage="production", environment=SOUTH, key=bob)  # another environment: no count
    with pytest.raises(GovernanceError, match="1 of the 2 signed approval"):
        store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops")
    approve(registry, "demo", 2, stage="production", environment=NORTH, key=bob)
    result = store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops")
    assert set(result.approvals) == {alice.fingerprint, bob.fingerprint}
    with Session(registry.engine) as session:
        used = session.exec(select(Approval.environment, Approval.used).order_by(col(Approval.id))).all()
    assert used == [(NORTH, True), (SOUTH, False), (NORTH, True)]
    store.demote("demo", 2, environment=NORTH, actor="cli:ops", reason="recheck")
    with pytest.raises(GovernanceError, match="0 of the 2"):  # approvals were used up by the first promotion
        store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops")
    assert store.promote("demo", 2, to="staging", environment=SOUTH, actor="cli:ops").to_stage == "staging"


def test_demotion_restores_a_clean_previous_version_or_kills(store: StageStore, registry: Registry) -> None:
    store.promote("demo", 1, to="production", environment=NORTH, actor="cli:ops")
    store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops")
    back = store.demote("demo", 2, environment=NORTH, actor="cli:ops", reason="wrong calibration")
    assert (back.from_stage, back.to_stage, back.restored) == ("production", "staging", 1)
    assert back.deployment is not None and back.deployment.stable_version == 1 and not back.deployment.killed
    assert store.live("demo") == {NORTH: {"production": [1], "staging": [2]}}
    store.promote("demo", 3, to="production", environment=NORTH, actor="cli:ops")
    taint(registry, 1)
    killed = store.demote("demo", 3, environment=NORTH, actor="cli:ops", reason="drift")
    assert killed.restored is None and killed.deployment is not None and killed.deployment.killed
    assert "no clean previous production version" in killed.deployment.kill_reason
    assert store.stage("demo", 1, NORTH) == "staging"
    assert store.demote("demo", 3, environment=NORTH, actor="cli:ops").to_stage == "registered"
    with pytest.raises(ConfigurationError, match="nothing to demote"):
        store.demote("demo", 3, environment=NORTH, actor="cli:ops")
    revived = store.promote("demo", 2, to="production", environment=NORTH, actor="cli:ops")
    assert revived.deployment is not None and not revived.deployment.killed, "governance's own kill is released"
    assert revived.deployment.stable_version == 2
    with Session(registry.engine) as session:
        assert session.exec(select(StageEvent).where(StageEvent.override)).all() == []


def test_bad_input_is_refused_before_anything_changes(store: StageStore) -> None:
    cases: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"to": "prod", "environment": NORTH}, ConfigurationError),
        ({"to": "registered", "environment": NORTH}, ConfigurationError),
        ({"to": "staging", "environment": "Clinic North"}, ConfigurationError),
        ({"to": "staging", "environment": NORTH, "version": 9}, NotFoundError),
        ({"to": "staging", "environment": NORTH, "name": "nope"}, NotFoundError),
    ]
    for case, error in cases:
        name, version = case.pop("name", "demo"), case.pop("version", 1)
        with pytest.raises(error):
            store.promote(name, version, actor="cli:ops", **case)
    with pytest.raises(ConfigurationError):
        store.demote("demo", 1, environment=NORTH, to="gold", actor="cli:ops")
    assert store.history("demo") == []
