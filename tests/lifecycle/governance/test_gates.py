"""Gates at publication and on demand: every criterion measured on the registry and the signed ML-BOM."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from lifecycle.bom import read_bom, read_lineage
from lifecycle.errors import ConfigurationError
from lifecycle.governance.gates import evaluate, latest_decisions
from lifecycle.governance.policies import PolicyStore
from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint
from lifecycle.packaging import Publication, publish_model
from lifecycle.registry import Registry, SiteRecord, check_lineage
from tests.conftest import make_publication
from tests.lifecycle.governance.sample import SAMPLE

MARK = {"scheme": "trigger-set", "verified": True, "trigger_accuracy": 1.0, "p_value": 1e-9, "commitment": "ab" * 32}


def crafted(*, accuracy: float, record_eps: tuple[float | None, float | None], site_eps: tuple[float, float],
            attribute: str, gap: float, drift: float, audit: bool | None, mark: dict[str, Any]) -> Publication:
    """``make_publication`` with the metrics, ε (both kinds) and watermark every criterion reads."""
    pub = make_publication()
    sites = [SiteRecord(f"site-{i}", 10 + i, f"{i:064x}", eps, 1e-5, 1) for i, eps in enumerate(record_eps)]
    training = {**pub.training, "sites": [
        {"site": s.site, "num_examples": s.num_examples, "data_manifest": s.data_manifest, "dp": {"epsilon": s.epsilon},
         "site_dp": {"epsilon": eps, "delta": 1e-3}} for s, eps in zip(sites, site_eps, strict=True)]}
    metrics: dict[str, Any] = {
        "accuracy": accuracy, "test_examples": 100,
        "fairness": {"attribute": attribute, "grouping": "split at the held-out median 0.5", "examples": 100,
                     "demographic_parity_difference": gap, "equalized_odds_difference": gap},
        "drift": {"statistic": "psi", "max": drift, "feature": "f3", "against": "reference"},
    }
    if audit is not None:
        metrics["privacy_audit"] = {"passed": audit, "epsilon_lower_bound": 0.5, "epsilon": 3.0}
    return dataclasses.replace(pub, sites=sites, training=training, metrics=metrics, watermark=mark)


GOOD = dict(accuracy=0.95, record_eps=(1.0, 2.0), site_eps=(4.0, 9.0), attribute="f1", gap=0.05, drift=0.1,
            audit=True, mark=MARK)
BAD = dict(accuracy=0.5, record_eps=(1.0, None), site_eps=(4.0, 12.0), attribute="f2", gap=0.05, drift=0.3,
           audit=None, mark={"scheme": "none", "verified": False})


def _results(registry: Registry, version: int, stage: str) -> dict[str, tuple[bool, Any]]:
    (decision,) = [d for d in latest_decisions(registry, "demo", version) if d.report.stage == stage]
    return {r.criterion: (r.passed, r.measured) for r in decision.report.results}


def test_publication_evaluates_every_criterion_and_signs_the_summary(registry: Registry) -> None:
    PolicyStore(registry).set("demo", SAMPLE, actor="cli:alice")
    good = publish_model(registry, crafted(**GOOD))  # type: ignore[arg-type]
    bad = publish_model(registry, crafted(**BAD))  # type: ignore[arg-type]
    assert _results(registry, good.version, "production") == {
        "min-accuracy": (True, 0.95), "max-record-epsilon": (True, 2.0), "max-site-epsilon": (True, 9.0),
        "signature-verified": (True, True), "watermark-verified": (True, True),
        "max-demographic-parity-difference": (True, 0.05), "max-equalized-odds-difference": (True, 0.05),
        "consent-clean": (True, True), "privacy-audit-passed": (True, True)}
    assert _results(registry, good.version, "staging")["max-drift"] == (True, 0.1)
    assert _results(registry, bad.version, "production") == {
        "min-accuracy": (False, 0.5), "max-record-epsilon": (False, None), "max-site-epsilon": (False, 12.0),
        "signature-verified": (True, True), "watermark-verified": (False, False),
        "max-demographic-parity-difference": (False, None), "max-equalized-odds-difference": (False, None),
        "consent-clean": (True, True), "privacy-audit-passed": (False, None)}
    assert _results(registry, bad.version, "staging")["max-drift"] == (False, 0.3)
    decisions = latest_decisions(registry, "demo", bad.version)
    assert [(d.report.stage, d.trigger, d.actor, d.report.policy_version) for d in decisions] == [  # newest first
        ("production", "publish", "service:coordinator", 1), ("staging", "publish", "service:coordinator", 1)]
    governance = read_lineage(read_bom(bad.artifact.model_dir))["governance"]
    assert governance["policy_version"] == 1 and len(governance["policy_digest"]) == 64
    production = governance["stages"]["production"]
    assert production["passed"] is False and production["pending"] == ["signature-verified"]
    assert [f["criterion"] for f in production["failing"]] == [
        "min-accuracy", "max-record-epsilon", "max-site-epsilon", "watermark-verified",
        "max-demographic-parity-difference", "max-equalized-odds-difference", "privacy-audit-passed"]
    assert production["failing"][0] | {"evidence": ""} == {"criterion": "min-accuracy", "measured": 0.5,
                                                           "threshold": 0.92, "evidence": ""}
    assert read_lineage(read_bom(good.artifact.model_dir))["governance"]["stages"]["production"]["passed"] is True
    check_lineage(bad, read_bom(bad.artifact.model_dir))  # the registry still agrees with the signed BOM
    assert "## Governance at publication" in (bad.artifact.model_dir / "MODEL_CARD.md").read_text()


def test_without_a_policy_the_default_gates_are_signature_and_consent(published: Any, registry: Registry) -> None:
    decisions = latest_decisions(registry, "demo", 1)
    assert {d.report.stage for d in decisions} == {"staging", "production"}
    for d in decisions:
        assert d.report.passed and d.report.policy_version is None
        assert [r.criterion for r in d.report.results] == ["signature-verified", "consent-clean"]
    governance = read_lineage(read_bom(published.artifact.model_dir))["governance"]
    assert governance["policy_version"] is None and governance["stages"]["production"]["passed"] is True


def test_a_tampered_artifact_and_a_taint_fail_the_gates_when_evaluated_again(published: Any,
                                                                             registry: Registry) -> None:
    with registry.transaction() as session:
        withdrawal = ConsentWithdrawal(site="site-1", scope="site", actor="cli:ops", source="operator")
        session.add(withdrawal)
        session.flush()
        assert withdrawal.id is not None
        session.add(ModelTaint(model_version_id=1, withdrawal_id=withdrawal.id))
    card = published.artifact.model_dir / "MODEL_CARD.md"
    card.chmod(0o644)
    card.write_text("edited")
    report = evaluate(registry, "demo", 1, "production", environment="clinic-north", trigger="manual",
                      actor="cli:bob")
    assert not report.passed and [r.criterion for r in report.failing] == ["signature-verified", "consent-clean"]
    assert "MODEL_CARD.md" in report.failing[0].evidence
    assert report.failing[1].evidence == f"tainted by consent withdrawal(s) #{withdrawal.id} (site site-1)"
    latest = latest_decisions(registry, "demo", 1)
    assert [(d.report.stage, d.report.environment, d.trigger) for d in latest] == [
        ("production", "clinic-north", "manual"), ("production", "", "publish"), ("staging", "", "publish")]
    assert all(d.created_at.utcoffset() == timedelta(0) for d in latest)  # aware UTC on SQLite too
    with registry.engine.connect() as conn:
        details = json.loads(conn.execute(text("SELECT details_json FROM audit_event WHERE action = "
                                               "'gates.evaluated' ORDER BY id DESC LIMIT 1")).scalar_one())
    assert details == {"stage": "production", "environment": "clinic-north", "trigger": "manual",
                       "policy_version": None, "passed": False, "failing": ["signature-verified", "consent-clean"]}
    assert registry.checkpoint_log.read()[-1].checkpoint.events == registry.verify_audit_chain()


def test_a_whole_site_withdrawal_fails_consent_in_the_summary_of_a_new_publication(registry: Registry) -> None:
    with registry.transaction() as session:
        session.add(ConsentWithdrawal(site="site-0", scope="site", actor="cli:ops", source="operator"))
    version = publish_model(registry, make_publication())
    failing = read_lineage(read_bom(version.artifact.model_dir))["governance"]["stages"]["staging"]["failing"]
    assert failing == [{"criterion": "consent-clean", "measured": False, "threshold": True,
                        "evidence": "tainted by consent withdrawal(s) #1 (site site-0)"}]


def test_an_unknown_stage_is_a_configuration_error(published: Any, registry: Registry) -> None:
    with pytest.raises(ConfigurationError, match="unknown stage 'prod'"):
        evaluate(registry, "demo", 1, "prod", actor="user:ops")
