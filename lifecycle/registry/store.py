"""The model registry: models, versions, runs and site lineage, each write audited.

Every state change happens in one transaction together with its audit event
(:func:`lifecycle.audit.record`), so the registry and the audit trail can
never disagree: a crash leaves the old state or the new one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from lifecycle import audit, logger
from lifecycle.artifacts import ArtifactStore, StoredArtifact
from lifecycle.errors import ConfigurationError, FedguardError, NotFoundError, StateError
from lifecycle.home import Home
from lifecycle.registry.database import create_registry_engine, migrate
from lifecycle.registry.tables import (
    ModelVersion,
    RegisteredModel,
    SiteParticipation,
    TrainingRun,
    utcnow,
)
from lifecycle.settings import Settings, get_settings

if TYPE_CHECKING:
    from lifecycle.audit.checkpoints import CheckpointLog, Signed, Verified

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def validate_model_name(name: str) -> str:
    """``name`` unchanged if it is a valid model name (it appears in refs ``NAME:VERSION`` and URLs), else refuse it."""
    if not _NAME.match(name):
        raise ConfigurationError(
            f"invalid model name '{name}': use 1-128 lowercase letters, digits, '.', '_' or '-'"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """Split ``NAME[:VERSION]``; the version defaults to the newest."""
    name, _, version = ref.partition(":")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ConfigurationError(f"invalid version '{version}' in '{ref}': use NAME or NAME:N with N >= 1")
    return name, int(version)


@dataclass(frozen=True)
class SiteRecord:
    """One site's part in a run (input to :meth:`Registry.publish`, and lineage)."""

    site: str
    num_examples: int
    data_manifest: str
    epsilon: float | None
    delta: float | None
    rounds_participated: int


@dataclass(frozen=True)
class VersionRecord:
    """A registered model version with everything needed to verify and load it."""

    name: str
    version: int
    artifact: StoredArtifact
    run_id: str | None
    signer_fingerprint: str
    metrics: dict[str, Any]
    watermark: dict[str, Any]
    stage: str
    created_at: datetime
    sites: tuple[SiteRecord, ...] = field(default=())
    rounds: int | None = None
    """The training run's aggregated rounds (``None`` for a version without a run)."""
    supersedes: int | None = None
    """The version this one replaces (``fedguard retrain``), if any."""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


class Registry:
    """Facade over the registry database and the artifact store."""

    def __init__(self, engine: Engine, home: Home, *, checkpoint_every: int = 100) -> None:
        self.engine = engine
        self.home = home
        self.store = ArtifactStore(home.artifacts)
        self.checkpoint_every = checkpoint_every

    @classmethod
    def open(cls, settings: Settings | None = None) -> Registry:
        """Open (creating or migrating) the registry named by the settings."""
        settings = settings or get_settings()
        home = Home(settings.home).ensure()
        engine = create_registry_engine(settings.registry_url)
        migrate(engine)
        return cls(engine, home, checkpoint_every=settings.audit_checkpoint_every)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One atomic unit of work: commit on success, roll back on any error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                raise StateError(f"registry write failed and was rolled back: {exc}") from exc
            except BaseException:
                session.rollback()
                raise
            audited = bool(session.info.get(audit.APPENDED))
        if audited and self.checkpoint_every > 0:  # a transaction without an audit event costs no query here
            self.checkpoint(every=self.checkpoint_every)

    def checkpoint(self, *, every: int = 1, strict: bool = False) -> Signed | None:
        """Sign the audit chain's head into ``audit/checkpoints.jsonl`` if ``every`` events came since the last.

        Runs after a transaction commits (a checkpoint never names an event
        that was rolled back). A failure to write it loses nothing: the chain
        is intact and the next transaction, or ``fedguard audit checkpoint``,
        writes the checkpoint that is due. ``strict`` (``fedguard audit
        checkpoint``) raises instead.
        """
        from lifecycle.audit import checkpoints

        try:
            with Session(self.engine) as session:
                if not checkpoints.due(session, self.checkpoint_log, every):
                    return None  # the common case: no key to load, no lock to take
                return checkpoints.write(session, checkpoints.AuditKey.ensure(self.home.keys), self.checkpoint_log,
                                         every=every)
        except (OSError, SQLAlchemyError, FedguardError) as exc:  # a damaged checkpoint file included
            if strict:
                if isinstance(exc, FedguardError):
                    raise
                raise StateError(f"cannot write the audit checkpoint in {self.home.audit}: {exc}") from exc
            logger.warning("audit checkpoint not written (%s); the next registry write retries", exc)
            return None

    @property
    def checkpoint_log(self) -> CheckpointLog:
        from lifecycle.audit.checkpoints import CHECKPOINTS_NAME, CheckpointLog

        return CheckpointLog(self.home.audit / CHECKPOINTS_NAME)

    def verify_audit(self, public_key: Path | None = None) -> Verified:
        """``fedguard audit verify``: the chain, the signed checkpoints, and that the registry still extends them."""
        from lifecycle.audit.checkpoints import PUBLIC_KEY_NAME, Verified, load_public_key, verify

        path = public_key or self.home.keys / PUBLIC_KEY_NAME
        with Session(self.engine) as session:
            if public_key is None and not path.exists() and not self.checkpoint_log.read():
                return Verified(audit.verify_chain(session), 0, None, "")  # no checkpoint was ever due
            return verify(session, self.checkpoint_log, load_public_key(path))

    def publish(
        self,
        *,
        name: str,
        artifact: StoredArtifact,
        signer_fingerprint: str,
        run_id: str,
        run_config: dict[str, Any],
        rounds: int,
        sites: list[SiteRecord],
        metrics: dict[str, Any],
        watermark: dict[str, Any],
        actor: str,
        mode: str = "simulation",
        supersedes: int | None = None,
        excludes_withdrawals: Sequence[Mapping[str, Any]] = (),
    ) -> VersionRecord:
        """Record a run, its sites and a new model version, with audit events, atomically.

        ``supersedes``: the version of the same model this one replaces
        (``fedguard retrain``); ``excludes_withdrawals`` the consent
        withdrawals its run left out. Both go into a ``model.retrained``
        event in the same transaction.
        A version whose lineage holds a site that withdrew its consent as a
        whole is tainted in the same transaction
        (:func:`lifecycle.governance.consent.taint_at_publication`).
        """
        validate_model_name(name)
        with self.transaction() as session:
            run = TrainingRun(
                id=run_id, mode=mode, rounds=rounds, config_json=json.dumps(run_config, sort_keys=True),
                finished_at=utcnow(),
            )
            session.add(run)
            session.flush()
            for site in sites:
                session.add(SiteParticipation(run_id=run_id, **site.__dict__))
            audit.record(session, "run.finished", actor=actor, subject=run_id,
                         details={"rounds": rounds, "sites": [s.site for s in sites]})
            model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
            if model is None:
                model = RegisteredModel(name=name)
                session.add(model)
                session.flush()
                audit.record(session, "model.created", actor=actor, subject=name)
            assert model.id is not None
            latest = session.exec(
                select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
            ).one()
            if supersedes is not None and not 1 <= supersedes <= (latest or 0):
                raise NotFoundError(f"model '{name}' has no version {supersedes} for version {(latest or 0) + 1} to "
                                    f"supersede; see 'fedguard models show {name}'")
            row = ModelVersion(
                model_id=model.id, version=(latest or 0) + 1, run_id=run_id,
                artifact_digest=artifact.digest, signer_fingerprint=signer_fingerprint,
                metrics_json=json.dumps(metrics, sort_keys=True),
                watermark_json=json.dumps(watermark, sort_keys=True), supersedes=supersedes,
            )
            session.add(row)
            audit.record(session, "model.version.registered", actor=actor, subject=f"{name}:{row.version}",
                         details={"artifact": artifact.digest, "signer": signer_fingerprint, "run": run_id})
            if supersedes is not None:
                audit.record(session, "model.retrained", actor=actor, subject=f"{name}:{row.version}",
                             details={"from": f"{name}:{supersedes}", "to": f"{name}:{row.version}",
                                      "withdrawals": [dict(w) for w in excludes_withdrawals]})
            session.flush()
            assert row.id is not None
            from lifecycle.governance.consent import taint_at_publication  # governance builds on the registry

            taint_at_publication(session, version_id=row.id, ref=f"{name}:{row.version}",
                                 sites=[s.site for s in sites], actor=actor)
        return self.get_version(name, row.version)

    def _to_record(self, session: Session, model: RegisteredModel, row: ModelVersion) -> VersionRecord:
        sites: tuple[SiteRecord, ...] = ()
        run = session.get(TrainingRun, row.run_id) if row.run_id else None
        if row.run_id:
            parts = session.exec(
                select(SiteParticipation).where(SiteParticipation.run_id == row.run_id)
                .order_by(col(SiteParticipation.site))
            ).all()
            sites = tuple(
                SiteRecord(p.site, p.num_examples, p.data_manifest, p.epsilon, p.delta, p.rounds_participated)
                for p in parts
            )
        return VersionRecord(
            name=model.name, version=row.version,
            artifact=StoredArtifact(row.artifact_digest, self.store.root / row.artifact_digest),
            run_id=row.run_id, signer_fingerprint=row.signer_fingerprint,
            metrics=json.loads(row.metrics_json), watermark=json.loads(row.watermark_json),
            stage=row.stage, created_at=row.created_at, sites=sites, rounds=run.rounds if run else None,
            supersedes=row.supersedes,
        )

    def get_version(self, name: str, version: int | None = None) -> VersionRecord:
        """The given version of ``name`` (newest if ``None``)."""
        with Session(self.engine) as session:
            model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
            if model is None:
                known = ", ".join(session.exec(select(RegisteredModel.name)).all()) or "none yet"
                raise NotFoundError(f"no model named '{name}' (registered: {known}); see 'fedguard models list'")
            query = select(ModelVersion).where(ModelVersion.model_id == model.id)
            if version is None:
                query = query.order_by(col(ModelVersion.version).desc()).limit(1)
            else:
                query = query.where(ModelVersion.version == version)
            row = session.exec(query).first()
            if row is None:
                raise NotFoundError(
                    f"model '{name}' has no version {version}; see 'fedguard models show {name}'"
                )
            return self._to_record(session, model, row)

    def version_of_run(self, run_id: str) -> VersionRecord | None:
        """The version a training run published, if it published one (a run publishes at most one).

        A resumed deployment run asks this before publishing: if the
        coordinator died after the registry commit but before it wrote the
        run's outcome, the model is already here and must not be published
        twice (``training_run.id`` is unique, so a second publish would fail).
        """
        with Session(self.engine) as session:
            row = session.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).first()
            if row is None:
                return None
            model = session.get(RegisteredModel, row.model_id)
            assert model is not None  # a foreign key
            return self._to_record(session, model, row)

    def resolve(self, ref: str) -> VersionRecord:
        name, version = parse_ref(ref)
        return self.get_version(name, version)

    def latest_versions(self) -> list[VersionRecord]:
        """The newest version of every registered model, by name."""
        with Session(self.engine) as session:
            records = []
            for model in session.exec(select(RegisteredModel).order_by(col(RegisteredModel.name))).all():
                row = session.exec(
                    select(ModelVersion).where(ModelVersion.model_id == model.id)
                    .order_by(col(ModelVersion.version).desc()).limit(1)
                ).first()
                if row is not None:
                    records.append(self._to_record(session, model, row))
            return records

    def versions(self, name: str) -> list[VersionRecord]:
        with Session(self.engine) as session:
            model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
            if model is None:
                raise NotFoundError(f"no model named '{name}'; see 'fedguard models list'")
            rows = session.exec(
                select(ModelVersion).where(ModelVersion.model_id == model.id).order_by(col(ModelVersion.version))
            ).all()
            return [self._to_record(session, model, row) for row in rows]

    def verify_audit_chain(self) -> int:
        with Session(self.engine) as session:
            return audit.verify_chain(session)

    def public_key_path(self) -> Path:
        from lifecycle.signing import PUBLIC_KEY_NAME

        return self.home.keys / PUBLIC_KEY_NAME
