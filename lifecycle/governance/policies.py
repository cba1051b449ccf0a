"""Policies in the registry: every declared version kept verbatim, every change an audit event.

A gate decision records the policy version it was taken under, so it can be
re-read later against the exact document (the TOML text and its SHA-256 are
stored, never a re-serialisation). Operators declare a policy before a
model's first training, so :meth:`PolicyStore.set` creates the model's row
when there is none yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from lifecycle import audit
from lifecycle.errors import NotFoundError
from lifecycle.governance.policy import DEFAULT_POLICY, Policy, digest, parse_policy
from lifecycle.governance.tables import PolicyVersion
from lifecycle.registry import Registry, validate_model_name
from lifecycle.registry.tables import RegisteredModel


@dataclass(frozen=True)
class PolicyRecord:
    """One stored version of a model's policy."""

    model: str
    version: int
    document: str
    digest: str
    actor: str
    created_at: datetime
    changed: bool = True
    """``False`` when :meth:`PolicyStore.set` found the same document already current (nothing was stored)."""

    @property
    def policy(self) -> Policy:
        return parse_policy(self.document, source=f"policy version {self.version} of '{self.model}'",
                            version=self.version)

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "version": self.version, "digest": self.digest, "actor": self.actor,
                "created_at": self.created_at.isoformat(), "changed": self.changed, "document": self.document}


def _record(name: str, row: PolicyVersion, *, changed: bool = True) -> PolicyRecord:
    return PolicyRecord(name, row.version, row.document, row.digest, row.actor, row.created_at, changed)


def _model(session: Session, name: str) -> RegisteredModel | None:
    return session.exec(select(RegisteredModel).where(RegisteredModel.name == name)).first()


class PolicyStore:
    """Declared policies of the registry's models (``fedguard policy set|show|history``)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def set(self, name: str, document: str, *, actor: str, source: str = "the policy") -> PolicyRecord:
        """Validate ``document`` and store it as ``name``'s next policy version, with audit event ``policy.set``.

        Setting the document that is already current stores nothing and
        returns it with ``changed = False``.

        Raises
        ------
        ConfigurationError
            The document is not a valid policy (nothing is stored), or ``name`` is not a valid model name.
        """
        validate_model_name(name)
        parse_policy(document, source=source)
        with self.registry.transaction() as session:
            model = _model(session, name)
            if model is None:
                model = RegisteredModel(name=name)
                session.add(model)
                session.flush()
                audit.record(session, "model.created", actor=actor[:128], subject=name)
            assert model.id is not None
            latest = session.exec(select(PolicyVersion).where(PolicyVersion.model_id == model.id)
                                  .order_by(col(PolicyVersion.version).desc()).limit(1)).first()
            if latest is not None and latest.digest == digest(document):
                return _record(name, latest, changed=False)
            top = session.exec(select(func.max(PolicyVersion.version))
                               .where(PolicyVersion.model_id == model.id)).one()
            row = PolicyVersion(model_id=model.id, version=(top or 0) + 1, document=document,
                                digest=digest(document), actor=actor[:128])
            session.add(row)
            audit.record(session, "policy.set", actor=actor[:128], subject=name,
                         details={"version": row.version, "digest": row.digest})
        return _record(name, row)

    def _rows(self, session: Session, name: str) -> list[PolicyVersion]:
        model = _model(session, name)
        if model is None:
            known = ", ".join(session.exec(select(RegisteredModel.name)).all()) or "none yet"
            raise NotFoundError(f"no model named '{name}' (registered: {known}); declare its policy with "
                                f"'fedguard policy set {name} FILE'")
        return list(session.exec(select(PolicyVersion).where(PolicyVersion.model_id == model.id)
                                 .order_by(col(PolicyVersion.version))).all())

    def current(self, name: str) -> PolicyRecord | None:
        """``name``'s newest policy version (``None``: none declared, the built-in default applies).

        Raises
        ------
        NotFoundError
            No model is named ``name``.
        """
        with Session(self.registry.engine) as session:
            rows = self._rows(session, name)
        return _record(name, rows[-1]) if rows else None

    def get(self, name: str, version: int) -> PolicyRecord:
        """Policy version ``version`` of ``name``.

        Raises
        ------
        NotFoundError
            No such model, or no such policy version.
        """
        with Session(self.registry.engine) as session:
            rows = self._rows(session, name)
        for row in rows:
            if row.version == version:
                return _record(name, row)
        raise NotFoundError(f"model '{name}' has no policy version {version} (it has "
                            f"{len(rows)}); see 'fedguard policy history {name}'")

    def history(self, name: str) -> list[PolicyRecord]:
        """Every policy version of ``name``, oldest first."""
        with Session(self.registry.engine) as session:
            return [_record(name, row) for row in self._rows(session, name)]


def declared(session: Session, name: str, model_id: int | None) -> Policy | None:
    """``name``'s newest declared policy, read in ``session`` (``None``: none declared, the model is not governed).

    A model with a declared policy is **governed**: its deployments serve only
    versions promoted through the stages (:func:`lifecycle.governance.enforce.check_deployable`).
    """
    if model_id is None:
        return None
    row = session.exec(select(PolicyVersion).where(PolicyVersion.model_id == model_id)
                       .order_by(col(PolicyVersion.version).desc()).limit(1)).first()
    return None if row is None else _record(name, row).policy


def current_policy(registry: Registry, name: str) -> Policy:
    """The policy in force for ``name``: its newest declared version, else :data:`DEFAULT_POLICY`.

    A model not registered yet (a first publication) is under the default policy.
    """
    with Session(registry.engine) as session:
        model = _model(session, name)
        policy = None if model is None else declared(session, name, model.id)
    return DEFAULT_POLICY if policy is None else policy


def required_approvals(registry: Registry, name: str, stage: str) -> int:
    """Signed approvals that ``name``'s current policy requires to move a version to ``stage`` (default 0)."""
    return current_policy(registry, name).required_approvals(stage)


def on_taint(registry: Registry, name: str) -> str:
    """What production does when ``name``'s serving version is tainted: ``"block"`` (default) or ``"replace"``."""
    return current_policy(registry, name).on_taint
