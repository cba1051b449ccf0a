"""Persisted privacy-ledger types (SQLModel tables).

The coordinator's tables live in the registry database and are created by the
Alembic migration ``0002_privacy_ledger``; a site agent's own ledger creates
the same tables in a local SQLite file (:meth:`privacy.ledger.SiteLedger.open`).
These classes must match the newest migration.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from lifecycle.registry.tables import utcnow


class LedgerEntry(SQLModel, table=True):
    """One charge: a site's dataset took ``steps`` steps of a subsampled Gaussian mechanism.

    Unique per (site, manifest, run, round, kind), so that recording the same
    round again (a coordinator restart, a retried message) never counts twice.
    """

    __tablename__ = "privacy_ledger_entry"
    __table_args__ = (
        UniqueConstraint("site", "manifest", "run_id", "round", "kind", name="uq_privacy_ledger_entry"),
        Index("ix_privacy_ledger_entry_key", "site", "manifest", "kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=128)
    manifest: str = Field(max_length=128)
    run_id: str = Field(max_length=64)
    round: int
    kind: str = Field(max_length=16)
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str = Field(default="rdp", max_length=16)
    created_at: datetime = Field(default_factory=utcnow)


class SiteCap(SQLModel, table=True):
    """A budget: site (or ``*``), manifest (or ``*``) and kind (or ``*``) may spend ε ≤ cap at δ."""

    __tablename__ = "privacy_site_cap"
    __table_args__ = (UniqueConstraint("site", "manifest", "kind", name="uq_privacy_site_cap"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(max_length=128)
    manifest: str = Field(default="*", max_length=128)
    kind: str = Field(default="*", max_length=16)
    epsilon_cap: float
    delta: float
    accountant: str = Field(default="rdp", max_length=16)
    updated_at: datetime = Field(default_factory=utcnow)


LEDGER_TABLES = (LedgerEntry, SiteCap)
