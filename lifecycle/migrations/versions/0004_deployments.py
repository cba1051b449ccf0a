"""Deployments: per-model stable/candidate/kill-switch state and its append-only history.

``deployment`` holds one row per model that has ever been deployed explicitly
(a model without a row serves its newest version, as before); every change
bumps its ``revision``, which serving replicas poll. ``deployment_event`` is the
history: who did what, when, and which version served which share afterwards.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_model.id"), nullable=False, unique=True),
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
    )
    op.create_table(
        "deployment_event",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("registered_model.id"), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("stable_version", sa.Integer, nullable=False),
        sa.Column("candidate_version", sa.Integer, nullable=True),
        sa.Column("candidate_mode", sa.String(16), nullable=True),
        sa.Column("canary_weight", sa.Float, nullable=False),
        sa.Column("killed", sa.Boolean, nullable=False),
        sa.Column("kill_mode", sa.String(16), nullable=True),
        sa.Column("pinned_version", sa.Integer, nullable=True),
        sa.Column("shares_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deployment_event_model_id", "deployment_event", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_deployment_event_model_id", table_name="deployment_event")
    op.drop_table("deployment_event")
    op.drop_table("deployment")
