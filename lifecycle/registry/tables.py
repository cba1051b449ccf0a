"""Persisted registry types (SQLModel tables).

Lineage is relational so that "which sites and how much ε went into this
model" is one query: a :class:`ModelVersion` points at the
:class:`TrainingRun` that produced it, and the run at one
:class:`SiteParticipation` per site. Schema changes go through the Alembic
migrations in ``lifecycle/migrations``; these classes must match the newest one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC: the default of every timestamp column."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A timestamp read back from the registry, in UTC with its zone (SQLite returns them naive; all are UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RegisteredModel(SQLModel, table=True):
    """A named model; its versions are the published artifacts."""

    __tablename__ = "registered_model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=128)
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class TrainingRun(SQLModel, table=True):
    """One federated training run (simulated or deployed)."""

    __tablename__ = "training_run"

    id: str = Field(primary_key=True, max_length=64)
    mode: str = Field(default="simulation", max_length=32)
    status: str = Field(default="finished", max_length=32)
    rounds: int = 0
    config_json: str = "{}"
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class SiteParticipation(SQLModel, table=True):
    """What one site contributed to one run, and the privacy it spent."""

    __tablename__ = "site_participation"
    __table_args__ = (UniqueConstraint("run_id", "site"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="training_run.id", index=True, max_length=64)
    site: str = Field(max_length=128)
    num_examples: int = 0
    data_manifest: str = Field(default="", max_length=64)
    epsilon: float | None = None
    delta: float | None = None
    rounds_participated: int = 0


class ModelVersion(SQLModel, table=True):
    """One signed, content-addressed artifact of a registered model."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    version: int
    run_id: str | None = Field(default=None, foreign_key="training_run.id", max_length=64)
    artifact_digest: str = Field(max_length=64)
    signer_fingerprint: str = Field(default="", max_length=64)
    metrics_json: str = "{}"
    watermark_json: str = "{}"
    stage: str = Field(default="registered", max_length=32)
    supersedes: int | None = None
    """The version of the same model this one replaces (``fedguard retrain``), if any."""
    created_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """One entry of the hash-chained audit trail (see :mod:`lifecycle.audit`)."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=128)
    action: str = Field(index=True, max_length=64)
    subject: str = Field(default="", max_length=256)
    details_json: str = "{}"
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)


class ApiKey(SQLModel, table=True):
    """A serving API key; only its SHA-256 is stored, never the key."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(index=True, unique=True, max_length=32)
    key_hash: str = Field(max_length=64)
    scope: str = Field(max_length=32)
    name: str = Field(default="", max_length=128)
    revoked: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True), nullable=True))


class Deployment(SQLModel, table=True):
    """How one model is served now in one environment: its stable version, a candidate, the kill switch.

    One row per model and environment (``default`` unless named), rewritten in place by each deployment action; the
    ``revision`` grows by one with every change, so a serving replica polls
    ``(model_id, revision)`` pairs and reloads only what changed. A model
    without a row serves its newest version (what ``fedguard serve`` did
    before deployments existed).
    """

    __tablename__ = "deployment"
    __table_args__ = (UniqueConstraint("model_id", "environment"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    environment: str = Field(default="default", max_length=64)
    revision: int = 0
    stable_version: int
    previous_version: int | None = None
    candidate_version: int | None = None
    candidate_mode: str | None = Field(default=None, max_length=16)
    canary_weight: float = 0.0
    rollout_id: int = 0
    killed: bool = False
    kill_mode: str | None = Field(default=None, max_length=16)
    pinned_version: int | None = None
    kill_reason: str = Field(default="", max_length=256)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class DeploymentEvent(SQLModel, table=True):
    """One append-only entry of a model's deployment history.

    It stores who did what, when, and the state that followed, including
    which version serves which share of the traffic (``shares_json``, percent
    by version), so "what served this model at time T" is the latest event
    before T. Written in the same transaction as the row change and its audit
    event.
    """

    __tablename__ = "deployment_event"

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="registered_model.id", index=True)
    environment: str = Field(default="default", max_length=64)
    revision: int
    action: str = Field(max_length=32)
    actor: str = Field(max_length=128)
    source: str = Field(default="operator", max_length=32)
    reason: str = Field(default="", max_length=256)
    stable_version: int
    candidate_version: int | None = None
    candidate_mode: str | None = Field(default=None, max_length=16)
    canary_weight: float = 0.0
    killed: bool = False
    kill_mode: str | None = Field(default=None, max_length=16)
    pinned_version: int | None = None
    shares_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
