"""Evaluating a version against a stage's declared criteria, and storing the decision.

SKELETON (to be completed by the policy work): only the built-in default
criteria (``signature-verified``, ``consent-clean``) are evaluated here.
The interface — :func:`evaluate` — is stable: stages, consent and trace code
call it.
"""

from __future__ import annotations

import json

from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.errors import FedguardError
from lifecycle.governance.decisions import STAGES, CriterionResult, GateReport
from lifecycle.governance.tables import GateDecision, ModelTaint
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import ModelVersion, RegisteredModel


def _version_id(session: Session, name: str, version: int) -> int:
    row = session.exec(
        select(ModelVersion.id).join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
        .where(RegisteredModel.name == name, ModelVersion.version == version)
    ).first()
    assert row is not None
    return int(row)


def _signature(registry: Registry, record: VersionRecord) -> CriterionResult:
    from lifecycle.signing import verify_model

    try:
        verify_model(record.artifact.model_dir, record.artifact.signature_path, registry.public_key_path())
    except FedguardError as exc:
        return CriterionResult("signature-verified", False, False, True, str(exc))
    return CriterionResult("signature-verified", True, True, True,
                           f"OpenSSF model signature by {record.signer_fingerprint[:16]}")


def _consent(session: Session, version_id: int) -> CriterionResult:
    taints = session.exec(select(ModelTaint.withdrawal_id).where(ModelTaint.model_version_id == version_id)).all()
    if taints:
        return CriterionResult("consent-clean", False, False, True,
                               "tainted by consent withdrawal(s) " + ", ".join(f"#{t}" for t in taints))
    return CriterionResult("consent-clean", True, True, True, "no consent withdrawal covers this version's lineage")


def evaluate(registry: Registry, name: str, version: int, stage: str, *, environment: str = "",
             trigger: str = "promote", actor: str = "cli") -> GateReport:
    """Evaluate ``name:version`` against ``stage``'s criteria; store the decision with an audit event.

    A checkpoint of the audit chain is signed after every gate decision
    (DESIGN.md §6), whatever ``audit_checkpoint_every`` says.
    """
    if stage not in STAGES:
        raise ValueError(stage)
    record = registry.get_version(name, version)
    results = [_signature(registry, record)]
    with registry.transaction() as session:
        version_id = _version_id(session, name, version)
        results.append(_consent(session, version_id))
        report = GateReport(name, version, stage, environment, None, tuple(results))
        session.add(GateDecision(model_version_id=version_id, stage=stage, environment=environment,
                                 policy_version=None, trigger=trigger, passed=report.passed,
                                 criteria_json=json.dumps([r.to_dict() for r in report.results], default=str),
                                 actor=actor[:128]))
        audit.record(session, "gates.evaluated", actor=actor[:128], subject=f"{name}:{version}",
                     details={"stage": stage, "environment": environment, "trigger": trigger,
                              "passed": report.passed, "failing": [r.criterion for r in report.failing]})
    registry.checkpoint(every=1)
    return report
