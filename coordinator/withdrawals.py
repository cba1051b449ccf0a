"""The consent withdrawals a run leaves out (``fedguard retrain``), as the run config carries them.

A retrained run names, in its run config (``excludes-withdrawals``), every
withdrawal it excludes; the coordinator then refuses a site withdrawn as a
whole before round 1 (``coordinator.roster``, reason ``withdrawn``) and
writes the list into the new version's lineage (the ML-BOM's training section)
and its ``model.retrained`` audit event. A site that withdrew only some
records still trains: its agent leaves those records out itself.

The run config is only a claim: before round 1 the coordinator checks it
against the registry (:func:`check_against_registry`: each named withdrawal
exists with that site and scope, ``supersedes`` names a tainted version of
the model), and refuses every site withdrawn as a whole in the registry,
whatever the run config names (:func:`registry_withdrawn_sites`), so a plain
``fedguard run launch`` cannot train on a withdrawn site either.

The value is a flat string, ``ID:SCOPE:SITE`` entries joined by commas
(``"3:site:st-marys,4:records:guys"``), because Flower's run config holds
only scalars and ``flwr run --run-config`` cannot quote a JSON document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.errors import ConfigurationError

if TYPE_CHECKING:
    from lifecycle.registry import Registry

WHOLE_SITE = "site"
"""The scope of a withdrawal of a whole site (any other scope names some of its records)."""
_SITE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_SCOPE = re.compile(r"^[a-z-]{1,16}$")


@dataclass(frozen=True)
class ExcludedWithdrawal:
    """One withdrawal a run excludes: its registry id, the site, and whether the whole site or some records."""

    id: int
    site: str
    scope: str

    def __post_init__(self) -> None:
        if self.id < 1 or not _SITE.match(self.site) or not _SCOPE.match(self.scope):
            raise ConfigurationError(
                f"withdrawal {self.id} of site '{self.site}' (scope '{self.scope}') cannot be named in a run config: "
                "a site name of letters, digits, '.', '_' or '-' and a lowercase scope are needed")

    @property
    def whole_site(self) -> bool:
        return self.scope == WHOLE_SITE

    def to_dict(self) -> dict[str, Any]:
        """How the lineage and the audit event name it (``{"id", "site", "scope"}``)."""
        return {"id": self.id, "site": self.site, "scope": self.scope}


def encode(withdrawals: Iterable[ExcludedWithdrawal]) -> str:
    """The run config value for ``withdrawals`` (module docstring)."""
    return ",".join(f"{w.id}:{w.scope}:{w.site}" for w in sorted(withdrawals, key=lambda w: w.id))


def parse(value: str) -> tuple[ExcludedWithdrawal, ...]:
    """The withdrawals a run config value names; :class:`ConfigurationError` for a malformed one."""
    out = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        number, _, rest = item.partition(":")
        scope, _, site = rest.partition(":")
        if not number.isdigit() or not scope or not site:
            raise ConfigurationError(f"run-config 'excludes-withdrawals' entry '{item}' is not ID:SCOPE:SITE "
                                     "(e.g. '3:site:st-marys'); 'fedguard retrain' writes it")
        out.append(ExcludedWithdrawal(int(number), site, scope))
    return tuple(out)


def registry_withdrawn_sites(registry: Registry) -> frozenset[str]:
    """Every site the registry holds a whole-site consent withdrawal of: no run may train on it again."""
    from sqlmodel import Session, select

    from lifecycle.governance.tables import ConsentWithdrawal

    with Session(registry.engine) as session:
        rows = session.exec(select(ConsentWithdrawal.site).where(ConsentWithdrawal.scope == WHOLE_SITE)).all()
    return frozenset(str(site) for site in rows)


def check_against_registry(registry: Registry, *, model: str, supersedes: int,
                           withdrawals: Iterable[ExcludedWithdrawal]) -> None:
    """Refuse a run config whose ``excludes-withdrawals`` or ``supersedes`` the registry does not back.

    Both end up in the new version's lineage and audit trail (``model.retrained``):
    an unchecked value would let a run claim it left out a withdrawal it never
    saw, or replace a version that nothing is wrong with.

    Raises
    ------
    ConfigurationError
        A named withdrawal is not in the registry with that site and scope, or
        ``supersedes`` names no version of ``model``, or a version no withdrawal taints (exit 2).
    """
    from sqlmodel import Session, col, select

    from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint
    from lifecycle.registry.tables import ModelVersion, RegisteredModel

    named = list(withdrawals)
    with Session(registry.engine) as session:
        rows = {row.id: row for row in session.exec(select(ConsentWithdrawal).where(
            col(ConsentWithdrawal.id).in_([w.id for w in named]))).all()} if named else {}
        for w in named:
            row = rows.get(w.id)
            if row is None or row.site != w.site or row.scope != w.scope:
                found = f"it is site '{row.site}' scope '{row.scope}'" if row is not None else "there is none"
                raise ConfigurationError(
                    f"run-config 'excludes-withdrawals' names withdrawal {w.id}:{w.scope}:{w.site}, but {found} in "
                    "the registry ('fedguard models list --tainted' lists them); let 'fedguard retrain' write it")
        if not supersedes:
            return
        version_id = session.exec(
            select(ModelVersion.id).join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
            .where(RegisteredModel.name == model, ModelVersion.version == supersedes)).first()
        if version_id is None:
            raise ConfigurationError(f"run-config 'supersedes' = {supersedes}: model '{model}' has no such version; "
                                     "let 'fedguard retrain' write it")
        tainted = session.exec(select(ModelTaint.id).where(ModelTaint.model_version_id == version_id)
                               .limit(1)).first()
    if tainted is None:
        raise ConfigurationError(f"run-config 'supersedes' = {supersedes}: {model}:{supersedes} is not tainted by any "
                                 "consent withdrawal, so there is nothing to retrain it without; remove 'supersedes'")
