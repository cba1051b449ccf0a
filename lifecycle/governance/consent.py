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

In the **same** transaction, every deployment (each model and environment)
whose stable, candidate or pinned version is now tainted is acted on, per
the model's policy (``on-taint``, :func:`on_taint_policy`), each change an
audited deployment event of source ``consent`` written through
:meth:`DeploymentStore.apply`: the withdrawal, its taint and the production
change commit together or not at all, so a crash can never leave a tainted
version live after its withdrawal is recorded.

- ``block`` (default): the kill switch, 503 on every replica;
- ``replace``: the newest clean version at ``production`` or ``staging`` in
  that environment whose signature verifies (checked *before* the
  transaction: file IO holds no lock) becomes stable; if there is none, or
  governance refuses it (:func:`lifecycle.governance.enforce.check_deployable`:
  failed production gates, a taint), the deployment is killed as for
  ``block`` and the outcome names both steps;
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
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel import Session, col, select

from lifecycle import audit, logger
from lifecycle.errors import ConfigurationError, FedguardError, GovernanceError, NotFoundError
from lifecycle.governance.decisions import PRODUCTION, STAGING
from lifecycle.governance.enforce import check_deployable
from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint, VersionStage
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT, DeploymentStore, verify_version
from lifecycle.registry.deployments import MAX_REASON as MAX_KILL_REASON
from lifecycle.registry.store import Registry
from lifecycle.registry.tables import Deployment, ModelVersion, RegisteredModel, SiteParticipation, aware, utcnow

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
                   row.actor, row.source, bool(row.signature), aware(row.created_at))

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
    """What a withdrawal did to one deployment: ``blocked``, ``replaced`` or ``candidate-dropped``.

    ``steps`` says each step in order: a refused replacement, then the kill
    that followed it, are both there.
    """

    model: str
    environment: str
    action: str
    policy: str
    from_version: int
    to_version: int | None = None
    revision: int | None = None
    detail: str = ""
    steps: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = list(self.steps)
        return data


@dataclass(frozen=True)
class WithdrawalResult:
    """The withdrawal, every version it tainted, and what happened to each affected deployment."""

    withdrawal: Withdrawal
    tainted: tuple[str, ...]
    deployments: tuple[DeploymentOutcome, ...]

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


def _drop_candidate(row: Deployment, session: Session) -> dict[str, Any]:
    """A deployment change: drop the tainted canary or shadow (stable keeps all the traffic)."""
    dropped = row.candidate_version
    row.candidate_version, row.candidate_mode, row.canary_weight = None, None, 0.0
    return {"dropped": dropped}


def _promote(target: int) -> Any:
    """A deployment change: ``target`` (already cleared by governance in this session) becomes stable."""
    def change(row: Deployment, session: Session) -> dict[str, Any]:
        row.previous_version, row.stable_version = row.stable_version, target
        row.candidate_version, row.candidate_mode, row.canary_weight = None, None, 0.0
        return {"from": row.previous_version, "to": target}

    return change


def _kill(reason: str, refused: dict[str, Any]) -> Any:
    """A deployment change: the kill switch, 503 (``refused``: the replacement governance refused first)."""
    def change(row: Deployment, session: Session) -> dict[str, Any]:
        row.killed, row.kill_mode, row.pinned_version = True, "503", None
        row.kill_reason = "".join(c if c.isprintable() else " " for c in reason)[:MAX_KILL_REASON]
        return {"mode": "503", "pinned": None, "reason": row.kill_reason, **refused}

    return change


class ConsentStore:
    """Withdrawals, taint and their enforcement over one :class:`Registry` (see the module docstring)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # ---------------------------------------------------------------- writes
    def withdraw(self, site: str, *, scope: str, reason: str, actor: str, record_count: int | None = None,
                 records_digest: str = "", source: str = "coordinator", statement_json: str = "{}",
                 signature: str = "", enrolled: Collection[str] = ()) -> WithdrawalResult:
        """Record a withdrawal, taint every version it covers and act on production, in one transaction.

        ``enrolled``: the federation's enrolled site names (the coordinator
        CLI passes them); a site in no lineage and not enrolled is unknown.

        Raises
        ------
        NotFoundError
            The site is in no model's lineage and not enrolled.
        ConfigurationError
            A malformed withdrawal, the site already withdrew as a whole, or the same signed statement twice.
        StateError
            The registry write failed (nothing was recorded, tainted or changed in production).
        """
        _validate(site, scope, record_count, records_digest, source)
        reason = _clean(reason)
        if not reason:
            raise ConfigurationError("a withdrawal needs a reason; pass --reason TEXT")
        policies, replacements = self._plan(site)  # reads and signature checks: before any lock is taken
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
            outcomes = self._enforce(session, withdrawal, {(name, version) for _, name, version in covered},
                                     actor=actor, policies=policies, replacements=replacements)
        logger.info("consent withdrawn by site %s (withdrawal #%d, %s): %d version(s) tainted, %d deployment(s) "
                    "acted on", site, withdrawal.id, scope, len(refs), len(outcomes))
        return WithdrawalResult(withdrawal, refs, tuple(outcomes))

    def _plan(self, site: str) -> tuple[dict[str, str], dict[tuple[str, str], int]]:
        """Before the transaction: each affected model's policy, and each replacement whose signature verifies.

        A replacement is planned for every deployment whose stable version the
        withdrawal will taint, under ``replace``; the transaction re-checks it
        under governance (a version tainted meanwhile is refused there).
        """
        with Session(self.registry.engine) as session:
            covered = self._lineage(session, site)
        bad: dict[str, set[int]] = {}
        for _, name, version in covered:
            bad.setdefault(name, set()).add(version)
        policies = {name: on_taint_policy(self.registry, name) for name in bad}
        replacements: dict[tuple[str, str], int] = {}
        for name, environment in self._deployments({n for n, p in policies.items() if p == REPLACE}):
            if DeploymentStore(self.registry, environment).state(name).stable_version not in bad[name]:
                continue
            target = self.newest_clean(name, environment, exclude=bad[name])
            if target is not None:
                replacements[(name, environment)] = target
        return policies, replacements

    def _enforce(self, session: Session, withdrawal: Withdrawal, tainted: set[tuple[str, int]], *, actor: str,
                 policies: dict[str, str], replacements: dict[tuple[str, str], int]) -> list[DeploymentOutcome]:
        """Inside the withdrawal's transaction: act on every deployment serving a version in ``tainted``.

        A model the plan did not know (published between the plan and the
        transaction) is blocked: the safe action needs no policy read.
        """
        outcomes: list[DeploymentOutcome] = []
        names = sorted({name for name, _ in tainted})
        rows = session.exec(
            select(RegisteredModel.name, Deployment)
            .join(Deployment, col(Deployment.model_id) == col(RegisteredModel.id))
            .where(col(RegisteredModel.name).in_(names))
            .order_by(col(RegisteredModel.name), col(Deployment.environment))
        ).all() if names else []
        for name, row in rows:
            bad = {version for model, version in tainted if model == name}
            outcome = self._enforce_one(session, withdrawal, str(name), row, bad, actor,
                                        policies.get(name, BLOCK), replacements.get((name, row.environment)))
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _enforce_one(self, session: Session, withdrawal: Withdrawal, name: str, row: Deployment, bad: set[int],
                     actor: str, policy: str, replacement: int | None) -> DeploymentOutcome | None:
        environment = row.environment
        store = DeploymentStore(self.registry, environment)
        stable, candidate = row.stable_version, row.candidate_version
        stable_bad = stable in bad
        pinned_bad = row.killed and row.pinned_version in bad
        if not (stable_bad or pinned_bad or candidate in bad):
            return None
        reason = withdrawal.kill_reason()

        def apply(action: str, change: Any) -> int:
            return store.apply(session, name, action, change, actor=actor, source=DEPLOYMENT_SOURCE,
                               reason=reason).revision

        if not (stable_bad or pinned_bad):  # only the canary or shadow: drop it, stable keeps serving
            revision = apply("abort", _drop_candidate)
            step = f"candidate {candidate} dropped"
            return DeploymentOutcome(name, environment, "candidate-dropped", policy, stable, stable, revision, step,
                                     (step,))
        steps: list[str] = []
        refused: dict[str, Any] = {}
        if policy == REPLACE and stable_bad and not pinned_bad:
            if replacement is None:
                steps.append(f"no clean signed version at {PRODUCTION} or {STAGING} in '{environment}' "
                             "to replace it")
            else:
                try:
                    check_deployable(session, name, replacement, environment)  # reads only: nothing to undo
                except (GovernanceError, NotFoundError) as exc:
                    steps.append(f"replacement by version {replacement} refused: {exc}")
                    refused = {"replacement_refused": {"version": replacement, "error": str(exc)}}
                else:
                    revision = apply("promote", _promote(replacement))
                    step = f"newest clean signed version {replacement} is stable"
                    return DeploymentOutcome(name, environment, "replaced", policy, stable, replacement, revision,
                                             step, (step,))
        revision = apply("kill", _kill(reason, refused))
        steps.append("503 on every replica")
        detail = steps[-1] + (f" ({'; '.join(steps[:-1])})" if len(steps) > 1 else "")
        return DeploymentOutcome(name, environment, "blocked", policy, stable, None, revision, detail, tuple(steps))

    def newest_clean(self, name: str, environment: str = DEFAULT_ENVIRONMENT, *,
                     exclude: Collection[int] = ()) -> int | None:
        """The newest version of ``name`` at ``production`` or ``staging`` in ``environment`` to replace a tainted one.

        It must be tainted by no withdrawal (nor be in ``exclude``: what the
        withdrawal being recorded will taint) and its signature must verify
        (file IO: call it outside any transaction). A version that governance
        never staged in the environment is not a replacement: nobody judged it
        fit to serve there.
        """
        tainted = self.tainted_versions(name) | set(exclude)
        with Session(self.registry.engine) as session:
            staged = session.exec(
                select(ModelVersion.version)
                .join(VersionStage, col(VersionStage.model_version_id) == col(ModelVersion.id))
                .join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
                .where(RegisteredModel.name == name, VersionStage.environment == environment,
                       col(VersionStage.stage).in_([PRODUCTION, STAGING]))
                .order_by(col(ModelVersion.version).desc())
            ).all()
        for version in (int(v) for v in staged):
            if version in tainted:
                continue
            try:
                verify_version(self.registry, name, version)
            except FedguardError as exc:
                logger.warning("not replacing with %s:%d: %s", name, version, exc)
                continue
            return version
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
            return [TaintRecord(model, version, Withdrawal.of(w), aware(t.created_at))
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
