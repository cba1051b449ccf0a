"""Stages per environment: ``registered`` → ``staging`` → ``production``, promotions, demotions, history.

Each named environment (a clinic, a region; ``default`` when none is named)
has its own stages, so several versions may be live at once in different
environments. A version with no :class:`~lifecycle.governance.tables.VersionStage`
row in an environment is ``registered`` there.

A promotion goes up (it may skip ``staging``) and is governed:

1. the target stage's declared gates are evaluated for that environment
   (:func:`lifecycle.governance.gates.evaluate`, a stored decision), and
   ``staging``'s too when a version goes to production without being at
   staging there; a failure refuses it
   (:class:`~lifecycle.errors.GovernanceError`, exit code 11, naming every
   failing criterion with its measured value and threshold), unless an
   approver signs an **override** with a reason (under a policy that lists
   ``approvers``, only a listed key may);
2. the policy's required number of signed approvals by distinct approver
   keys (listed ones, if the policy lists ``approvers``) must be present and
   unused (:mod:`lifecycle.governance.approvals`);
3. under the audit lock (PostgreSQL: taken first, so concurrent promotions,
   withdrawals and approvals serialise) and the environment's deployment row
   lock, the stage is read again and the version's taints re-checked (a
   tainted version needs an override whatever its gates said);
4. in the same transaction: the stage row, a :class:`~lifecycle.governance.tables.StageEvent`,
   the approvals marked used (and the override stored), and — for
   ``production`` — the deployment of that environment pointed at the version
   (the version it replaces goes back to ``staging``), each with its audit
   event (``stage.promoted``, or ``stage.override`` for an overridden one, so
   that ``audit trace`` can show it apart).

A demotion from ``production`` takes the version out of serving in that
environment: the previous production version serves again if it is clean
(:func:`lifecycle.governance.enforce.check_deployable`), else the deployment
is killed (503) with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.errors import ConfigurationError, GovernanceError, NotFoundError
from lifecycle.governance import approvals as signed
from lifecycle.governance import policies
from lifecycle.governance.decisions import PRODUCTION, REGISTERED, STAGES, STAGING, GateReport
from lifecycle.governance.enforce import OVERRIDE, check_deployable, taints, version_row
from lifecycle.governance.operator import ApproverKey
from lifecycle.governance.tables import GateDecision, StageEvent, VersionStage
from lifecycle.registry import DeploymentState, DeploymentStore, Registry
from lifecycle.registry.deployments import validate_environment
from lifecycle.registry.tables import Deployment, DeploymentEvent, ModelVersion, RegisteredModel, aware, utcnow

GOVERNANCE_SOURCE = "governance"
"""The deployment-event ``source`` of changes made by stage moves (a kill with this source is released by the
next promotion to production in that environment)."""
RELEASABLE_KILL_SOURCES: tuple[str, ...] = (GOVERNANCE_SOURCE, "consent")
"""Kill switches a promotion to production releases: those governance engaged, never an operator's or a cut-out's."""


def required_approvals(registry: Registry, name: str, stage: str) -> int:
    """How many signed approvals the model's policy requires for ``stage`` (0 without a policy)."""
    return policies.required_approvals(registry, name, stage)


@dataclass(frozen=True)
class Override:
    """An approver's signed override of failing gates: the key that signs it and the (required) reason."""

    key: ApproverKey
    reason: str


@dataclass(frozen=True)
class StageRecord:
    """One move of a version between stages in an environment."""

    id: int
    model: str
    version: int
    environment: str
    from_stage: str
    to_stage: str
    actor: str
    reason: str
    override: bool
    gate_decision_id: int | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion did."""

    model: str
    version: int
    environment: str
    from_stage: str
    to_stage: str
    gates: GateReport
    override: bool
    approvals: tuple[str, ...]
    """Fingerprints of the approver keys whose approvals (or override) this promotion used."""
    replaced: int | None = None
    """The version that was in production in this environment before (now back in staging)."""
    deployment: DeploymentState | None = None
    evaluated: tuple[GateReport, ...] = ()
    """Every gate report the promotion checked: ``staging``'s too when a version goes straight to production."""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "environment": self.environment,
                "from_stage": self.from_stage, "to_stage": self.to_stage, "override": self.override,
                "approvals": list(self.approvals), "replaced": self.replaced, "gates": self.gates.to_dict(),
                "evaluated": [r.to_dict() for r in self.evaluated],
                "deployment": self.deployment.to_dict() if self.deployment else None}


@dataclass(frozen=True)
class DemotionResult:
    """What a demotion did: the stages, and how the environment's deployment now serves."""

    model: str
    version: int
    environment: str
    from_stage: str
    to_stage: str
    restored: int | None = None
    """The previous production version that serves again, if one was clean."""
    deployment: DeploymentState | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "environment": self.environment,
                "from_stage": self.from_stage, "to_stage": self.to_stage, "restored": self.restored,
                "deployment": self.deployment.to_dict() if self.deployment else None}



def _target(to: str) -> str:
    if to not in STAGES or to == REGISTERED:
        raise ConfigurationError(f"invalid stage {to[:32]!r} to promote to: use {STAGING} or {PRODUCTION}")
    return to


class StageStore:
    """Stages of every model's versions in every environment, over one :class:`Registry`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # ----------------------------------------------------------------- reads
    def stage(self, name: str, version: int, environment: str) -> str:
        """The stage of ``name:version`` in ``environment`` (``registered`` without a row)."""
        validate_environment(environment)
        with Session(self.registry.engine) as session:
            _, row = version_row(session, name, version)
            assert row.id is not None
            return self._stage(session, row.id, environment)

    def history(self, name: str, *, environment: str | None = None) -> list[StageRecord]:
        """Every stage move of ``name``'s versions (in ``environment`` if given), oldest first."""
        if environment is not None:
            validate_environment(environment)
        with Session(self.registry.engine) as session:
            model = self._model(session, name)
            query = (select(StageEvent, ModelVersion.version)
                     .join(ModelVersion, col(ModelVersion.id) == col(StageEvent.model_version_id))
                     .where(ModelVersion.model_id == model.id))
            if environment is not None:
                query = query.where(StageEvent.environment == environment)
            rows = session.exec(query.order_by(col(StageEvent.id))).all()
            return [StageRecord(int(e.id or 0), name, int(v), e.environment, e.from_stage, e.to_stage, e.actor,
                                e.reason, e.override, e.gate_decision_id, aware(e.created_at)) for e, v in rows]

    def live(self, name: str) -> dict[str, dict[str, list[int]]]:
        """``{environment: {stage: [versions]}}`` of every version above ``registered``."""
        with Session(self.registry.engine) as session:
            model = self._model(session, name)
            rows = session.exec(
                select(VersionStage.environment, VersionStage.stage, ModelVersion.version)
                .join(ModelVersion, col(ModelVersion.id) == col(VersionStage.model_version_id))
                .where(ModelVersion.model_id == model.id, VersionStage.stage != REGISTERED)
                .order_by(col(VersionStage.environment), col(ModelVersion.version))
            ).all()
        live: dict[str, dict[str, list[int]]] = {}
        for environment, stage, version in rows:
            live.setdefault(environment, {}).setdefault(stage, []).append(int(version))
        return live

    def environments(self, name: str) -> list[str]:
        """Every environment where ``name`` has a stage move or a deployment, sorted."""
        with Session(self.registry.engine) as session:
            model = self._model(session, name)
            staged = session.exec(
                select(StageEvent.environment).join(ModelVersion, col(ModelVersion.id) == col(
                    StageEvent.model_version_id)).where(ModelVersion.model_id == model.id).distinct()).all()
            deployed = session.exec(select(DeploymentEvent.environment)
                                    .where(DeploymentEvent.model_id == model.id).distinct()).all()
        return sorted(set(staged) | set(deployed))

    # ---------------------------------------------------------------- writes
    def promote(self, name: str, version: int, *, to: str, environment: str, actor: str,
                override: Override | None = None, now: datetime | None = None) -> PromotionResult:
        """Move ``name:version`` up to stage ``to`` in ``environment``, if governance allows it.

        Raises
        ------
        GovernanceError
            A gate fails (without an override), or too few signed approvals;
            the message names every failing criterion and the approvals
            needed and present. Nothing changes (the gate decision is kept).
        ConfigurationError
            A bad stage or environment name, an override without a reason,
            or the version is already at or above ``to`` there.
        NotFoundError
            No such model or version.
        """
        _target(to)
        validate_environment(environment)
        reason = signed.check_reason(override.reason, required=True) if override is not None else ""
        current = self.stage(name, version, environment)
        if STAGES.index(current) >= STAGES.index(to):
            raise ConfigurationError(
                f"{name}:{version} is already in {current} in '{environment}'; a promotion goes up "
                f"({' → '.join(STAGES)}); to go down use 'fedguard models demote'"
            )
        from lifecycle.governance import gates

        evaluator = override.key.actor(actor) if override is not None else actor
        reports = [gates.evaluate(self.registry, name, version, stage, environment=environment, trigger="promote",
                                  actor=evaluator)
                   for stage in ([STAGING] if to == PRODUCTION and current != STAGING else []) + [to]]
        report = reports[-1]
        passed = all(r.passed for r in reports)
        needed = required_approvals(self.registry, name, to)
        with self.registry.transaction() as session:
            # First the audit lock (PostgreSQL): a withdrawal's taint, an approval or another promotion of this
            # model commits either before the checks below read it, or after this promotion commits.
            audit.serialise(session)
            model, row = version_row(session, name, version)
            assert row.id is not None
            DeploymentStore(self.registry, environment).lock(session, model)
            current = self._stage(session, row.id, environment)  # again, under the transaction
            if STAGES.index(current) >= STAGES.index(to):
                raise ConfigurationError(f"{name}:{version} was moved to {current} in '{environment}' meanwhile")
            policy = policies.declared(session, name, model.id)
            withdrawn = taints(session, row.id)
            if withdrawn and override is None and passed:  # tainted since its gates were evaluated
                raise GovernanceError(
                    f"{name}:{version} may not be promoted to {to} in '{environment}': its lineage holds data whose "
                    f"consent was withdrawn (withdrawal {', '.join(f'#{w}' for w in withdrawn)}); retrain without "
                    f"it: 'fedguard retrain {name} --without-withdrawn'"
                )
            using_override = override is not None and (not passed or bool(withdrawn))
            if using_override and override and policy is not None and not policy.allows(override.key.fingerprint):
                raise GovernanceError(
                    f"approver key {override.key.fingerprint} may not override the gates of '{name}': its policy "
                    f"lists other approvers; add the key to 'approvers' and declare it: 'fedguard policy set "
                    f"{name} FILE'"
                )
            approvals = signed.usable(session, name, row, stage=to, environment=environment, policy=policy)
            keys = {a.approver for a in approvals} | ({override.key.fingerprint} if using_override and override
                                                     else set())
            failures = "; ".join(f"{r.stage}: {r.describe_failures()}" if len(reports) > 1 else r.describe_failures()
                                 for r in reports if not r.passed)
            problems = []
            if not passed and not using_override:
                problems.append(f"failing gate(s): {failures}")
            if len(keys) < needed:
                listed = " by keys its approvers list" if policy is not None and policy.approvers else ""
                problems.append(f"{len(keys)} of the {needed} signed approval(s) by distinct approver keys{listed} "
                                f"the policy requires for {to} (approve with 'fedguard models approve "
                                f"{name}:{version} --stage {to} --env {environment}')")
            if problems:
                hint = "; or an approver may override the gates with --override --reason TEXT" \
                    if not passed and not using_override else ""
                raise GovernanceError(f"{name}:{version} may not be promoted to {to} in '{environment}': "
                                      + "; ".join(problems) + hint)
            decision = self._decision(session, row.id, to, environment)
            actor_id = override.key.actor(actor) if using_override and override else actor
            for approval in approvals:
                approval.used = True
                session.add(approval)
            if using_override and override:
                statement = signed.make_statement(override.key, OVERRIDE, name, row, stage=to,
                                                  environment=environment, reason=reason, now=now)
                signed.store(session, signed.signed_row(override.key, statement, row.id, used=True))
            details = {"from": current, "to": to, "environment": environment, "gate_decision": decision,
                       "gates_passed": passed, "approvals": sorted(keys)}
            self._move(session, name, row, environment, current, to, actor_id, reason, using_override, decision)
            if using_override and override:
                audit.record(session, "stage.override", actor=actor_id[:128], subject=f"{name}:{version}",
                             details={**details, "approver": override.key.fingerprint,
                                      "approver_name": override.key.name, "reason": reason,
                                      "failing": [r.to_dict() for rep in reports for r in rep.failing],
                                      "tainted_by": withdrawn})
            else:
                audit.record(session, "stage.promoted", actor=actor_id[:128], subject=f"{name}:{version}",
                             details=details)
            replaced, deployment = None, None
            if to == PRODUCTION:
                replaced = self._replace_production(session, name, row, environment, actor_id)
                deployment = self._serve(session, name, version, environment, actor_id)
        return PromotionResult(name, version, environment, current, to, report, using_override,
                               tuple(sorted(keys)), replaced, deployment, tuple(reports))

    def demote(self, name: str, version: int, *, environment: str, to: str | None = None, actor: str,
               reason: str = "") -> DemotionResult:
        """Move ``name:version`` down in ``environment`` (one stage, or to ``to``); off serving if it leaves production.

        Raises
        ------
        ConfigurationError
            A bad stage or environment name, or ``to`` is not below the
            version's stage (a registered version has nothing to demote).
        NotFoundError
            No such model or version.
        """
        validate_environment(environment)
        if to is not None and to not in STAGES:
            raise ConfigurationError(f"invalid stage {to[:32]!r}: use one of {', '.join(STAGES)}")
        reason = signed.check_reason(reason, required=False)
        with self.registry.transaction() as session:
            _, row = version_row(session, name, version)
            assert row.id is not None
            current = self._stage(session, row.id, environment)
            target = to if to is not None else STAGES[max(STAGES.index(current) - 1, 0)]
            if STAGES.index(target) >= STAGES.index(current):
                raise ConfigurationError(f"{name}:{version} is {current} in '{environment}'; it cannot be demoted "
                                         f"to {target}" + (" (nothing to demote)" if current == REGISTERED else ""))
            self._move(session, name, row, environment, current, target, actor, reason, False, None)
            audit.record(session, "stage.demoted", actor=actor[:128], subject=f"{name}:{version}",
                         details={"from": current, "to": target, "environment": environment, "reason": reason})
            restored, deployment = None, None
            if current == PRODUCTION:
                restored, deployment = self._unserve(session, name, version, environment, actor, reason)
        return DemotionResult(name, version, environment, current, target, restored, deployment)

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _model(session: Session, name: str) -> RegisteredModel:
        model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name[:128])).first()
        if model is None:
            raise NotFoundError(f"no model named '{name[:128]}'; see 'fedguard models list'")
        return model

    @staticmethod
    def _stage(session: Session, version_id: int, environment: str) -> str:
        row = session.exec(select(VersionStage.stage).where(VersionStage.model_version_id == version_id,
                                                            VersionStage.environment == environment)).first()
        return str(row) if row is not None else REGISTERED

    @staticmethod
    def _decision(session: Session, version_id: int, stage: str, environment: str) -> int | None:
        found = session.exec(select(GateDecision.id).where(
            GateDecision.model_version_id == version_id, GateDecision.stage == stage,
            GateDecision.environment == environment).order_by(col(GateDecision.id).desc()).limit(1)).first()
        return None if found is None else int(found)

    @staticmethod
    def _move(session: Session, name: str, row: ModelVersion, environment: str, frm: str, to: str, actor: str,
              reason: str, override: bool, decision: int | None) -> None:
        assert row.id is not None
        stage = session.exec(select(VersionStage).where(VersionStage.model_version_id == row.id,
                                                        VersionStage.environment == environment)
                             .with_for_update()).first()
        if stage is None:
            stage = VersionStage(model_version_id=row.id, environment=environment, stage=to)
        stage.stage, stage.updated_at = to, utcnow()
        session.add(stage)
        session.add(StageEvent(model_version_id=row.id, environment=environment, from_stage=frm, to_stage=to,
                               actor=actor[:128], reason=reason[:512], override=override,
                               gate_decision_id=decision))

    def _production(self, session: Session, model_id: int, environment: str) -> list[ModelVersion]:
        return list(session.exec(
            select(ModelVersion).join(VersionStage, col(VersionStage.model_version_id) == col(ModelVersion.id))
            .where(ModelVersion.model_id == model_id, VersionStage.environment == environment,
                   VersionStage.stage == PRODUCTION).order_by(col(ModelVersion.version))
        ).all())

    def _replace_production(self, session: Session, name: str, row: ModelVersion, environment: str,
                            actor: str) -> int | None:
        """Send every other version in production in ``environment`` back to staging; the newest one replaced."""
        replaced = None
        for other in self._production(session, row.model_id, environment):
            if other.id == row.id:
                continue
            self._move(session, name, other, environment, PRODUCTION, STAGING, actor,
                       f"replaced in production by version {row.version}", False, None)
            audit.record(session, "stage.demoted", actor=actor[:128], subject=f"{name}:{other.version}",
                         details={"from": PRODUCTION, "to": STAGING, "environment": environment,
                                  "reason": f"replaced in production by version {row.version}"})
            replaced = other.version
        return replaced

    def _serve(self, session: Session, name: str, version: int, environment: str, actor: str) -> DeploymentState:
        """Make ``version`` the stable version of ``environment``'s deployment (created if need be)."""
        def change(dep: Deployment, session: Session) -> dict[str, Any]:
            created = dep.id is None
            before = None if created else dep.stable_version
            if not created and dep.stable_version != version:
                dep.previous_version = dep.stable_version
            dep.stable_version = version
            dep.candidate_version, dep.candidate_mode, dep.canary_weight = None, None, 0.0
            released = dep.killed and self._kill_source(session, dep) in RELEASABLE_KILL_SOURCES
            if released:
                dep.killed, dep.kill_mode, dep.pinned_version, dep.kill_reason = False, None, None, ""
            return {"from": before, "to": version, "stage": PRODUCTION, "released_kill": released}

        return DeploymentStore(self.registry, environment).apply(
            session, name, "promote", change, actor=actor, source=GOVERNANCE_SOURCE,
            reason=f"promoted to production in '{environment}'", checked=True)

    @staticmethod
    def _kill_source(session: Session, dep: Deployment) -> str:
        """Who engaged the kill switch (the source of the latest kill event of this deployment)."""
        found = session.exec(select(DeploymentEvent.source).where(
            DeploymentEvent.model_id == dep.model_id, DeploymentEvent.environment == dep.environment,
            DeploymentEvent.action == "kill").order_by(col(DeploymentEvent.id).desc()).limit(1)).first()
        return str(found) if found is not None else ""

    def _unserve(self, session: Session, name: str, version: int, environment: str, actor: str,
                 reason: str) -> tuple[int | None, DeploymentState | None]:
        """Take ``version`` out of ``environment``'s deployment: the previous production version, or 503."""
        store = DeploymentStore(self.registry, environment)
        model = self._model(session, name)
        dep = session.exec(select(Deployment).where(Deployment.model_id == model.id,
                                                    Deployment.environment == environment)).first()
        if dep is None:
            return None, None
        previous = dep.previous_version if dep.stable_version == version else None
        if previous is not None:
            try:
                # the replacement left it at staging: it must still be there (or above) to serve again
                check_deployable(session, name, previous, environment, candidate=True)
            except GovernanceError:
                previous = None
        why = f"{name}:{version} demoted from production in '{environment}'" + (f" ({reason})" if reason else "")

        def change(dep: Deployment, session: Session) -> dict[str, Any]:
            if dep.candidate_version == version:
                dep.candidate_version, dep.candidate_mode, dep.canary_weight = None, None, 0.0
            if dep.pinned_version == version:
                dep.kill_mode, dep.pinned_version = "503", None
            if dep.stable_version == version and previous is not None:
                dep.stable_version, dep.previous_version = previous, None
                return {"from": version, "to": previous, "stage": STAGING}
            if dep.stable_version == version:
                dep.previous_version = None
                dep.killed, dep.kill_mode, dep.pinned_version = True, "503", None
                dep.kill_reason = (why + "; no clean previous production version to serve")[:256]
                return {"mode": "503", "pinned": None, "reason": dep.kill_reason}
            return {"dropped": version}

        stable = dep.stable_version == version
        action = "kill" if stable and previous is None else "demote"
        state = store.apply(session, name, action, change, actor=actor, source=GOVERNANCE_SOURCE, reason=why)
        if previous is not None:
            _, prev_row = version_row(session, name, previous)
            frm = self._stage(session, int(prev_row.id or 0), environment)
            if frm != PRODUCTION:
                self._move(session, name, prev_row, environment, frm, PRODUCTION, actor,
                           f"restored to production after the demotion of version {version}", False, None)
                audit.record(session, "stage.restored", actor=actor[:128], subject=f"{name}:{previous}",
                             details={"from": frm, "to": PRODUCTION, "environment": environment,
                                      "reason": f"version {version} demoted"})
        return previous, state
