"""Consent withdrawals, the taint they put on model versions, and what production does about it.

A site (from its agent, signed with its enrolled key) or the coordinator's
operator withdraws consent for the whole site or for a list of its records
(issue 14, point 4). :meth:`ConsentStore.withdraw` then, in **one**
transaction with its audit event ``consent.withdrawn``:

- stores the :class:`~lifecycle.governance.tables.ConsentWithdrawal` (for
  records: their count and a salted digest only, :mod:`federation.consent`);
- marks every version whose lineage holds the site (a
  :class:`~lifecycle.registry.tables.SiteParticipation` of the version's run)
  as tainted (:class:`~lifecycle.governance.tables.ModelTaint`).

A whole-site withdrawal also taints every version published *later* whose
lineage still holds the site (:func:`taint_at_publication`, called inside
:meth:`Registry.publish`'s transaction); a records withdrawal does not,
since the site's agent excludes those records from then on.

Right after the commit, every deployment (each model and environment)
whose stable, candidate or pinned version is now tainted is acted on, per
the model's policy (``on-taint``, :func:`on_taint_policy`), each change an
audited deployment event of source ``consent``:

- ``block`` (default): the kill switch, 503 on every replica;
- ``replace``: the newest clean version whose signature verifies becomes
  stable (blocked when there is none);
- a tainted canary or shadow alone is dropped (stable keeps serving).

Replicas pick the change up through the deployment revision they poll, and
never load a tainted version at all (``serving.rollout.router``), so a
replica that starts later cannot serve one either. The gates fail for a
tainted version (``consent-clean``, :mod:`lifecycle.governance.gates`).

Notes
-----
On PostgreSQL the withdrawal takes the audit chain's transaction lock before
it reads the lineage; a publication holds the same lock from its first audit
event, so a version published concurrently is either seen here or sees the
withdrawal at its own publication: none escapes its taint.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from lifecycle import audit, logger
from lifecycle.errors import ConfigurationError, FedguardError, NotFoundError
from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint
from lifecycle.registry.deployments import DeploymentStore, verify_version
from lifecycle.registry.store import Registry
from lifecycle.registry.tables import Deployment, ModelVersion, RegisteredModel, SiteParticipation, utcnow

SITE = "site"
RECORDS = "records"
SCOPES: tuple[str, ...] = (SITE, RECORDS)
SOURCES: tuple[str, ...] = ("coordinator", "site")
BLOCK = "block"
REPLACE = "replace"
ON_TAINT: tuple[str, ...] = (BLOCK, REPLACE)
"""What production does with a tainted version (the policy's ``on-taint``; ``block`` by default)."""
DEPLOYMENT_SOURCE = "consent"
"""The ``source`` of every deployment event a withdrawal causes."""
REASON_PREFIX = "consent withdrawn"
"""How the reason of a consent kill starts (serving answers those with its own generic message)."""
MAX_SITE = 64
MAX_REASON = 512


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Withdrawal:
    """One recorded withdrawal (for records: count and digest only)."""

    id: int
    site: str
    scope: str
    record_count: int | None
    records_digest: str
    reason: str
    actor: str
    source: str
    signed: bool
    """Whether it came with the site's signed statement (kept verbatim in the registry)."""
    created_at: datetime

    @classmethod
    def of(cls, row: ConsentWithdrawal) -> Withdrawal:
        return cls(int(row.id or 0), row.site, row.scope, row.record_count, row.records_digest, row.reason,
                   row.actor, row.source, bool(row.signature), _aware(row.created_at))

    def kill_reason(self) -> str:
        """The operator-facing reason of a deployment change it causes (the public 503 names no site)."""
        return f"{REASON_PREFIX} by site {self.site} (withdrawal #{self.id})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class TaintRecord:
    """A version whose lineage holds withdrawn data, and the withdrawal that taints it."""

    model: str
    version: int
    withdrawal: Withdrawal
    tainted_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "withdrawal": self.withdrawal.to_dict(),
                "tainted_at": self.tainted_at.isoformat()}


@dataclass(frozen=True)
class DeploymentOutcome:
    """What a withdrawal did to one deployment: ``blocked``, ``replaced``, ``candidate-dropped`` or ``failed``."""

    model: str
    environment: str
    action: str
    policy: str
    from_version: int
    to_version: int | None = None
    revision: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WithdrawalResult:
    """The withdrawal, every version it tainted, and what happened to each affected deployment."""

    withdrawal: Withdrawal
    tainted: tuple[str, ...]
    deployments: tuple[DeploymentOutcome, ...]

    @property
    def failed(self) -> tuple[DeploymentOutcome, ...]:
        return tuple(d for d in self.deployments if d.action == "failed")

    def to_dict(self) -> dict[str, Any]:
        return {"withdrawal": self.withdrawal.to_dict(), "tainted": list(self.tainted),
                "deployments": [d.to_dict() for d in self.deployments]}


def on_taint_policy(registry: Registry, name: str) -> str:
    """The model's ``on-taint`` policy: ``block`` (default) or ``replace``."""
    from lifecycle.governance import policies  # policies -> gates -> consent: imported when first needed

    policy = policies.on_taint(registry, name)
    if policy not in ON_TAINT:
        logger.warning("unknown on-taint policy %r for model %s; blocking", policy, name)
        return BLOCK
    return policy


def _serialise(session: Session) -> None:
    """Take the audit chain's lock now (PostgreSQL), so a concurrent publication cannot escape the taint."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": audit.AUDIT_LOCK_KEY})


def _taint(session: Session, version_id: int, withdrawal_id: int) -> None:
    """Mark one version tainted by one withdrawal (a seam where tests inject a failure)."""
    session.add(ModelTaint(model_version_id=version_id, withdrawal_id=withdrawal_id, created_at=utcnow()))
    session.flush()


def taint_at_publication(session: Session, *, version_id: int, ref: str, sites: Iterable[str],
                         actor: str) -> list[int]:
    """Inside a publication's transaction: taint the new version if a site of its lineage withdrew as a whole.

    Returns the ids of the withdrawals that taint it (empty: it is clean).
    Records withdrawals are not considered: the site excludes those records
    from every later training.
    """
    names = sorted(set(sites))
    if not names:
        return []
    rows = session.exec(select(ConsentWithdrawal).where(col(ConsentWithdrawal.site).in_(names),
                                                        ConsentWithdrawal.scope == SITE)
                        .order_by(col(ConsentWithdrawal.id))).all()
    for row in rows:
        _taint(session, version_id, int(row.id or 0))
    if rows:
        audit.record(session, "consent.tainted", actor=actor, subject=ref,
                     details={"at": "publication", "withdrawals": [r.id for r in rows],
                              "sites": sorted({r.site for r in rows})})
        logger.warning("%s is tainted at publication: its lineage holds withdrawn site(s) %s", ref,
                       ", ".join(sorted({r.site for r in rows})))
    return [int(r.id or 0) for r in rows]


_SITE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _validate(site: str, scope: str, record_count: int | None, records_digest: str, source: str) -> None:
    if not site or len(site) > MAX_SITE or not set(site) <= _SITE_CHARS:
        raise ConfigurationError(f"invalid site name {site[:MAX_SITE]!r}: use 1-64 letters, digits, '.', '_' or '-'")
    if scope not in SCOPES:
        raise ConfigurationError(f"withdrawal scope must be one of {SCOPES}, got {scope!r}")
    if source not in SOURCES:
        raise ConfigurationError(f"withdrawal source must be one of {SOURCES}, got {source!r}")
    if scope == SITE and (record_count is not None or records_digest):
        raise ConfigurationError("a whole-site withdrawal carries no record count or digest")
    if scope == RECORDS and (record_count is None or record_count < 1 or len(records_digest) != 64
                             or not set(records_digest) <= set("0123456789abcdef")):
        raise ConfigurationError("a records withdrawal needs a record count of at least 1 and a records digest "
                                 "(64 lowercase hex digits)")


def _clean(reason: str) -> str:
    return "".join(c if c.isprintable() else " " for c in reason).strip()[:MAX_REASON]


class ConsentStore:
    """Withdrawals, taint and their enforcement over one :class:`Registry` (see the module docstring)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # ---------------------------------------------------------------- writes
    def withdraw(self, site: str, *, scope: str, reason: str, actor: str, record_count: int | None = None,
                 records_digest: str = "", source: str = "coordinator", statement_json: str = "{}",
                 signature: str = "", enrolled: Collection[str] = ()) -> WithdrawalResult:
        """Record a withdrawal, taint every version it covers (one transaction), then act on production.

        ``enrolled``: the federation's enrolled site names (the coordinator
        CLI passes them); a site in no lineage and not enrolled is unknown.

        Raises
        ------
        NotFoundError
            The site is in no model's lineage and not enrolled.
        ConfigurationError
            A malformed withdrawal, the site already withdrew as a whole, or the same signed statement twice.
        StateError
            The registry write failed (nothing was recorded or tainted).
        """
        _validate(site, scope, record_count, records_digest, source)
        reason = _clean(reason)
        if not reason:
            raise ConfigurationError("a withdrawal needs a reason; pass --reason TEXT")
        with self.registry.transaction() as session:
            _serialise(session)
            self._check_known(session, site, enrolled)
            self._check_new(session, site, signature)
            row = ConsentWithdrawal(site=site, scope=scope, record_count=record_count, records_digest=records_digest,
                                    reason=reason, actor=actor[:128], source=source, statement_json=statement_json,
                                    signature=signature, created_at=utcnow())
            session.add(row)
            session.flush()
            assert row.id is not None
            covered = self._lineage(session, site)
            for version_id, _, _ in covered:
                _taint(session, version_id, row.id)
            refs = tuple(f"{name}:{version}" for _, name, version in covered)
            audit.record(session, "consent.withdrawn", actor=actor[:128], subject=f"site:{site}",
                         details={"withdrawal": row.id, "site": site, "scope": scope, "record_count": record_count,
                                  "records_digest": records_digest, "source": source, "signed": bool(signature),
                                  "reason": reason, "tainted": list(refs)})
            withdrawal = Withdrawal.of(row)
        logger.info("consent withdrawn by site %s (withdrawal #%d, %s): %d version(s) tainted", site,
                       withdrawal.id, scope, len(refs))
        outcomes = self.enforce(withdrawal, {(name, version) for _, name, version in covered}, actor=actor)
        return WithdrawalResult(withdrawal, refs, tuple(outcomes))

    def enforce(self, withdrawal: Withdrawal, tainted: set[tuple[str, int]], *,
                actor: str) -> list[DeploymentOutcome]:
        """Act on every deployment serving a version in ``tainted``, per its model's policy (each audited)."""
        outcomes: list[DeploymentOutcome] = []
        for name, environment in self._deployments({name for name, _ in tainted}):
            bad = {version for model, version in tainted if model == name}
            try:
                outcome = self._enforce_one(withdrawal, name, environment, bad, actor)
            except FedguardError as exc:
                logger.error("could not act on the deployment of %s in %s after withdrawal #%d: %s", name,
                             environment, withdrawal.id, exc)
                outcome = DeploymentOutcome(name, environment, "failed", on_taint_policy(self.registry, name), 0,
                                            detail=str(exc))
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _enforce_one(self, withdrawal: Withdrawal, name: str, environment: str, bad: set[int],
                     actor: str) -> DeploymentOutcome | None:
        store = DeploymentStore(self.registry, environment)
        state = store.state(name)
        stable_bad = state.stable_version in bad
        pinned_bad = state.killed and state.pinned_version in bad
        candidate_bad = state.candidate_version in bad
        if not (stable_bad or pinned_bad or candidate_bad):
            return None
        policy = on_taint_policy(self.registry, name)
        reason = withdrawal.kill_reason()
        if not (stable_bad or pinned_bad):  # only the canary or shadow: drop it, stable keeps serving
            after = store.abort(name, actor=actor, source=DEPLOYMENT_SOURCE, reason=reason)
            return DeploymentOutcome(name, environment, "candidate-dropped", policy, state.stable_version,
                                     state.stable_version, after.revision,
                                     f"candidate {state.candidate_version} dropped")
        if policy == REPLACE and stable_bad and not pinned_bad:
            target = self.newest_clean(name)
            if target is not None:
                after = store.promote(name, target, actor=actor, source=DEPLOYMENT_SOURCE, reason=reason)
                return DeploymentOutcome(name, environment, "replaced", policy, state.stable_version, target,
                                         after.revision, f"newest clean signed version {target} is stable")
        after = store.kill(name, actor=actor, source=DEPLOYMENT_SOURCE, reason=reason)
        detail = "503 on every replica" + (" (no clean signed version to replace it)" if policy == REPLACE else "")
        return DeploymentOutcome(name, environment, "blocked", policy, state.stable_version, None, after.revision,
                                 detail)

    def newest_clean(self, name: str) -> int | None:
        """The newest version of ``name`` that no withdrawal taints and whose signature verifies, if any."""
        tainted = self.tainted_versions(name)
        for record in reversed(self.registry.versions(name)):
            if record.version in tainted:
                continue
            try:
                verify_version(self.registry, name, record.version)
            except FedguardError as exc:
                logger.warning("not replacing with %s: %s", record.ref, exc)
                continue
            return record.version
        return None

    # ----------------------------------------------------------------- reads
    def tainted(self, name: str | None = None) -> list[TaintRecord]:
        """Every (version, withdrawal) taint, by model, version and withdrawal (of ``name`` only, if given)."""
        with Session(self.registry.engine) as session:
            query = (select(RegisteredModel.name, ModelVersion.version, ModelTaint, ConsentWithdrawal)
                     .join(ModelVersion, col(ModelVersion.id) == col(ModelTaint.model_version_id))
                     .join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
                     .join(ConsentWithdrawal, col(ConsentWithdrawal.id) == col(ModelTaint.withdrawal_id)))
            if name is not None:
                query = query.where(RegisteredModel.name == name)
            rows = session.exec(query.order_by(col(RegisteredModel.name), col(ModelVersion.version),
                                               col(ConsentWithdrawal.id))).all()
            return [TaintRecord(model, version, Withdrawal.of(w), _aware(t.created_at))
                    for model, version, t, w in rows]

    def tainted_versions(self, name: str) -> set[int]:
        """The versions of ``name`` that some withdrawal taints (one query: serving asks before loading one)."""
        with Session(self.registry.engine) as session:
            rows = session.exec(
                select(ModelVersion.version).join(ModelTaint, col(ModelTaint.model_version_id) == col(ModelVersion.id))
                .join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
                .where(RegisteredModel.name == name)
            ).all()
            return {int(v) for v in rows}

    def withdrawals(self, site: str | None = None) -> list[Withdrawal]:
        """Every withdrawal, oldest first (of ``site`` only, if given)."""
        with Session(self.registry.engine) as session:
            query = select(ConsentWithdrawal)
            if site is not None:
                query = query.where(ConsentWithdrawal.site == site)
            return [Withdrawal.of(r) for r in session.exec(query.order_by(col(ConsentWithdrawal.id))).all()]

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _check_known(session: Session, site: str, enrolled: Collection[str]) -> None:
        if site in enrolled:
            return
        if session.exec(select(SiteParticipation.id).where(SiteParticipation.site == site).limit(1)).first() is None:
            raise NotFoundError(f"no site '{site}' is enrolled or in any model's lineage; see 'fedguard site list' "
                                "and 'fedguard models show MODEL'")

    @staticmethod
    def _check_new(session: Session, site: str, signature: str) -> None:
        whole = session.exec(select(ConsentWithdrawal.id).where(ConsentWithdrawal.site == site,
                                                                ConsentWithdrawal.scope == SITE).limit(1)).first()
        if whole is not None:
            raise ConfigurationError(f"site '{site}' already withdrew its consent as a whole (withdrawal #{whole}); "
                                     "see 'fedguard models list --tainted'")
        if signature:
            same = session.exec(select(ConsentWithdrawal.id)
                                .where(ConsentWithdrawal.signature == signature).limit(1)).first()
            if same is not None:
                raise ConfigurationError(f"this signed statement is already recorded (withdrawal #{same})")

    @staticmethod
    def _lineage(session: Session, site: str) -> list[tuple[int, str, int]]:
        """``(version id, model, version)`` of every version whose run had ``site`` among its sites."""
        rows = session.exec(
            select(ModelVersion.id, RegisteredModel.name, ModelVersion.version)
            .join(SiteParticipation, col(SiteParticipation.run_id) == col(ModelVersion.run_id))
            .join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
            .where(SiteParticipation.site == site)
            .order_by(col(RegisteredModel.name), col(ModelVersion.version))
        ).all()
        return [(int(i or 0), str(n), int(v)) for i, n, v in rows]

    def _deployments(self, names: set[str]) -> list[tuple[str, str]]:
        """``(model, environment)`` of every deployment of the models in ``names``."""
        if not names:
            return []
        with Session(self.registry.engine) as session:
            rows = session.exec(
                select(RegisteredModel.name, Deployment.environment)
                .join(Deployment, col(Deployment.model_id) == col(RegisteredModel.id))
                .where(col(RegisteredModel.name).in_(sorted(names)))
                .order_by(col(RegisteredModel.name), col(Deployment.environment))
            ).all()
            return [(str(n), str(e)) for n, e in rows]
