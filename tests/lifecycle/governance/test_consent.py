"""Consent withdrawal taints every version of the site's lineage at once, and production acts on it (issue 14.4)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlmodel import Session, col, select

from lifecycle.artifacts import WEIGHTS_NAME
from lifecycle.errors import ConfigurationError, NotFoundError
from lifecycle.governance import consent
from lifecycle.governance.consent import ConsentStore
from lifecycle.governance.gates import evaluate
from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint
from lifecycle.registry import DeploymentStore, Registry
from lifecycle.registry.tables import AuditEvent
from lifecycle.settings import Settings
from tests.lifecycle.governance.consent_helpers import publish

DIGEST = "ab" * 32


@pytest.fixture
def registry(backend_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(backend_settings)
    yield opened
    opened.engine.dispose()


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
    report = evaluate(registry, "demo", 1, "production")  # the gates see it
    assert [r.criterion for r in report.failing] == ["consent-clean"] and "#1" in report.failing[0].evidence
    assert evaluate(registry, "demo", 2, "production").passed


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
        ("blocked", "503 on every replica (no clean signed version to replace it)")]
    assert deployments.state("demo").killed


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
