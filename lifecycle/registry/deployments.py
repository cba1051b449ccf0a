"""Deployment state of each model: stable, candidate (canary or shadow), kill switch, history.

The registry is the one source of truth that every serving replica reads, so a
rollout or a kill decided on one machine (``fedguard deploy ...`` or an admin
route) reaches them all. Each action rewrites the model's single
:class:`~lifecycle.registry.tables.Deployment` row, bumps its ``revision``
(what replicas poll), appends a
:class:`~lifecycle.registry.tables.DeploymentEvent` and writes an audit event,
all in one transaction (DESIGN.md §6): the history can never disagree with
the state or with the audit trail.

A model with no row yet serves its newest version (revision 0); its first
action (or :meth:`DeploymentStore.adopt`) creates the row with that version
as stable. For a governed model (one with a declared policy) the stable
version of a new row is the one at ``production`` in that environment; and
whatever the model, a new row's stable version passes the same governance
check as any other, so adopting never serves what a deploy could not.

Governance holds on every path that points a deployment at a version (a
canary, a shadow, blue/green, a rollback, a pinned kill, a revive): inside
the same transaction, :func:`lifecycle.governance.enforce.check_deployable`
refuses a tainted version, or one whose production gates failed without a
signed override, or — for a governed model — one not promoted to the stage
its role needs (:class:`~lifecycle.errors.GovernanceError`, exit code 11).
Stage promotions (:mod:`lifecycle.governance.stages`) evaluate the gates
themselves and write through :meth:`DeploymentStore.apply` in their own
transaction.

Notes
-----
Canary, shadow and blue/green are the progressive-delivery patterns of
continuous-deployment practice (Humble & Farley, *Continuous Delivery*, 2010,
ch. 10; Sato, "CanaryRelease", 2014): a canary exposes a small, sticky share of
callers to the candidate, a shadow mirrors live traffic to it without exposing
any answer, and blue/green swaps the whole traffic in one step with the old
version kept for an instant rollback.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.errors import ConfigurationError, NotFoundError, StateError
from lifecycle.registry.store import _NAME, Registry
from lifecycle.registry.tables import Deployment, DeploymentEvent, ModelVersion, RegisteredModel, aware, utcnow

DEFAULT_ENVIRONMENT = "default"
"""The environment of a deployment that names none (``lifecycle.governance.tables`` re-exports it)."""


class DeploymentConflict(ConfigurationError):
    """The action does not fit the model's current deployment (nothing to promote, already stable, ...)."""


KILL_MODES: tuple[str, ...] = ("503", "pinned")
CANDIDATE_MODES: tuple[str, ...] = ("canary", "shadow")
MAX_REASON = 256
MAX_VERSION = 2**31 - 1  # the registry's integer columns
REPLACEMENT_SOURCE = "consent"
"""The ``source`` of the consent enforcement's replacement of a tainted stable version (``on-taint = "replace"``,
declared by the policy itself): the one promotion that needs no stage promotion (taint and gate decisions still
hold)."""


@dataclass(frozen=True)
class DeploymentState:
    """How a model is served now (a value; read it again to see later changes)."""

    model: str
    revision: int
    stable_version: int
    environment: str = DEFAULT_ENVIRONMENT
    previous_version: int | None = None
    candidate_version: int | None = None
    candidate_mode: str | None = None
    canary_weight: float = 0.0
    rollout_id: int = 0
    killed: bool = False
    kill_mode: str | None = None
    pinned_version: int | None = None
    kill_reason: str = ""
    updated_at: datetime | None = None

    def shares(self) -> dict[str, float]:
        """Percent of live answers by version (a shadow answers no one, so it has no share)."""
        return _shares(self.stable_version, self.candidate_version, self.candidate_mode, self.canary_weight,
                       self.killed, self.pinned_version)

    def versions_needed(self) -> set[int]:
        """Every version a replica must hold loaded to serve this state (and to revive it)."""
        needed = {self.stable_version}
        needed |= {v for v in (self.candidate_version, self.pinned_version) if v is not None}
        return needed

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        data["shares"] = self.shares()
        return data


@dataclass(frozen=True)
class DeploymentRecord:
    """One history entry: the action, who or what took it, and the state it left."""

    id: int
    model: str
    revision: int
    action: str
    actor: str
    source: str
    reason: str
    stable_version: int
    candidate_version: int | None
    candidate_mode: str | None
    canary_weight: float
    killed: bool
    kill_mode: str | None
    pinned_version: int | None
    shares: dict[str, float]
    created_at: datetime
    environment: str = DEFAULT_ENVIRONMENT

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


def _shares(stable: int, candidate: int | None, mode: str | None, weight: float, killed: bool,
            pinned: int | None) -> dict[str, float]:
    if killed:
        return {str(pinned): 100.0} if pinned is not None else {}
    if candidate is not None and mode == "canary":
        return {str(stable): round(100.0 - weight, 6), str(candidate): round(weight, 6)}
    return {str(stable): 100.0}


def _clean(reason: str) -> str:
    """A reason fit for the history: printable characters only (PostgreSQL refuses NUL), at most 256."""
    return "".join(c if c.isprintable() else " " for c in reason)[:MAX_REASON]



def _state(name: str, row: Deployment) -> DeploymentState:
    return DeploymentState(
        model=name, revision=row.revision, stable_version=row.stable_version, environment=row.environment,
        previous_version=row.previous_version,
        candidate_version=row.candidate_version, candidate_mode=row.candidate_mode, canary_weight=row.canary_weight,
        rollout_id=row.rollout_id, killed=row.killed, kill_mode=row.kill_mode, pinned_version=row.pinned_version,
        kill_reason=row.kill_reason, updated_at=aware(row.updated_at),
    )


def verify_version(registry: Registry, name: str, version: int, public_key: Path | None = None) -> None:
    """Check ``name:version`` exists and its signature verifies, before a deployment points at it.

    Raises
    ------
    NotFoundError
        No such model or version.
    SignatureError
        The artifact differs from what was signed (the message names the file).
    StateError
        The public key is missing.
    """
    from lifecycle.signing import verify_model

    record = registry.get_version(name, version)
    verify_model(record.artifact.model_dir, record.artifact.signature_path,
                 public_key or registry.public_key_path())


def validate_environment(name: str) -> str:
    """``name`` unchanged if it is a valid environment name (it appears in URLs, logs and audit subjects)."""
    if not _NAME.fullmatch(name) or len(name) > 64:
        raise ConfigurationError(
            f"invalid environment name {name[:64]!r}: use 1-64 lowercase letters, digits, '.', '_' or '-'"
        )
    return name


class DeploymentStore:
    """Reads and audited writes of deployment state in one environment, over one :class:`Registry`.

    Each named environment (a clinic, a region) has its own deployment of a
    model, so several versions may be live at once in different environments.
    """

    def __init__(self, registry: Registry, environment: str = DEFAULT_ENVIRONMENT) -> None:
        self.registry = registry
        self.environment = validate_environment(environment)

    # ----------------------------------------------------------------- reads
    def state(self, name: str) -> DeploymentState:
        """The current state of ``name`` (its newest version as stable if never deployed).

        Raises
        ------
        NotFoundError
            No model of that name, or it has no version.
        """
        with Session(self.registry.engine) as session:
            model = self._model(session, name)
            row = self._row(session, model)
            if row is not None:
                return _state(name, row)
            return DeploymentState(model=name, revision=0, stable_version=self._initial(session, model),
                                   environment=self.environment)

    def revisions(self) -> dict[str, int]:
        """``{model name: revision}`` of every deployed model: one cheap query that replicas poll."""
        with Session(self.registry.engine) as session:
            rows = session.exec(
                select(RegisteredModel.name, Deployment.revision).join(
                    Deployment, col(Deployment.model_id) == col(RegisteredModel.id))
                .where(Deployment.environment == self.environment)
            ).all()
            return {name: revision for name, revision in rows}

    def history(self, name: str, limit: int | None = None) -> list[DeploymentRecord]:
        """The deployment events of ``name``, oldest first (the last ``limit`` if given)."""
        with Session(self.registry.engine) as session:
            model = self._model(session, name)
            query = select(DeploymentEvent).where(DeploymentEvent.model_id == model.id,
                                                  DeploymentEvent.environment == self.environment)
            query = query.order_by(col(DeploymentEvent.id).desc())
            if limit is not None:
                query = query.limit(limit)
            rows = list(reversed(session.exec(query).all()))
            return [
                DeploymentRecord(
                    id=int(e.id or 0), model=name, revision=e.revision, action=e.action, actor=e.actor,
                    source=e.source, reason=e.reason, stable_version=e.stable_version,
                    candidate_version=e.candidate_version, candidate_mode=e.candidate_mode,
                    canary_weight=e.canary_weight, killed=e.killed, kill_mode=e.kill_mode,
                    pinned_version=e.pinned_version, shares=json.loads(e.shares_json), created_at=aware(e.created_at),
                    environment=e.environment,
                )
                for e in rows
            ]

    # ---------------------------------------------------------------- writes
    def adopt(self, name: str, *, actor: str) -> DeploymentState:
        """Make the served state explicit: a never-deployed model gets its newest version as stable.

        ``create_app`` calls this for every model it serves, so that a version
        published later is not served until an operator deploys it. Two
        replicas starting together may race; the loser reads the winner's row.

        Raises
        ------
        GovernanceError
            The version it would adopt may not be served: tainted, failed
            gates without an override, or (governed model) no version is at
            ``production`` in this environment.
        """
        current = self.state(name)
        if current.revision > 0:
            return current
        try:
            return self._apply(name, "adopt", actor, "serve", "", lambda row, session: {})
        except StateError:
            adopted = self.state(name)
            if adopted.revision == 0:
                raise
            return adopted

    def canary(self, name: str, version: int, weight: float, *, actor: str) -> DeploymentState:
        """Send ``weight`` percent of callers (sticky per key) to ``version``; the rest stay on stable."""
        if not 0.0 < weight <= 100.0:
            raise ConfigurationError(f"canary weight {weight} is out of range; give a percentage in (0, 100]")
        return self._candidate(name, version, "canary", float(weight), actor)

    def shadow(self, name: str, version: int, *, actor: str) -> DeploymentState:
        """Mirror live traffic to ``version``; its answers are compared and logged, never returned."""
        return self._candidate(name, version, "shadow", 0.0, actor)

    def abort(self, name: str, *, actor: str, source: str = "operator", reason: str = "") -> DeploymentState:
        """Drop the candidate; stable keeps all the traffic."""
        def change(row: Deployment, session: Session) -> dict[str, Any]:
            if row.candidate_version is None:
                raise DeploymentConflict(
                    f"model '{name}' has no canary or shadow to abort; see 'fedguard deploy status'")
            dropped = row.candidate_version
            self._clear_candidate(row)
            return {"dropped": dropped}

        return self._apply(name, "abort", actor, source, reason, change)

    def promote(self, name: str, version: int | None = None, *, actor: str, source: str = "operator",
                reason: str = "") -> DeploymentState:
        """Blue/green: make the candidate (or ``version``) stable in one step; the old stable is kept for rollback.

        ``source`` and ``reason`` go into the history (a consent withdrawal's
        replacement is ``source="consent"``).
        """
        def change(row: Deployment, session: Session) -> dict[str, Any]:
            target = version if version is not None else row.candidate_version
            if target is None:
                raise DeploymentConflict(
                    f"model '{name}' has no candidate to promote; start one with 'fedguard deploy canary' "
                    "or name the version: 'fedguard deploy promote MODEL --version N'"
                )
            self._check_version(session, row.model_id, name, target)
            if target == row.stable_version:
                raise DeploymentConflict(f"{name}:{target} is already stable")
            self._governed(session, name, target, staged=source != REPLACEMENT_SOURCE)
            row.previous_version, row.stable_version = row.stable_version, target
            self._clear_candidate(row)
            return {"from": row.previous_version, "to": target}

        return self._apply(name, "promote", actor, source, reason, change)

    def rollback(self, name: str, *, actor: str) -> DeploymentState:
        """Make the previous stable version stable again (and drop any candidate)."""
        def change(row: Deployment, session: Session) -> dict[str, Any]:
            if row.previous_version is None:
                raise DeploymentConflict(f"model '{name}' has no previous stable version to roll back to")
            self._governed(session, name, row.previous_version)
            row.previous_version, row.stable_version = row.stable_version, row.previous_version
            self._clear_candidate(row)
            return {"from": row.previous_version, "to": row.stable_version}

        return self._apply(name, "rollback", actor, "operator", "", change)

    def kill(self, name: str, *, pin: int | None = None, actor: str, source: str = "operator",
             reason: str = "") -> DeploymentState:
        """Engage the kill switch: every replica answers 503, or serves only ``pin`` if given.

        The caller must have verified ``pin``'s signature (serving does, before
        calling); this layer checks that the version exists.
        """
        def change(row: Deployment, session: Session) -> dict[str, Any]:
            if pin is not None:
                self._check_version(session, row.model_id, name, pin)
                self._governed(session, name, pin)
            row.killed, row.kill_mode, row.pinned_version = True, "pinned" if pin is not None else "503", pin
            row.kill_reason = _clean(reason)
            return {"mode": row.kill_mode, "pinned": pin, "reason": row.kill_reason}

        return self._apply(name, "kill", actor, source, reason, change)

    def trip(self, name: str, *, pin: int | None, actor: str, source: str, reason: str) -> DeploymentState | None:
        """Kill ``name`` unless it is killed already (automatic cut-outs call this; ``None`` if no change)."""
        if self.state(name).killed:
            return None
        return self.kill(name, pin=pin, actor=actor, source=source, reason=reason)

    def revive(self, name: str, *, actor: str) -> DeploymentState:
        """Release the kill switch: the model serves its stable (and candidate) again."""
        def change(row: Deployment, session: Session) -> dict[str, Any]:
            if not row.killed:
                raise DeploymentConflict(f"model '{name}' is not killed; nothing to revive")
            self._governed(session, name, row.stable_version)
            self._governed(session, name, row.candidate_version, candidate=True)
            was = {"mode": row.kill_mode, "pinned": row.pinned_version}
            row.killed, row.kill_mode, row.pinned_version, row.kill_reason = False, None, None, ""
            return was

        return self._apply(name, "revive", actor, "operator", "", change)

    # --------------------------------------------------------------- helpers
    def _candidate(self, name: str, version: int, mode: str, weight: float, actor: str) -> DeploymentState:
        def change(row: Deployment, session: Session) -> dict[str, Any]:
            self._check_version(session, row.model_id, name, version)
            if version == row.stable_version:
                raise DeploymentConflict(f"{name}:{version} is the stable version; a {mode} needs another version")
            self._governed(session, name, version, candidate=True)
            if (row.candidate_version, row.candidate_mode) != (version, mode):
                row.rollout_id = row.revision + 1  # a new rollout re-draws who is in the canary
            row.candidate_version, row.candidate_mode, row.canary_weight = version, mode, weight
            return {"version": version, "mode": mode, "weight": weight}

        return self._apply(name, mode, actor, "operator", "", change)

    @staticmethod
    def _clear_candidate(row: Deployment) -> None:
        row.candidate_version, row.candidate_mode, row.canary_weight = None, None, 0.0

    @staticmethod
    def _model(session: Session, name: str) -> RegisteredModel:
        if not _NAME.fullmatch(name):  # never send a malformed name (NUL bytes, 10k characters) to the database
            raise NotFoundError(f"no model named {name[:128]!r}; see 'fedguard models list'")
        model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
        if model is None:
            raise NotFoundError(f"no model named '{name[:128]}'; see 'fedguard models list'")
        return model

    @staticmethod
    def _newest(session: Session, model: RegisteredModel) -> int:
        newest = session.exec(
            select(ModelVersion.version).where(ModelVersion.model_id == model.id)
            .order_by(col(ModelVersion.version).desc()).limit(1)
        ).first()
        if newest is None:
            raise NotFoundError(f"model '{model.name}' has no version yet; publish one first")
        return int(newest)

    def _initial(self, session: Session, model: RegisteredModel) -> int:
        """The stable version of a new row: the newest at ``production`` here for a governed model, else the newest.

        A governed model with no version at ``production`` here gets its newest
        as a placeholder, which :meth:`apply`'s check then refuses (naming the
        promotion to run).
        """
        from lifecycle.governance.policies import declared  # governance's tables import this module
        from lifecycle.governance.tables import VersionStage

        if declared(session, model.name, model.id) is not None:
            found = session.exec(
                select(ModelVersion.version)
                .join(VersionStage, col(VersionStage.model_version_id) == col(ModelVersion.id))
                .where(ModelVersion.model_id == model.id, VersionStage.environment == self.environment,
                       VersionStage.stage == "production")
                .order_by(col(ModelVersion.version).desc()).limit(1)
            ).first()
            if found is not None:
                return int(found)
        return self._newest(session, model)

    def lock(self, session: Session, model: RegisteredModel) -> Deployment | None:
        """The deployment row in this environment of ``model``, locked until ``session`` ends (PostgreSQL), if any."""
        return self._row(session, model, lock=True)

    def _row(self, session: Session, model: RegisteredModel, lock: bool = False) -> Deployment | None:
        query = select(Deployment).where(Deployment.model_id == model.id,
                                         Deployment.environment == self.environment)
        if lock:
            query = query.with_for_update()  # PostgreSQL: serialise two operators; SQLite ignores it
        return session.exec(query).first()

    @staticmethod
    def _check_version(session: Session, model_id: int, name: str, version: int) -> None:
        if not 1 <= version <= MAX_VERSION:
            raise NotFoundError(f"model '{name}' has no version {version}; versions count from 1")
        found = session.exec(
            select(ModelVersion.id).where(ModelVersion.model_id == model_id, ModelVersion.version == version)
        ).first()
        if found is None:
            raise NotFoundError(f"model '{name}' has no version {version}; see 'fedguard models show {name}'")

    def _governed(self, session: Session, name: str, version: int | None, *, candidate: bool = False,
                  staged: bool = True) -> None:
        """Refuse (GovernanceError) to point this environment's deployment at a version governance forbids.

        ``candidate``: as a canary or shadow (else as stable or pinned); ``staged=False``: no stage requirement
        (see :func:`lifecycle.governance.enforce.check_deployable`).
        """
        if version is None:
            return
        from lifecycle.governance.enforce import check_deployable  # governance's tables import this module

        check_deployable(session, name, version, self.environment, candidate=candidate, staged=staged)

    def _apply(self, name: str, action: str, actor: str, source: str, reason: str, change: Any) -> DeploymentState:
        """Run ``change(row, session)`` on the locked row, then bump, log and audit it, atomically."""
        with self.registry.transaction() as session:
            return self.apply(session, name, action, change, actor=actor, source=source, reason=reason)

    def apply(self, session: Session, name: str, action: str, change: Any, *, actor: str, source: str,
              reason: str = "", checked: bool = False) -> DeploymentState:
        """As :meth:`_apply`, inside the caller's open transaction ``session`` (it commits or rolls back).

        ``change(row, session)`` edits the locked row (a new one has
        :meth:`_initial` as stable; ``change`` may set another) and returns
        the audit details. A new row's stable version must then pass
        :func:`~lifecycle.governance.enforce.check_deployable` (unless the
        row is killed, which serves nothing, or ``checked``: a stage
        promotion, which uses this to write its stage rows, its approvals and
        the deployment in one transaction, has governed the version itself).
        """
        model = self._model(session, name)
        assert model.id is not None
        row = self._row(session, model, lock=True)
        created = row is None
        if row is None:
            row = Deployment(model_id=model.id, environment=self.environment,
                             stable_version=self._initial(session, model))
        details = change(row, session)
        if created and not checked and not row.killed:
            self._governed(session, name, row.stable_version)
        row.revision += 1
        row.updated_at = utcnow()
        session.add(row)
        shares = _shares(row.stable_version, row.candidate_version, row.candidate_mode, row.canary_weight,
                         row.killed, row.pinned_version)
        session.add(DeploymentEvent(
            model_id=model.id, environment=self.environment, revision=row.revision, action=action,
            actor=actor[:128], source=source,
            reason=_clean(reason), stable_version=row.stable_version,
            candidate_version=row.candidate_version, candidate_mode=row.candidate_mode,
            canary_weight=row.canary_weight, killed=row.killed, kill_mode=row.kill_mode,
            pinned_version=row.pinned_version, shares_json=json.dumps(shares, sort_keys=True),
        ))
        audit.record(session, f"deployment.{action}", actor=actor[:128], subject=name,
                     details={**details, "source": source, "revision": row.revision, "shares": shares,
                              "environment": self.environment})
        session.flush()
        return _state(name, row)
