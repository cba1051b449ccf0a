"""Consent withdrawal taints every version of the site's lineage at once, and production acts on it (issue 14.4)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import Session, col, select

from lifecycle.artifacts import WEIGHTS_NAME
from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.governance import consent
from lifecycle.governance.consent import ConsentStore
from lifecycle.governance.gates import evaluate
from lifecycle.governance.tables import ConsentWithdrawal, GateDecision, ModelTaint
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.registry.tables import AuditEvent, ModelVersion
from lifecycle.settings import Settings
from tests.lifecycle.governance.consent_helpers import publish, stage

DIGEST = "ab" * 32


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(backend_settings)
    yield opened
    opened.engine.dispose()


def _version_id(registry: Registry, version: int) -> int:
    with Session(registry.engine) as session:
        found = session.exec(select(ModelVersion.id).where(ModelVersion.version == version)).first()
        assert found is not None
        return int(found)


def _events(registry: Registry, action: str) -> list[dict[str, object]]:
    with Session(registry.engine) as session:
        rows = session.exec(select(AuditEvent).where(AuditEvent.action == action).order_by(col(AuditEvent.id))).all()
        return [{"subject": r.subject, **json.loads(r.details_json)} for r in rows]


def test_a_site_withdrawal_taints_its_whole_lineage_in_one_audited_transaction(registry: Registry) -> None:
    publish(registry, ("st-marys", "guys"))
    publish(registry, ("guys",), seed=1)
    publish(registry, ("st-marys",), name="other")
    store = ConsentStore(registry)
    result = store.withdraw("st-marys", scope="site", reason="consent withdrawn 2026-12-01", actor="cli:ops")
    assert result.tainted == ("demo:1", "other:1") and result.deployments == ()
    assert [(t.ref, t.withdrawal.id, t.withdrawal.scope) for t in store.tainted()] == [
        ("demo:1", 1, "site"), ("other:1", 1, "site")]
    assert [t.ref for t in store.tainted("demo")] == ["demo:1"] and store.tainted_versions("demo") == {1}
    assert [w.site for w in store.withdrawals()] == ["st-marys"] and store.withdrawals("guys") == []
    event = _events(registry, "consent.withdrawn")[-1]
    assert event["subject"] == "site:st-marys" and event["tainted"] == ["demo:1", "other:1"]
    assert (event["scope"], event["record_count"], event["source"]) == ("site", None, "coordinator")
    assert registry.verify_audit_chain() > 0
    report = evaluate(registry, "demo", 1, "production", actor="user:ops")  # the gates see it
    assert [r.criterion for r in report.failing] == ["consent-clean"] and "#1" in report.failing[0].evidence
    assert evaluate(registry, "demo", 2, "production", actor="user:ops").passed


def test_a_failure_after_the_first_taint_row_leaves_nothing(registry: Registry,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    publish(registry, ("st-marys",))
    publish(registry, ("st-marys",), seed=1)
    real, calls = consent._taint, []

    def failing(session: Session, version_id: int, withdrawal_id: int) -> None:
        if calls:
            raise RuntimeError("injected: the disk filled up")
        calls.append(version_id)
        real(session, version_id, withdrawal_id)

    monkeypatch.setattr(consent, "_taint", failing)
    with pytest.raises(RuntimeError, match="injected"):
        ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="cli:ops")
    assert calls  # the first taint row was written before the failure
    with Session(registry.engine) as session:
        assert session.exec(select(ConsentWithdrawal)).all() == []
        assert session.exec(select(ModelTaint)).all() == []
    assert _events(registry, "consent.withdrawn") == []


def test_records_taint_what_was_trained_before_a_whole_site_also_what_comes_after(registry: Registry) -> None:
    publish(registry, ("st-marys", "guys"))
    store = ConsentStore(registry)
    records = store.withdraw("st-marys", scope="records", record_count=3, records_digest=DIGEST, reason="3 patients",
                             actor="cli:ops")
    assert records.tainted == ("demo:1",) and records.withdrawal.record_count == 3
    publish(registry, ("st-marys", "guys"), seed=1)  # trained after: the site excluded those records
    assert store.tainted_versions("demo") == {1}
    store.withdraw("guys", scope="site", reason="left the consortium", actor="cli:ops")
    later = publish(registry, ("st-marys", "guys"), seed=2)
    assert store.tainted_versions("demo") == {1, 2, 3}
    assert [(t.version, t.withdrawal.site) for t in store.tainted("demo") if t.version == later.version] == [
        (3, "guys")]
    assert _events(registry, "consent.tainted")[-1] == {"subject": "demo:3", "at": "publication", "withdrawals": [2],
                                                         "sites": ["guys"]}
    clean = publish(registry, ("st-marys",), seed=3)
    assert clean.version not in store.tainted_versions("demo")


def test_bad_withdrawals_are_refused_and_leave_nothing(registry: Registry) -> None:
    publish(registry, ("st-marys",))
    store = ConsentStore(registry)
    with pytest.raises(NotFoundError, match="no site 'nowhere'"):
        store.withdraw("nowhere", scope="site", reason="r", actor="cli:ops")
    assert store.withdraw("enrolled-only", scope="site", reason="r", actor="cli:ops",
                          enrolled=["enrolled-only"]).tainted == ()  # enrolled, never trained: recorded, no taint
    for kwargs in ({"scope": "everything"}, {"scope": "records"}, {"scope": "records", "record_count": 2},
                   {"scope": "site", "record_count": 2}, {"scope": "site", "reason": " \n"}):
        with pytest.raises(ConfigurationError):
            store.withdraw("st-marys", **{"reason": "r", "actor": "cli:ops", **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="invalid site name"):
        store.withdraw("st marys\x00", scope="site", reason="r", actor="cli:ops")
    signed = store.withdraw("st-marys", scope="records", record_count=1, records_digest=DIGEST, reason="r",
                            actor="cli:ops", source="site", signature="c2lnbmF0dXJl", statement_json="{}")
    with pytest.raises(ConfigurationError, match=f"already recorded \\(withdrawal #{signed.withdrawal.id}\\)"):
        store.withdraw("st-marys", scope="records", record_count=1, records_digest=DIGEST, reason="r",
                       actor="cli:ops", source="site", signature="c2lnbmF0dXJl")
    store.withdraw("st-marys", scope="site", reason="all of it", actor="cli:ops")
    with pytest.raises(ConfigurationError, match="already withdrew its consent as a whole"):
        store.withdraw("st-marys", scope="records", record_count=1, records_digest=DIGEST, reason="r", actor="x")
    assert len(store.withdrawals()) == 3


def test_block_kills_every_deployment_serving_a_tainted_version(registry: Registry) -> None:
    publish(registry, ("st-marys", "guys"))
    publish(registry, ("guys",), name="other")
    for environment in ("default", "clinic-north"):
        DeploymentStore(registry, environment).adopt("demo", actor="serve")
    DeploymentStore(registry).adopt("other", actor="serve")
    result = ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="cli:ops")
    assert [(d.model, d.environment, d.action, d.policy) for d in result.deployments] == [
        ("demo", "clinic-north", "blocked", "block"), ("demo", "default", "blocked", "block")]
    for environment in ("default", "clinic-north"):
        store = DeploymentStore(registry, environment)
        state = store.state("demo")
        assert state.killed and state.kill_mode == "503"
        assert state.kill_reason == f"consent withdrawn by site st-marys (withdrawal #{result.withdrawal.id})"
        last = store.history("demo")[-1]
        assert (last.action, last.source, last.actor) == ("kill", "consent", "cli:ops")
    assert not DeploymentStore(registry).state("other").killed


def test_replace_makes_the_newest_clean_signed_version_stable(registry: Registry,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consent, "on_taint_policy", lambda registry, name: "replace")
    publish(registry, ("st-marys",))
    publish(registry, ("guys",), seed=1)  # 2: clean
    publish(registry, ("st-marys", "guys"), seed=2)  # 3: tainted, stable
    tampered = publish(registry, ("guys",), seed=3, fresh=True)  # 4: clean, its signature no longer verifies
    weights = tampered.artifact.model_dir / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    for version in (2, 4):
        stage(registry, version)
    publish(registry, ("guys",), seed=4)  # 5: clean and signed, but never staged in 'default': not a replacement
    deployments = DeploymentStore(registry)
    deployments.promote("demo", 3, actor="ops")
    deployments.canary("demo", 1, 10.0, actor="ops")
    result = ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="cli:ops")
    assert [(d.action, d.from_version, d.to_version) for d in result.deployments] == [("replaced", 3, 2)]
    state = deployments.state("demo")
    assert (state.stable_version, state.candidate_version, state.killed) == (2, None, False)
    assert deployments.history("demo")[-1].source == "consent"
    guys = ConsentStore(registry).withdraw("guys", scope="site", reason="r", actor="cli:ops")  # nothing clean left
    assert [(d.action, d.detail) for d in guys.deployments] == [
        ("blocked", "503 on every replica (no clean signed version at production or staging in 'default' "
                    "to replace it)")]
    assert deployments.state("demo").killed


def test_replace_refused_by_governance_kills_and_says_both_steps(registry: Registry,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consent, "on_taint_policy", lambda registry, name: "replace")
    clean = publish(registry, ("guys",))  # 1: clean, staged, but its production gates failed
    publish(registry, ("st-marys",), seed=1)  # 2: stable, tainted by the withdrawal
    stage(registry, 1)
    with registry.transaction() as session:
        session.add(GateDecision(model_version_id=_version_id(registry, clean.version), stage="production",
                                 environment="", trigger="publish", passed=False, actor="service:coordinator",
                                 criteria_json=json.dumps([{"criterion": "min-accuracy", "passed": False}])))
    DeploymentStore(registry).adopt("demo", actor="service:serve")
    result = ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="cli:ops")
    [outcome] = result.deployments
    assert (outcome.action, outcome.from_version, outcome.to_version) == ("blocked", 2, None)
    assert outcome.steps[0].startswith("replacement by version 1 refused: demo:1 cannot be deployed in 'default'")
    assert "min-accuracy" in outcome.steps[0] and outcome.steps[1] == "503 on every replica"
    assert outcome.detail.startswith("503 on every replica (replacement by version 1 refused")
    state = DeploymentStore(registry).state("demo")
    assert (state.killed, state.kill_mode, state.stable_version) == (True, "503", 2)
    kill = _events(registry, "deployment.kill")[-1]
    refused = kill["replacement_refused"]
    assert kill["source"] == "consent" and isinstance(refused, dict) and refused["version"] == 1


def test_a_failure_after_the_kill_leaves_nothing(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(registry, ("st-marys",))
    deployments = DeploymentStore(registry)
    deployments.adopt("demo", actor="service:serve")
    real = DeploymentStore.apply

    def failing(self: DeploymentStore, session: Session, *args: Any, **kwargs: Any) -> Any:
        real(self, session, *args, **kwargs)  # the kill is written in the withdrawal's session ...
        raise RuntimeError("injected: the process died")  # ... and then the transaction fails

    monkeypatch.setattr(DeploymentStore, "apply", failing)
    with pytest.raises(RuntimeError, match="injected"):
        ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="cli:ops")
    monkeypatch.undo()
    with Session(registry.engine) as session:
        assert session.exec(select(ConsentWithdrawal)).all() == []
        assert session.exec(select(ModelTaint)).all() == []
    state = deployments.state("demo")
    assert not state.killed and state.revision == 1 and [e.action for e in deployments.history("demo")] == ["adopt"]
    assert _events(registry, "consent.withdrawn") == [] and _events(registry, "deployment.kill") == []
    assert registry.verify_audit_chain() > 0


def test_a_tainted_candidate_alone_is_dropped(registry: Registry) -> None:
    publish(registry, ("st-marys",))
    publish(registry, ("guys",), seed=1)
    deployments = DeploymentStore(registry)
    deployments.adopt("demo", actor="serve")
    deployments.shadow("demo", 1, actor="ops")
    result = ConsentStore(registry).withdraw("st-marys", scope="site", reason="r", actor="cli:ops")
    assert [(d.action, d.from_version) for d in result.deployments] == [("candidate-dropped", 2)]
    state = deployments.state("demo")
    assert (state.stable_version, state.candidate_version, state.killed) == (2, None, False)
