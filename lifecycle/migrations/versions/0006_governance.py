"""Governance: policies, gate decisions, stages per environment, approvals, consent, taint, objections.

``deployment`` becomes one row per model *and environment* (existing rows move
to the ``default`` environment): the table is rebuilt because SQLite cannot
drop the old unique constraint on ``model_id`` in place, and ``deployment.id``
is referenced by nothing, so the copy lets the new table number its rows.
``deployment_event`` gains the environment; ``model_version`` gains
``supersedes`` (the version a retrain replaces).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

def _when() -> sa.Column[datetime]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def _state_columns() -> list[sa.Column[object]]:
    """The deployment row's state columns, identical before and after this revision."""
    return [
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("stable_version", sa.Integer, nullable=False),
        sa.Column("previous_version", sa.Integer, nullable=True),
        sa.Column("candidate_version", sa.Integer, nullable=True),
        sa.Column("candidate_mode", sa.String(16), nullable=True),
        sa.Column("canary_weight", sa.Float, nullable=False),
        sa.Column("rollout_id", sa.Integer, nullable=False),
        sa.Column("killed", sa.Boolean, nullable=False),
        sa.Column("kill_mode", sa.String(16), nullable=True),
        sa.Column("pinned_version", sa.Integer, nullable=True),
        sa.Column("kill_reason", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _copied() -> str:
    """The columns copied between the old and the new deployment table."""
    return ", ".join(["model_id", *(str(c.name) for c in _state_columns())])


def _deployments() -> None:
    op.create_table(
        "deployment_by_env",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_model.id"), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        *_state_columns(),
        sa.UniqueConstraint("model_id", "environment", name="uq_deployment_model_environment"),
    )
    op.execute(f"INSERT INTO deployment_by_env (environment, {_copied()}) "
               f"SELECT 'default', {_copied()} FROM deployment")
    op.drop_table("deployment")
    op.rename_table("deployment_by_env", "deployment")
    op.create_index("ix_deployment_model_id", "deployment", ["model_id"])
    op.add_column("deployment_event",
                  sa.Column("environment", sa.String(64), nullable=False, server_default="default"))
    op.add_column("model_version", sa.Column("supersedes", sa.Integer, nullable=True))


def upgrade() -> None:
    _deployments()
    op.create_table(
        "governance_policy",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_model.id"), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _when(),
        sa.UniqueConstraint("model_id", "version", name="uq_governance_policy_model_version"),
    )
    op.create_table(
        "gate_decision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_version.id"), nullable=False, index=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=True),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("criteria_json", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _when(),
    )
    op.create_table(
        "version_stage",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_version.id"), nullable=False, index=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_version_id", "environment", name="uq_version_stage_version_environment"),
    )
    op.create_table(
        "stage_event",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_version.id"), nullable=False, index=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("from_stage", sa.String(32), nullable=False),
        sa.Column("to_stage", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("override", sa.Boolean, nullable=False),
        sa.Column("gate_decision_id", sa.Integer, sa.ForeignKey("gate_decision.id"), nullable=True),
        _when(),
    )
    op.create_table(
        "approval",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_version.id"), nullable=False, index=True),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("approver", sa.String(64), nullable=False),
        sa.Column("approver_name", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("statement_json", sa.Text, nullable=False),
        sa.Column("signature", sa.String(256), nullable=False),
        sa.Column("public_key_pem", sa.Text, nullable=False),
        sa.Column("used", sa.Boolean, nullable=False),
        _when(),
    )
    op.create_table(
        "consent_withdrawal",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(64), nullable=False, index=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("record_count", sa.Integer, nullable=True),
        sa.Column("records_digest", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("statement_json", sa.Text, nullable=False),
        sa.Column("signature", sa.String(256), nullable=False),
        _when(),
    )
    op.create_table(
        "model_taint",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_version_id", sa.Integer, sa.ForeignKey("model_version.id"), nullable=False, index=True),
        sa.Column("withdrawal_id", sa.Integer, sa.ForeignKey("consent_withdrawal.id"), nullable=False, index=True),
        _when(),
        sa.UniqueConstraint("model_version_id", "withdrawal_id", name="uq_model_taint_version_withdrawal"),
    )
    op.create_table(
        "subject_exception",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_model.id"), nullable=False, index=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("subject_digest", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _when(),
        sa.UniqueConstraint("model_id", "environment", "subject_digest", name="uq_subject_exception"),
    )


def downgrade() -> None:
    """Back to one deployment per model: only the ``default`` environment's rows survive."""
    for table in ("subject_exception", "model_taint", "consent_withdrawal", "approval", "stage_event",
                  "version_stage", "gate_decision", "governance_policy"):
        op.drop_table(table)
    op.create_table(
        "deployment_single",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_model.id"), nullable=False, unique=True),
        *_state_columns(),
    )
    op.execute(f"INSERT INTO deployment_single ({_copied()}) "
               f"SELECT {_copied()} FROM deployment WHERE environment = 'default'")
    op.drop_index("ix_deployment_model_id", table_name="deployment")
    op.drop_table("deployment")
    op.rename_table("deployment_single", "deployment")
    with op.batch_alter_table("deployment_event") as batch:
        batch.drop_column("environment")
    with op.batch_alter_table("model_version") as batch:
        batch.drop_column("supersedes")
