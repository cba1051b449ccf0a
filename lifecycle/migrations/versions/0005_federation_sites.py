"""Federation site registry: enrolled sites and each issue of their credentials.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "federation_site",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_federation_site_name", "federation_site", ["name"], unique=True)
    op.create_table(
        "site_credential",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site_id", sa.Integer, sa.ForeignKey("federation_site.id"), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False, unique=True),
        sa.Column("cert_fingerprint", sa.String(64), nullable=False),
        sa.Column("node_public_key", sa.Text, nullable=False),
        sa.Column("node_key_fingerprint", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(64), nullable=False),
    )
    op.create_index("ix_site_credential_site_id", "site_credential", ["site_id"])


def downgrade() -> None:
    op.drop_index("ix_site_credential_site_id", table_name="site_credential")
    op.drop_table("site_credential")
    op.drop_index("ix_federation_site_name", table_name="federation_site")
    op.drop_table("federation_site")
