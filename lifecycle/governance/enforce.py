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
  approver signed an override of it for that environment.

A version with no decision at all is allowed: models published before
governance existed keep working (DESIGN.md §5: governance is enforced, not
advised, but it cannot judge what it never evaluated).
"""

from __future__ import annotations

import json

from sqlmodel import Session, col, select

from lifecycle.errors import GovernanceError, NotFoundError
from lifecycle.governance.decisions import PRODUCTION
from lifecycle.governance.tables import Approval, GateDecision, ModelTaint
from lifecycle.registry.tables import ModelVersion, RegisteredModel

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


def has_override(session: Session, version_id: int, environment: str) -> bool:
    """Whether an approver signed an override of this version's production gates in ``environment``."""
    return session.exec(
        select(Approval.id).where(Approval.model_version_id == version_id, Approval.kind == OVERRIDE,
                                  Approval.stage == PRODUCTION, Approval.environment == environment).limit(1)
    ).first() is not None


def _failing(decision: GateDecision) -> str:
    try:
        criteria = json.loads(decision.criteria_json)
        names = [str(c.get("criterion")) for c in criteria if not c.get("passed")]
    except (ValueError, AttributeError, TypeError):
        names = []
    return ", ".join(names) or "unknown criteria"


def check_deployable(session: Session, name: str, version: int, environment: str) -> None:
    """Refuse to point a deployment of ``name`` in ``environment`` at ``version`` if governance forbids it.

    Raises
    ------
    GovernanceError
        The version is tainted, or its latest production gate decision failed
        without a signed override (the message says which, and what to do).
    NotFoundError
        No such model or version.
    """
    _, row = version_row(session, name, version)
    assert row.id is not None
    withdrawn = taints(session, row.id)
    if withdrawn:
        raise GovernanceError(
            f"{name}:{version} cannot be deployed in '{environment}': its lineage holds data whose consent was "
            f"withdrawn (withdrawal {', '.join(f'#{w}' for w in withdrawn)}); retrain without it: "
            f"'fedguard retrain {name} --without-withdrawn'"
        )
    decision = latest_production_decision(session, row.id, environment)
    if decision is not None and not decision.passed and not has_override(session, row.id, environment):
        where = f"in '{decision.environment}'" if decision.environment else "at publication"
        raise GovernanceError(
            f"{name}:{version} cannot be deployed in '{environment}': its production gates failed {where} "
            f"(decision #{decision.id}: {_failing(decision)}); see 'fedguard models gates {name}:{version}', or "
            f"have an approver override: 'fedguard models promote {name}:{version} --to production "
            f"--env {environment} --override --reason TEXT'"
        )
