"""Privacy ledger: one charge per (site, manifest, run, round, kind), and per-site ε caps.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "privacy_ledger_entry",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("manifest", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("noise_multiplier", sa.Float, nullable=False),
        sa.Column("sample_rate", sa.Float, nullable=False),
        sa.Column("steps", sa.Integer, nullable=False),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("accountant", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site", "manifest", "run_id", "round", "kind", name="uq_privacy_ledger_entry"),
    )
    op.create_index("ix_privacy_ledger_entry_key", "privacy_ledger_entry", ["site", "manifest", "kind"])
    op.create_table(
        "privacy_site_cap",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(128), nullable=False),
        sa.Column("manifest", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("epsilon_cap", sa.Float, nullable=False),
        sa.Column("delta", sa.Float, nullable=False),
        sa.Column("accountant", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("site", "manifest", "kind", name="uq_privacy_site_cap"),
    )


def downgrade() -> None:
    op.drop_table("privacy_site_cap")
    op.drop_index("ix_privacy_ledger_entry_key", table_name="privacy_ledger_entry")
    op.drop_table("privacy_ledger_entry")
