"""Governance on every path that makes a version live, not only on ``models promote``.

``fedguard deploy canary|shadow|promote|rollback``, ``deploy kill --pin`` and
the serving tier's admin routes all point a deployment at a version through
:class:`~lifecycle.registry.DeploymentStore`; it calls
:func:`check_deployable` inside the same transaction as the change, so the
check and the write cannot be separated by a withdrawal landing in between.
A version may go live in an environment unless

- it is **tainted** (a :class:`~lifecycle.governance.tables.ModelTaint` row: its
  lineage holds data whose consent was withdrawn), or
- its **latest production gate decision** (for that environment, or the
  environment-less decision taken when it was published) **failed**, and no
  approver signed an override of it for that environment *after* that
  decision (a later failing re-evaluation needs a new override); the
  override's signature is verified, and under a policy that lists
  ``approvers`` only a listed key's override counts.

A **governed** model (one with a declared policy: a
:class:`~lifecycle.governance.tables.PolicyVersion` row) must also have been
promoted through the stages: a version that becomes stable or pinned must be
at ``production`` in that environment, a canary or shadow candidate at
``staging`` or ``production``; and a version with no production gate decision
at all counts as failing. A model without a declared policy keeps working
without stages (models published before governance existed: governance
cannot judge what it never evaluated), under the taint and failed-decision
checks only.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlmodel import Session, col, select

from lifecycle.errors import GovernanceError, NotFoundError
from lifecycle.governance.decisions import PRODUCTION, REGISTERED, STAGING
from lifecycle.governance.policies import declared
from lifecycle.governance.policy import Policy
from lifecycle.governance.tables import Approval, GateDecision, ModelTaint, VersionStage
from lifecycle.registry.tables import ModelVersion, RegisteredModel, aware

logger = logging.getLogger("fedguard.lifecycle.governance")

OVERRIDE = "override"
APPROVE = "approve"
KINDS: tuple[str, ...] = (APPROVE, OVERRIDE)
"""An :class:`~lifecycle.governance.tables.Approval`'s ``kind``: a signed approval, or a signed override of gates."""


def version_row(session: Session, name: str, version: int) -> tuple[RegisteredModel, ModelVersion]:
    """The model and version rows of ``name:version``.

    Raises
    ------
    NotFoundError
        No such model, or no such version of it.
    """
    model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name[:128])).first()
    if model is None:
        raise NotFoundError(f"no model named '{name[:128]}'; see 'fedguard models list'")
    row = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                  ModelVersion.version == version)).first()
    if row is None:
        raise NotFoundError(f"model '{name}' has no version {version}; see 'fedguard models show {name}'")
    return model, row


def taints(session: Session, version_id: int) -> list[int]:
    """The consent withdrawals (ids) that taint this version, oldest first."""
    rows = session.exec(select(ModelTaint.withdrawal_id).where(ModelTaint.model_version_id == version_id)
                        .order_by(col(ModelTaint.withdrawal_id))).all()
    return [int(r) for r in rows]


def latest_production_decision(session: Session, version_id: int, environment: str) -> GateDecision | None:
    """The newest production gate decision of a version for ``environment`` or for no environment (publication)."""
    return session.exec(
        select(GateDecision).where(GateDecision.model_version_id == version_id, GateDecision.stage == PRODUCTION,
                                   col(GateDecision.environment).in_([environment, ""]))
        .order_by(col(GateDecision.id).desc()).limit(1)
    ).first()



def stage_of(session: Session, version_id: int, environment: str) -> str:
    """The stage of a version in ``environment`` (``registered`` without a :class:`VersionStage` row)."""
    row = session.exec(select(VersionStage.stage).where(VersionStage.model_version_id == version_id,
                                                        VersionStage.environment == environment)).first()
    return str(row) if row is not None else REGISTERED


def has_override(session: Session, name: str, version: ModelVersion, environment: str, *,
                 since: datetime | None = None, policy: Policy | None = None) -> bool:
    """Whether an approver signed a valid override of this version's production gates in ``environment``.

    Only an override whose signature and statement verify
    (:func:`lifecycle.governance.approvals.check_row`) counts, only one
    created at or after ``since`` (the failing decision it must answer), and,
    when ``policy`` lists approvers, only one signed by a listed key.
    """
    from lifecycle.governance.approvals import ApprovalError, check_row  # approvals imports this module

    rows = session.exec(
        select(Approval).where(Approval.model_version_id == version.id, Approval.kind == OVERRIDE,
                               Approval.stage == PRODUCTION, Approval.environment == environment)
        .order_by(col(Approval.id).desc())
    ).all()
    for row in rows:
        if since is not None and aware(row.created_at) < aware(since):
            continue
        if policy is not None and not policy.allows(row.approver):
            continue
        try:
            check_row(row, name, version)
        except ApprovalError as exc:
            logger.warning("not counting override: %s", exc)
            continue
        return True
    return False


def _failing(decision: GateDecision) -> str:
    try:
        criteria = json.loads(decision.criteria_json)
        names = [str(c.get("criterion")) for c in criteria if not c.get("passed")]
    except (ValueError, AttributeError, TypeError):
        names = []
    return ", ".join(names) or "unknown criteria"


def check_deployable(session: Session, name: str, version: int, environment: str, *,
                     candidate: bool = False, staged: bool = True) -> None:
    """Refuse to point a deployment of ``name`` in ``environment`` at ``version`` if governance forbids it.

    Parameters
    ----------
    candidate
        ``True`` for a canary or shadow candidate (or a version restored after a demotion, which a
        replacement left at ``staging``): a governed model's version must be at ``staging`` or
        ``production`` there. ``False`` for a version that becomes stable or pinned: it must be at
        ``production``.
    staged
        ``False`` skips the stage requirement, for the one automatic path its policy itself declares
        (``on-taint = "replace"``: the consent enforcement serves the newest clean version).

    Raises
    ------
    GovernanceError
        The version is tainted; or its latest production gate decision failed
        without a signed override after it; or (governed model) it is not at
        the stage required there, or has no production gate decision. The
        message says which, and what to do.
    NotFoundError
        No such model or version.
    """
    model, row = version_row(session, name, version)
    assert row.id is not None
    withdrawn = taints(session, row.id)
    if withdrawn:
        raise GovernanceError(
            f"{name}:{version} cannot be deployed in '{environment}': its lineage holds data whose consent was "
            f"withdrawn (withdrawal {', '.join(f'#{w}' for w in withdrawn)}); retrain without it: "
            f"'fedguard retrain {name} --without-withdrawn'"
        )
    policy = declared(session, name, model.id)
    promote = f"'fedguard models promote {name}:{version} --to production --env {environment}'"
    if policy is not None and staged:
        stage = stage_of(session, row.id, environment)
        allowed = (STAGING, PRODUCTION) if candidate else (PRODUCTION,)
        if stage not in allowed:
            role = "a canary or shadow" if candidate else "stable or pinned"
            to = STAGING if candidate else PRODUCTION
            raise GovernanceError(
                f"{name}:{version} cannot be {role} in '{environment}': it is {stage} there and '{name}' has a "
                f"declared policy, so only a version promoted to {' or '.join(allowed)} may be; promote it: "
                f"'fedguard models promote {name}:{version} --to {to} --env {environment}'"
            )
    decision = latest_production_decision(session, row.id, environment)
    if decision is None:
        if policy is not None:
            raise GovernanceError(
                f"{name}:{version} cannot be deployed in '{environment}': it has no production gate decision and "
                f"'{name}' has a declared policy; evaluate its gates: 'fedguard models gates {name}:{version} "
                f"--evaluate', or promote it: {promote}"
            )
        return
    if not decision.passed and not has_override(session, name, row, environment, since=decision.created_at,
                                                policy=policy):
        where = f"in '{decision.environment}'" if decision.environment else "at publication"
        raise GovernanceError(
            f"{name}:{version} cannot be deployed in '{environment}': its production gates failed {where} "
            f"(decision #{decision.id}: {_failing(decision)}); see 'fedguard models gates {name}:{version}', or "
            f"have an approver override: {promote[:-1]} --override --reason TEXT'"
        )
