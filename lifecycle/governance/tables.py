"""Persisted governance types (SQLModel tables, Alembic revision ``0006``).

Governance is enforced, not advised (DESIGN.md §5), so everything it decides
is a row written in the same transaction as its audit event:

- :class:`PolicyVersion`: a model's declared criteria per stage, versioned
  (the TOML text itself, so a decision can always be re-read against the
  exact policy it was taken under);
- :class:`GateDecision`: one evaluation of one version against one stage's
  criteria, with every measured value, threshold and piece of evidence;
- :class:`VersionStage` and :class:`StageEvent`: where a version stands in each
  named environment (``registered`` → ``staging`` → ``production``), and the
  history of every move;
- :class:`Approval`: a signed approval or override (Ed25519, by an operator's
  approver key): the signed statement and its signature, verifiable later by
  anyone holding the public key;
- :class:`ConsentWithdrawal` and :class:`ModelTaint`: a site's (or records')
  withdrawal of consent, and every version whose lineage it taints;
- :class:`SubjectException`: subjects who objected to being scored by a
  model in an environment (only a SHA-256 of each identifier is stored).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT
from lifecycle.registry.tables import utcnow

__all__ = ["DEFAULT_ENVIRONMENT", "Approval", "ConsentWithdrawal", "GateDecision", "ModelTaint", "PolicyVersion",
           "StageEvent", "SubjectException", "VersionStage"]


def _when() -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=False)


class PolicyVersion(SQLModel, table=True):
    """One version of a model's governance policy (the TOML document, verbatim)."""

    __tablename__ = "governance_policy"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    version: int
    document: str = Field(sa_column=Column(Text, nullable=False))
    digest: str = Field(max_length=64)
    actor: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class GateDecision(SQLModel, table=True):
    """One evaluation of a version against a stage's criteria (``criteria_json``: one entry per criterion)."""

    __tablename__ = "gate_decision"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    stage: str = Field(max_length=32)
    environment: str = Field(default="", max_length=64)
    policy_version: int | None = None
    trigger: str = Field(max_length=32)
    passed: bool
    criteria_json: str = Field(sa_column=Column(Text, nullable=False))
    actor: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class VersionStage(SQLModel, table=True):
    """The stage of one version in one environment (no row: ``registered``)."""

    __tablename__ = "version_stage"
    __table_args__ = (UniqueConstraint("model_version_id", "environment"),)

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    environment: str = Field(max_length=64)
    stage: str = Field(max_length=32)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class StageEvent(SQLModel, table=True):
    """One move of a version between stages in an environment (append-only)."""

    __tablename__ = "stage_event"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    environment: str = Field(max_length=64)
    from_stage: str = Field(max_length=32)
    to_stage: str = Field(max_length=32)
    actor: str = Field(max_length=128)
    reason: str = Field(default="", max_length=512)
    override: bool = False
    gate_decision_id: int | None = Field(default=None, foreign_key="gate_decision.id")
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class Approval(SQLModel, table=True):
    """A signed approval or override of a version's move to a stage in an environment."""

    __tablename__ = "approval"

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    stage: str = Field(max_length=32)
    environment: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    approver: str = Field(max_length=64)
    """The SHA-256 fingerprint of the approver's Ed25519 public key."""
    approver_name: str = Field(default="", max_length=128)
    reason: str = Field(default="", max_length=512)
    statement_json: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=256)
    public_key_pem: str = Field(sa_column=Column(Text, nullable=False))
    used: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class ConsentWithdrawal(SQLModel, table=True):
    """A withdrawal of consent for a whole site, or for a list of its records (count and salted digest only)."""

    __tablename__ = "consent_withdrawal"

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(index=True, max_length=64)
    scope: str = Field(max_length=16)
    record_count: int | None = None
    records_digest: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=512)
    actor: str = Field(max_length=128)
    source: str = Field(max_length=16)
    statement_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    signature: str = Field(default="", max_length=256)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class ModelTaint(SQLModel, table=True):
    """A version whose lineage holds withdrawn data."""

    __tablename__ = "model_taint"
    __table_args__ = (UniqueConstraint("model_version_id", "withdrawal_id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    withdrawal_id: int = Field(foreign_key="consent_withdrawal.id", index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())


class SubjectException(SQLModel, table=True):
    """A data subject who objected to being scored by a model in an environment (SHA-256 of the id only)."""

    __tablename__ = "subject_exception"
    __table_args__ = (UniqueConstraint("model_id", "environment", "subject_digest"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    environment: str = Field(max_length=64)
    subject_digest: str = Field(max_length=64)
    reason: str = Field(default="", max_length=512)
    actor: str = Field(max_length=128)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_when())
