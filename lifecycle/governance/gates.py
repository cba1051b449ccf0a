"""Evaluating a version against a stage's declared criteria, and storing the decision.

:func:`evaluate` measures every criterion of the model's current policy for
one stage (:mod:`lifecycle.governance.criteria`) on what the registry and the
signed ML-BOM say about the version, stores the decision with the policy
version it was taken under, records the audit event ``gates.evaluated`` and
signs an audit checkpoint. It runs when a model is published (trigger
``publish``), on every promotion (``promote``) and on demand (``fedguard
models gates --evaluate``: ``manual``). :func:`latest_decisions` reads them
back for ``models gates``, ``models show``, ``audit trace`` and the console.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from lifecycle import audit, logger
from lifecycle.errors import ConfigurationError, FedguardError
from lifecycle.governance.criteria import Facts, measure
from lifecycle.governance.decisions import REGISTERED, STAGES, CriterionResult, GateReport
from lifecycle.governance.policies import current_policy
from lifecycle.governance.policy import Policy
from lifecycle.governance.tables import ConsentWithdrawal, GateDecision, ModelTaint
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import ModelVersion, RegisteredModel, aware


@dataclass(frozen=True)
class StoredDecision:
    """A gate decision as stored: the report, and when, why and by whom it was taken."""

    id: int
    report: GateReport
    trigger: str
    actor: str
    created_at: datetime
    """Aware, in UTC, on every backend."""

    def to_dict(self) -> dict[str, Any]:
        return {**self.report.to_dict(), "id": self.id, "trigger": self.trigger, "actor": self.actor,
                "created_at": self.created_at.isoformat()}



def _version_id(session: Session, name: str, version: int) -> int:
    row = session.exec(
        select(ModelVersion.id).join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
        .where(RegisteredModel.name == name, ModelVersion.version == version)
    ).first()
    assert row is not None
    return int(row)


def _signature(registry: Registry, record: VersionRecord) -> tuple[bool, str]:
    from lifecycle.signing import verify_model

    try:
        verify_model(record.artifact.model_dir, record.artifact.signature_path, registry.public_key_path())
    except FedguardError as exc:
        return False, str(exc)
    return True, f"OpenSSF model signature by {record.signer_fingerprint[:16]}"


def _withdrawals(session: Session, version_id: int) -> list[str]:
    rows = session.exec(
        select(ConsentWithdrawal.id, ConsentWithdrawal.site)
        .join(ModelTaint, col(ModelTaint.withdrawal_id) == col(ConsentWithdrawal.id))
        .where(ModelTaint.model_version_id == version_id).order_by(col(ConsentWithdrawal.id))
    ).all()
    return [f"#{wid} (site {site})" for wid, site in rows]


def _signed_facts(record: VersionRecord) -> tuple[dict[str, Any] | None, dict[str, float | None] | None, str]:
    """The signed BOM's training section and each site's record-level ε, or why they cannot be read."""
    from lifecycle.bom import read_bom, read_lineage, signed_sites
    from lifecycle.errors import StateError

    try:
        bom = read_bom(record.artifact.model_dir)
        training: dict[str, Any] = read_lineage(bom)["training"]
    except (StateError, KeyError, TypeError, ValueError) as exc:
        return None, None, str(exc)
    rows = signed_sites(bom)
    if rows is None:  # a BOM from before CycloneDX 1.6: the training section lists the sites
        rows = {str(s.get("site")): {"epsilon": (s.get("dp") or {}).get("epsilon")}
                for s in training.get("sites", [])}
    return training, {site: row.get("epsilon") for site, row in rows.items()}, ""


CONSENT = "consent-clean"


def implied(criteria: tuple[tuple[str, Any], ...], stage: str) -> tuple[tuple[str, Any], ...]:
    """``criteria`` with ``consent-clean`` added for ``staging`` and ``production`` when the policy omits it.

    Consent is not a policy choice (GDPR Art. 7(3): a withdrawal must take
    effect): a version whose lineage holds withdrawn data fails every stage's
    gates, whatever the policy declares (``consent-clean = false`` included),
    and only a signed override lets it through.
    """
    if stage == REGISTERED or any(key == CONSENT for key, _ in criteria):
        return criteria
    return (*criteria, (CONSENT, True))


def evaluate(registry: Registry, name: str, version: int, stage: str, *, actor: str, environment: str = "",
             trigger: str = "promote") -> GateReport:
    """Evaluate ``name:version`` against ``stage``'s criteria; store the decision with an audit event.

    ``actor`` is required (an identity string of :mod:`lifecycle.audit.actors`,
    e.g. ``str(actors.service("coordinator"))``): a stored decision must say who
    or what took it, never a default nobody chose.

    A checkpoint of the audit chain is signed after every gate decision
    (DESIGN.md §6), whatever ``audit_checkpoint_every`` says.

    Raises
    ------
    ConfigurationError
        ``stage`` is not one of :data:`~lifecycle.governance.decisions.STAGES`.
    NotFoundError
        No such model or version.
    """
    (report,) = evaluate_stages(registry, name, version, (stage,), actor=actor, environment=environment,
                                trigger=trigger)
    return report


def evaluate_stages(registry: Registry, name: str, version: int, stages: Sequence[str], *, actor: str,
                    environment: str = "", trigger: str = "promote") -> list[GateReport]:
    """:func:`evaluate` for several stages at once, measuring the version once.

    Its signature is verified and its BOM read once; each stage's decision is
    stored with its own audit event, all in one transaction, and one
    checkpoint is signed after it (publication evaluates staging and
    production this way).
    """
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ConfigurationError(f"unknown stage '{unknown[0]}'; known stages: {', '.join(STAGES)}")
    record = registry.get_version(name, version)
    policy = current_policy(registry, name)
    criteria = {stage: implied(policy.criteria(stage), stage) for stage in stages}
    needs_signature = any(key == "signature-verified" for declared in criteria.values() for key, _ in declared)
    signature = _signature(registry, record) if needs_signature else None
    training, signed_epsilon, problem = _signed_facts(record)
    reports = []
    with registry.transaction() as session:
        version_id = _version_id(session, name, version)
        facts = Facts(metrics=record.metrics, watermark=record.watermark, sites=record.sites,
                      signed_epsilon=signed_epsilon, training=training,
                      withdrawals=_withdrawals(session, version_id), signature=signature,
                      sensitive_attribute=policy.sensitive_attribute, problems={"bom": problem} if problem else {})
        for stage in stages:
            report = GateReport(name, version, stage, environment, policy.version, measure(facts, criteria[stage]))
            session.add(GateDecision(model_version_id=version_id, stage=stage, environment=environment,
                                     policy_version=policy.version, trigger=trigger, passed=report.passed,
                                     criteria_json=json.dumps([r.to_dict() for r in report.results], default=str),
                                     actor=actor[:128]))
            audit.record(session, "gates.evaluated", actor=actor[:128], subject=f"{name}:{version}",
                         details={"stage": stage, "environment": environment, "trigger": trigger,
                                  "policy_version": policy.version, "passed": report.passed,
                                  "failing": [r.criterion for r in report.failing]})
            reports.append(report)
    registry.checkpoint(every=1)
    for report in reports:
        logger.info("gates %s for %s:%d (%s): %s", report.stage, name, version, trigger,
                    "passed" if report.passed else f"failed: {report.describe_failures()}")
    return reports


def _pending(criteria: tuple[tuple[str, Any], ...]) -> list[str]:
    return [key for key, _ in criteria if key == "signature-verified"]


def summarise(policy: Policy, facts: Facts) -> dict[str, Any]:
    """The ML-BOM's ``governance`` section: each declared stage's gates on what is known before signing.

    ``signature-verified`` cannot be measured before the signature exists: it
    is listed as ``pending`` and evaluated right after registration (the
    registry's gate decisions, trigger ``publish``).
    """
    stages: dict[str, Any] = {}
    for stage in policy.declared_stages:
        criteria = policy.criteria(stage)
        results = measure(facts, tuple(c for c in criteria if c[0] not in _pending(criteria)))
        stages[stage] = {
            "passed": all(r.passed for r in results),
            "failing": [{"criterion": r.criterion, "measured": r.measured, "threshold": r.threshold,
                         "evidence": r.evidence} for r in results if not r.passed],
            "pending": _pending(criteria),
        }
    return {"policy_version": policy.version, "policy_digest": policy.digest,
            "sensitive_attribute": policy.sensitive_attribute, "stages": stages}


def site_withdrawals(registry: Registry, sites: list[str]) -> list[str]:
    """Whole-site consent withdrawals that name one of ``sites`` (what taints a version not registered yet)."""
    if not sites:
        return []
    with Session(registry.engine) as session:
        rows = session.exec(select(ConsentWithdrawal.id, ConsentWithdrawal.site)
                            .where(col(ConsentWithdrawal.site).in_(sites), ConsentWithdrawal.scope == "site")
                            .order_by(col(ConsentWithdrawal.id))).all()
    return [f"#{wid} (site {site})" for wid, site in rows]


def latest_decisions(registry: Registry, name: str, version: int) -> list[StoredDecision]:
    """The newest decision per stage and environment for ``name:version``, newest first.

    Raises
    ------
    NotFoundError
        No such model or version.
    """
    registry.get_version(name, version)
    with Session(registry.engine) as session:
        version_id = _version_id(session, name, version)
        rows = session.exec(select(GateDecision).where(GateDecision.model_version_id == version_id)
                            .order_by(col(GateDecision.id).desc())).all()
    seen: set[tuple[str, str]] = set()
    decisions = []
    for row in rows:
        if (row.stage, row.environment) in seen:
            continue
        seen.add((row.stage, row.environment))
        assert row.id is not None
        results = tuple(CriterionResult.from_dict(r) for r in json.loads(row.criteria_json))
        report = GateReport(name, version, row.stage, row.environment, row.policy_version, results)
        decisions.append(StoredDecision(row.id, report, row.trigger, row.actor, aware(row.created_at)))
    return decisions
