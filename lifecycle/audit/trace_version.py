"""One version's story for ``fedguard audit trace``: signature, ML-BOM, run, governance and consent up to a time.

Everything here is read, never written. Two checks are made *now*, at the
time of the report, because a report is only worth what can be re-checked:
the model signature (OpenSSF Model Signing over every file of the artifact)
and each approval, as governance checks it before counting one
(:func:`lifecycle.governance.approvals.check_row`: the Ed25519 signature over
its signed statement, RFC 8032, by the key whose fingerprint the statement
names, and every column of the row against that statement). A registry row
that no longer agrees with the signed ML-BOM is said too (:func:`lifecycle.registry.lineage.check_lineage`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from sqlalchemy import column, table
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from lifecycle.audit.actors import Identity, approver, site
from lifecycle.bom import BOM_NAME, model_component, read_bom, read_lineage
from lifecycle.errors import FedguardError
from lifecycle.governance.tables import Approval, ConsentWithdrawal, GateDecision, ModelTaint, StageEvent
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import ModelVersion, SiteParticipation, TrainingRun, aware

_SITES = table("federation_site", column("id"), column("name"))
_CREDENTIALS = table("site_credential", column("site_id"), column("node_key_fingerprint"), column("issued_at"),
                     column("revoked_at"))
"""The coordinator's site registry (migration 0005), read by name only: lifecycle may not import coordinator."""



def iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC, as every time in the report is written."""
    return None if moment is None else aware(moment).isoformat()


def actor_of(text: str) -> dict[str, Any]:
    """An ``actor`` column as the report shows it: the text, its identity kind and plain words."""
    identity = Identity.parse(text)
    return {"text": text, "kind": identity.kind, "described": identity.describe()}


def _signature(registry: Registry, record: VersionRecord) -> dict[str, Any]:
    from lifecycle.signing import verify_model

    try:
        verify_model(record.artifact.model_dir, record.artifact.signature_path, registry.public_key_path())
    except FedguardError as exc:
        return {"verified": False, "detail": str(exc)}
    return {"verified": True, "detail": "every file of the artifact is exactly as signed (OpenSSF Model Signing)"}


def _lineage_check(record: VersionRecord, bom: dict[str, Any]) -> dict[str, Any]:
    from lifecycle.registry.lineage import check_lineage

    try:
        check_lineage(record, bom)
    except FedguardError as exc:
        return {"agrees": False, "detail": str(exc)}
    return {"agrees": True, "detail": "the registry's sites, ε, metrics and watermark agree with the signed ML-BOM"}


def _governance(bom: dict[str, Any], lineage: dict[str, Any]) -> Any:
    """The BOM's governance summary (gate results written at publication), wherever the writer put it."""
    for holder in (lineage, lineage.get("training", {})):
        if isinstance(holder, dict) and holder.get("governance") is not None:
            return holder["governance"]
    for prop in model_component(bom).get("properties", []):
        if prop.get("name") in ("fedguard:governance", "fedguard:lineage:governance"):
            try:
                return json.loads(str(prop.get("value", "")))
            except ValueError:
                return prop.get("value")
    return None


def _bom(record: VersionRecord) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The signed ML-BOM's summary and its per-site training entries (by site)."""
    model_dir = record.artifact.model_dir
    try:
        bom = read_bom(model_dir)
        digest = hashlib.sha256((model_dir / BOM_NAME).read_bytes()).hexdigest()
        lineage = read_lineage(bom)
    except (FedguardError, OSError, KeyError, TypeError, ValueError) as exc:
        return {"readable": False, "detail": str(exc), "sha256": None}, {}
    training = lineage.get("training", {})
    sites = {str(s.get("site")): s for s in training.get("sites", []) if isinstance(s, dict)}
    return {
        "readable": True, "detail": "", "sha256": digest, "serial": bom.get("serialNumber"),
        "code_version": lineage.get("code_version"), "dependencies": lineage.get("dependencies", {}),
        "aggregation": training.get("aggregation"), "secure_aggregation": training.get("secure_aggregation"),
        "rounds": training.get("rounds"), "local_epochs": training.get("local_epochs"),
        "batch_size": training.get("batch_size"), "dp": training.get("dp", {}), "site_dp": training.get("site_dp", {}),
        "architecture": lineage.get("architecture", {}), "governance": _governance(bom, lineage),
        "lineage_check": _lineage_check(record, bom),
    }, sites


def _enrolled(session: Session, names: list[str], when: datetime) -> dict[str, str]:
    """Each enrolled site's node-key fingerprint in force at ``when`` (the newest one issued before, else the first)."""
    if not names:
        return {}
    query = (core_select(_SITES.c.name, _CREDENTIALS.c.node_key_fingerprint, _CREDENTIALS.c.issued_at)
             .join(_CREDENTIALS, _CREDENTIALS.c.site_id == _SITES.c.id)
             .where(_SITES.c.name.in_(names)).order_by(_CREDENTIALS.c.issued_at))
    found: dict[str, str] = {}
    for name, fingerprint, issued in session.connection().execute(query):
        issued_at = aware(issued if isinstance(issued, datetime) else datetime.fromisoformat(str(issued)))
        if name not in found or issued_at <= when:
            found[str(name)] = str(fingerprint)
    return found


def _sites(session: Session, run: TrainingRun | None, bom_sites: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if run is None:
        return []
    rows = session.exec(select(SiteParticipation).where(SiteParticipation.run_id == run.id)
                        .order_by(col(SiteParticipation.site))).all()
    enrolled = _enrolled(session, [r.site for r in rows], aware(run.started_at))
    out = []
    for r in rows:
        signed = bom_sites.get(r.site, {})
        key = enrolled.get(r.site)
        out.append({
            "site": r.site, "identity": str(site(r.site, key)) if key else None, "enrolled": key is not None,
            "node_key_fingerprint": key, "num_examples": r.num_examples, "data_manifest": r.data_manifest,
            "epsilon": r.epsilon, "delta": r.delta, "rounds": r.rounds_participated,
            "dp": signed.get("dp", {}), "site_epsilon": (signed.get("site_dp") or {}).get("epsilon"),
            "site_dp": signed.get("site_dp") or {},
        })
    return out


def _run(run: TrainingRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    try:
        config = json.loads(run.config_json)
    except ValueError:
        config = {"unreadable": run.config_json[:200]}
    return {"id": run.id, "mode": run.mode, "status": run.status, "rounds": run.rounds, "config": config,
            "started_at": iso(run.started_at), "finished_at": iso(run.finished_at)}


def _criteria(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except ValueError:
        return [{"criterion": "(unreadable)", "passed": False, "measured": None, "threshold": None,
                 "evidence": "the stored decision is not JSON"}]
    items = data.get("results", []) if isinstance(data, dict) else data
    return [{"criterion": str(c.get("criterion", "?")), "passed": bool(c.get("passed")), "measured": c.get("measured"),
             "threshold": c.get("threshold"), "evidence": str(c.get("evidence", ""))}
            for c in items if isinstance(c, dict)]


def verify_approval(row: Approval, name: str, version: ModelVersion) -> tuple[bool, str]:
    """Check an approval of ``name:version`` now, exactly as governance does when it counts one.

    :func:`lifecycle.governance.approvals.check_row` verifies the Ed25519
    signature (RFC 8032) over the stored statement with the stored key, that
    the statement's approver is that key's fingerprint, and that the
    statement names this model, version, artifact digest, action, stage,
    environment, approver and reason; the approver's name is compared here
    too. The row's columns are only a copy: a row edited afterwards (another
    reason, re-pointed to another version, a new name) no longer verifies.
    """
    from lifecycle.governance.approvals import ApprovalError, check_row

    try:
        statement = check_row(row, name, version)
    except ApprovalError as exc:
        return False, str(exc)
    if row.approver_name != statement.approver_name[:128]:
        return False, (f"approval #{row.id} of {name}:{version.version} does not match its signed statement "
                       "(approver_name differs): the registry row was altered")
    return True, "Ed25519 signature verifies against the approver's key; the row matches the signed statement"


def _approval(row: Approval, name: str, version: ModelVersion) -> dict[str, Any]:
    verified, detail = verify_approval(row, name, version)
    try:
        statement: Any = json.loads(row.statement_json)
    except ValueError:
        statement = row.statement_json
    return {"id": row.id, "kind": row.kind, "stage": row.stage, "environment": row.environment,
            "approver": row.approver, "approver_name": row.approver_name,
            "identity": _approver_identity(row), "reason": row.reason, "statement": statement,
            "signature": row.signature, "verified": verified, "verification": detail, "used": row.used,
            "override": row.kind == "override", "at": iso(row.created_at)}


def _approver_identity(row: Approval) -> str | None:
    try:
        return str(approver(row.approver, row.approver_name or "unnamed"))
    except ValueError:  # a fingerprint that is not hex: shown as stored
        return None


def _in_scope(moment: datetime, at: datetime, env: str, environment: str | None) -> bool:
    return aware(moment) <= at and (environment is None or env in (environment, ""))


def _governance_rows(session: Session, name: str, version: ModelVersion, at: datetime,
                     environment: str | None) -> dict[str, Any]:
    version_id = version.id
    gates = session.exec(select(GateDecision).where(GateDecision.model_version_id == version_id)
                         .order_by(col(GateDecision.id))).all()
    approvals = session.exec(select(Approval).where(Approval.model_version_id == version_id)
                             .order_by(col(Approval.id))).all()
    moves = session.exec(select(StageEvent).where(StageEvent.model_version_id == version_id)
                         .order_by(col(StageEvent.id))).all()
    stage_events = [m for m in moves if _in_scope(m.created_at, at, m.environment, environment)]
    stages: dict[str, str] = {}
    for m in stage_events:
        stages[m.environment] = m.to_stage
    return {
        "gates": [{"id": g.id, "stage": g.stage, "environment": g.environment, "policy_version": g.policy_version,
                   "trigger": g.trigger, "passed": g.passed, "criteria": _criteria(g.criteria_json),
                   "actor": actor_of(g.actor), "at": iso(g.created_at)}
                  for g in gates if _in_scope(g.created_at, at, g.environment, environment)],
        "approvals": [_approval(a, name, version) for a in approvals
                      if _in_scope(a.created_at, at, a.environment, environment)],
        "stage_events": [{"id": m.id, "environment": m.environment, "from": m.from_stage, "to": m.to_stage,
                          "actor": actor_of(m.actor), "reason": m.reason, "override": m.override,
                          "gate_decision_id": m.gate_decision_id, "at": iso(m.created_at)} for m in stage_events],
        "stages": [{"environment": env, "stage": stage} for env, stage in sorted(stages.items())],
    }


def _withdrawal(w: ConsentWithdrawal) -> dict[str, Any]:
    return {"id": w.id, "site": w.site, "scope": w.scope, "record_count": w.record_count,
            "records_digest": w.records_digest, "reason": w.reason, "actor": actor_of(w.actor), "source": w.source,
            "signed": bool(w.signature), "signature": w.signature, "at": iso(w.created_at)}


def _consent(session: Session, version_id: int, sites: list[str], at: datetime) -> dict[str, Any]:
    withdrawals = session.exec(select(ConsentWithdrawal).where(col(ConsentWithdrawal.site).in_(sites))
                               .order_by(col(ConsentWithdrawal.id))).all() if sites else []
    taints = session.exec(select(ModelTaint, ConsentWithdrawal)
                          .join(ConsentWithdrawal, col(ConsentWithdrawal.id) == col(ModelTaint.withdrawal_id))
                          .where(ModelTaint.model_version_id == version_id).order_by(col(ModelTaint.id))).all()
    known = [w for w in withdrawals if aware(w.created_at) <= at]
    tainted = [(t, w) for t, w in taints if aware(t.created_at) <= at]
    return {
        "withdrawals": [_withdrawal(w) for w in known],
        "taints": [{"id": t.id, "withdrawal_id": t.withdrawal_id, "site": w.site, "scope": w.scope,
                    "at": iso(t.created_at)} for t, w in tainted],
        "tainted": bool(tainted),
        "after_question": {"withdrawals": len(withdrawals) - len(known), "taints": len(taints) - len(tainted)},
    }


def version_story(registry: Registry, session: Session, model: str, row: ModelVersion,
                  versions: dict[int, ModelVersion], at: datetime, environment: str | None) -> dict[str, Any]:
    """Everything the registry holds about ``model:row.version`` up to ``at`` (governance rows of ``environment``)."""
    assert row.id is not None
    run = session.get(TrainingRun, row.run_id) if row.run_id else None
    record = registry.get_version(model, row.version)
    bom, bom_sites = _bom(record)
    sites = _sites(session, run, bom_sites)
    governance = _governance_rows(session, model, row, at, environment)
    overrides = (sum(1 for m in governance["stage_events"] if m["override"])
                 + sum(1 for a in governance["approvals"] if a["override"]))
    return {
        "version": row.version, "ref": f"{model}:{row.version}", "created_at": iso(row.created_at),
        "published_at_question": aware(row.created_at) <= at, "artifact_digest": row.artifact_digest,
        "signer": row.signer_fingerprint, "signature": _signature(registry, record),
        "metrics": json.loads(row.metrics_json), "watermark": json.loads(row.watermark_json),
        "supersedes": row.supersedes,
        "superseded_by": [{"version": v.version, "at": iso(v.created_at)} for n, v in sorted(versions.items())
                          if v.supersedes == row.version and aware(v.created_at) <= at],
        "bom": bom, "run": _run(run), "sites": sites, **governance, "overrides": overrides,
        "consent": _consent(session, row.id, [s["site"] for s in sites], at),
    }
