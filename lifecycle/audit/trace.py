"""Walking back: what was serving in an environment at a time, and the whole story behind it.

``fedguard audit trace`` answers a regulator's question — "what exactly was
answering requests in clinic-north at 14:00 on 3 December, trained on whose
data, approved by whom, and why?" — from the registry alone, without SQL.
:func:`gather` collects the answer as one JSON-ready dictionary (stable keys,
times in ISO 8601 UTC) that :mod:`lifecycle.audit.report` renders as a
self-contained HTML page and as JSON; both say the same thing.

What served at ``T`` is the latest deployment event at or before ``T`` in the
environment (each event records the state that followed it, so no replay is
needed); each version then gets its story (:mod:`lifecycle.audit.trace_version`):
signature checked *now*, the signed ML-BOM, the run, every gate decision,
approval and stage move up to ``T``, consent withdrawals and taints. Rows
written after ``T`` are left out, except where the report says they are
later facts (a withdrawal recorded after ``T`` does not taint the answer at
``T``). The audit chain is verified at the time of the report.

Notes
-----
The report is evidence, so the evidence is named by hash (artifact digest,
the ML-BOM's SHA-256, audit event hashes, approval signatures): anyone can
recompute them from the registry and the artifact store. The report's own
SHA-256 is recorded in the audit chain (``audit.trace.exported``), so a
report handed over can later be shown to be the one fedguard produced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

from sqlmodel import Session, col, select

from lifecycle.audit.trace_version import actor_of, iso, version_story
from lifecycle.errors import ConfigurationError, FedguardError, NotFoundError
from lifecycle.governance.tables import Approval, GateDecision, StageEvent, VersionStage
from lifecycle.registry import Registry
from lifecycle.registry.store import validate_model_name
from lifecycle.registry.tables import AuditEvent, DeploymentEvent, ModelVersion, RegisteredModel, aware

FORMAT = 1
"""Version of the report's layout (the JSON's ``format``); bumped when a key changes meaning."""
WINDOW = 10
"""Deployment events shown before and after the one in force at the time asked."""
MAX_AUDIT_EVENTS = 500
"""The newest audit events about the model kept in a report (the count left out is said)."""

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_instant(text: str) -> datetime:
    """A time given on the command line: ISO 8601 with ``Z`` or an offset, or a date alone (00:00 UTC).

    A time without a zone is refused rather than guessed: a report that
    answers for the wrong hour is worse than none.

    Raises
    ------
    ConfigurationError
        The text is not such a time (exit 2).
    """
    value = text.strip()
    hint = "use ISO 8601 such as 2026-12-03T14:00Z, 2026-12-03T15:00+01:00, or a date alone (00:00 UTC)"
    try:
        if _DATE.match(value):
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value)
    except ValueError:
        raise ConfigurationError(f"malformed time {text[:64]!r}: {hint}") from None
    if parsed.tzinfo is None:
        raise ConfigurationError(f"time {text[:64]!r} has no time zone: add Z for UTC or an offset such as +01:00")
    return parsed.astimezone(UTC)


def _model(session: Session, name: str) -> RegisteredModel:
    try:
        validate_model_name(name)
    except ConfigurationError:
        raise NotFoundError(f"no model named {name[:128]!r}; see 'fedguard models list'") from None
    model = session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()
    if model is None:
        known = ", ".join(session.exec(select(RegisteredModel.name).order_by(col(RegisteredModel.name))).all())
        raise NotFoundError(f"no model named '{name}' (registered: {known or 'none yet'}); see 'fedguard models list'")
    return model


def _first_event(session: Session) -> datetime | None:
    first = session.exec(select(AuditEvent.created_at).order_by(col(AuditEvent.id)).limit(1)).first()
    return None if first is None else aware(first)


def _environments(session: Session, model_id: int, version_ids: Sequence[int]) -> tuple[list[str], list[str]]:
    """``(deployed, known)``: environments with a deployment event, and those any governance row names."""
    deployed = set(session.exec(select(DeploymentEvent.environment).where(DeploymentEvent.model_id == model_id)))
    known = set(deployed)
    if version_ids:
        for table in (StageEvent, VersionStage, GateDecision, Approval):
            known.update(session.exec(select(table.environment)
                                      .where(col(table.model_version_id).in_(version_ids))))
    known.discard("")
    return sorted(deployed), sorted(known)


def _scope(model: str, environment: str | None, version: int | None, deployed: list[str],
           known: list[str]) -> list[str]:
    """The environments the report covers; refuse one where the model never was (exit 4)."""
    if environment is not None:
        if environment not in known:
            where = f"its environments: {', '.join(known)}" if known else "it was never deployed anywhere"
            raise NotFoundError(f"model '{model}' was never deployed in environment '{environment[:64]}' ({where}); "
                                "pass one of them with --env")
        return [environment]
    if version is not None:
        return known
    if not deployed:
        raise NotFoundError(f"model '{model}' was never deployed in any environment; trace one version with "
                            "--version N")
    if len(deployed) > 1:
        raise ConfigurationError(f"model '{model}' is deployed in several environments ({', '.join(deployed)}); "
                                 "name one with --env")
    return deployed


def _event(event: DeploymentEvent, in_force: bool) -> dict[str, Any]:
    return {
        "id": event.id, "environment": event.environment, "revision": event.revision, "action": event.action,
        "actor": actor_of(event.actor), "source": event.source, "reason": event.reason,
        "stable_version": event.stable_version, "candidate_version": event.candidate_version,
        "candidate_mode": event.candidate_mode, "canary_weight": event.canary_weight, "killed": event.killed,
        "kill_mode": event.kill_mode, "pinned_version": event.pinned_version,
        "shares": json.loads(event.shares_json), "at": iso(event.created_at), "in_force": in_force,
    }


def _answering(event: DeploymentEvent) -> list[int]:
    """The versions whose story the report tells for this state: the one(s) deployed, killed or not."""
    if event.killed:
        return [event.pinned_version if event.pinned_version is not None else event.stable_version]
    versions = [event.stable_version]
    if event.candidate_version is not None:
        versions.append(event.candidate_version)
    return versions


def _serving(session: Session, model_id: int, environment: str, at: datetime) -> tuple[dict[str, Any],
                                                                                         list[dict[str, Any]]]:
    """The deployment in force in ``environment`` at ``at``, and the events around it."""
    rows = session.exec(select(DeploymentEvent).where(DeploymentEvent.model_id == model_id,
                                                      DeploymentEvent.environment == environment)
                        .order_by(col(DeploymentEvent.id))).all()
    before = [n for n, e in enumerate(rows) if aware(e.created_at) <= at]
    current = before[-1] if before else None
    start = max(0, (current if current is not None else len(before)) - WINDOW)
    stop = (current + 1 if current is not None else len(before)) + WINDOW
    window = [_event(e, n == current) for n, e in enumerate(rows) if start <= n < stop]
    if current is None:
        first = rows[0] if rows else None
        return {"environment": environment, "deployed": False, "in_force": None, "answering": [],
                "first_deployed_at": iso(first.created_at) if first else None}, window
    event = rows[current]
    return {"environment": environment, "deployed": True, "in_force": _event(event, True),
            "answering": _answering(event), "first_deployed_at": iso(rows[0].created_at)}, window


def _about(event: AuditEvent, model: str, runs: set[str], sites: set[str]) -> bool:
    """Whether ``event`` is about the model, one of its versions, the traced runs, or the sites' consent and keys."""
    subject = event.subject
    if subject == model or subject in runs or (subject.startswith(model + ":") and subject[len(model) + 1:].isdigit()):
        return True
    named = subject[len("site:"):] if subject.startswith("site:") else subject  # consent.withdrawn: "site:NAME"
    return named in sites and event.action.startswith(("consent.", "site."))


def _audit_events(session: Session, model: str, runs: set[str], sites: set[str], at: datetime) -> dict[str, Any]:
    """Audit events about the model (``NAME``, ``NAME:V``), its runs and its sites' consent, up to ``at``.

    A site's events name it bare (``NAME``) or as ``site:NAME`` (``consent.withdrawn``); both are matched.
    """
    rows = session.exec(select(AuditEvent).where(
        (col(AuditEvent.subject) == model) | col(AuditEvent.subject).startswith(f"{model}:", autoescape=True)
        | col(AuditEvent.subject).in_(runs | sites | {f"site:{s}" for s in sites})).order_by(col(AuditEvent.id))).all()
    chosen = [e for e in rows if aware(e.created_at) <= at and _about(e, model, runs, sites)]
    kept = chosen[-MAX_AUDIT_EVENTS:]
    return {
        "left_out": len(chosen) - len(kept),
        "events": [{"id": e.id, "at": iso(e.created_at), "actor": actor_of(e.actor), "action": e.action,
                    "subject": e.subject, "details": json.loads(e.details_json), "hash": e.hash,
                    "prev_hash": e.prev_hash, "override": e.action.endswith("override")} for e in kept],
    }


def _chain(registry: Registry) -> dict[str, Any]:
    """``Registry.verify_audit()`` now: a failure is reported, not raised (the report must still be written)."""
    try:
        verified = registry.verify_audit()
    except FedguardError as exc:
        return {"verified": False, "detail": str(exc), "events": None, "checkpoints": None,
                "last_checkpoint": None, "key": None}
    detail = (f"hash chain intact over {verified.events} events; {verified.checkpoints} signed checkpoint(s)"
              if verified.checkpoints else f"hash chain intact over {verified.events} events; no signed checkpoint")
    return {"verified": True, "detail": detail, "events": verified.events, "checkpoints": verified.checkpoints,
            "last_checkpoint": verified.last_checkpoint, "key": verified.key or None}


def gather(registry: Registry, model: str, *, environment: str | None = None, at: datetime | None = None,
           version: int | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Everything the report says, as one JSON-ready dictionary (see ``docs/governance.md`` for the keys).

    Raises
    ------
    NotFoundError
        Unknown model, unknown ``version``, or an environment where the model never was (exit 4).
    ConfigurationError
        ``at`` is before the first audit event, or the environment is ambiguous (exit 2).
    """
    now = aware(now or datetime.now(UTC))
    moment = aware(at) if at is not None else now
    with Session(registry.engine) as session:
        row = _model(session, model)
        assert row.id is not None
        first = _first_event(session)
        if first is None or moment < first:
            since = first.isoformat() if first else "no event yet"
            raise ConfigurationError(f"nothing was recorded before {since}: give a time at or after it")
        versions = {v.version: v for v in session.exec(select(ModelVersion).where(ModelVersion.model_id == row.id))}
        if version is not None and version not in versions:
            listed = ", ".join(str(v) for v in sorted(versions)) or "none"
            raise NotFoundError(f"model '{model}' has no version {version} (versions: {listed}); "
                                f"see 'fedguard models show {model}'")
        deployed, known = _environments(session, row.id, [int(v.id or 0) for v in versions.values()])
        scope = _scope(model, environment, version, deployed, known)
        serving: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for env in scope:
            state, window = _serving(session, row.id, env, moment)
            serving.append(state)
            events.extend(window)
        traced = [version] if version is not None else list(dict.fromkeys(v for s in serving for v in s["answering"]))
        stories = [version_story(registry, session, model, versions[v], versions, moment,
                                 environment if version is not None else scope[0]) for v in traced]
        runs = {s["run"]["id"] for s in stories if s["run"]} | {
            f"{s['run']['id']}/round-{n}" for s in stories if s["run"] for n in range(1, s["run"]["rounds"] + 1)}
        audit = _audit_events(session, model, runs, {site["site"] for s in stories for site in s["sites"]}, moment)
    return {
        "format": FORMAT,
        "generated_at": now.isoformat(),
        "question": {"model": model, "environment": environment, "environments": scope, "at": moment.isoformat(),
                     "at_given": at is not None, "version": version},
        "serving": serving,
        "deployments": events,
        "versions": stories,
        "audit": {"chain": _chain(registry), **audit},
    }
