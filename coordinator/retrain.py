"""``fedguard retrain``: what relaunching a version's job without the withdrawn data means, and its deployment half.

A version is *tainted* when a consent withdrawal covers data in its lineage
(``lifecycle.governance``: :class:`ConsentWithdrawal`, :class:`ModelTaint`).
Retraining it relaunches the very job that produced it, same run config and
seeds, with two changes, and nothing else:

- every site withdrawn **as a whole** is left out: the run config names the
  withdrawals (``excludes-withdrawals``, :mod:`coordinator.withdrawals`), the
  coordinator refuses those sites before round 1 (reason ``withdrawn``), and
  ``num-sites`` (and ``min-sites``) drop by their number;
- the new version **supersedes** the tainted one (``supersedes``): the
  registry records it with a ``model.retrained`` audit event, and the ML-BOM's
  training section names the withdrawals the run excluded.

A withdrawal of *some records* changes nothing at the coordinator: the site's
agent leaves those records out of all future training by itself; the run
still names it, so the lineage says what the new version was trained without.

:func:`plan` decides all of this from the registry alone (``--dry-run``
prints it); :func:`launch` resubmits a deployment job through ``fedguard run
launch``'s machinery. A simulation is re-run by ``simulations.retrain``,
which may import the simulation engine (DESIGN §3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlmodel import Session, col, select

from coordinator.config import CoordinatorConfig
from coordinator.withdrawals import WHOLE_SITE, ExcludedWithdrawal, encode
from lifecycle.errors import ConfigurationError
from lifecycle.governance.tables import ConsentWithdrawal, ModelTaint
from lifecycle.registry import Registry, VersionRecord
from lifecycle.registry.tables import ModelVersion, RegisteredModel, TrainingRun

MODES = ("simulation", "deployment")
_NOT_RELAUNCHED = ("run-id", "result-path")
"""Run config keys of the old run that a new run must not inherit (its identity, its outcome file)."""


@dataclass(frozen=True)
class RetrainPlan:
    """What ``fedguard retrain`` will run: the tainted version, the job, the sites kept and left out."""

    name: str
    version: int
    mode: str
    run_id: str
    withdrawals: tuple[ExcludedWithdrawal, ...]
    """Every withdrawal the new run excludes: those that taint the version, and those its run already excluded."""
    kept: tuple[str, ...]
    dropped: tuple[str, ...]
    changes: dict[str, Any]
    """The run config keys the retrain sets (the rest is the old run's)."""
    run_config: dict[str, Any]
    notes: tuple[str, ...] = field(default=())

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "supersedes": self.version, "mode": self.mode, "run": self.run_id,
                "withdrawals": [w.to_dict() for w in self.withdrawals], "sites_kept": list(self.kept),
                "sites_dropped": list(self.dropped), "changes": self.changes, "run_config": self.run_config,
                "notes": list(self.notes)}


def _withdrawals(session: Session, version_id: int, lineage: set[str]) -> list[ExcludedWithdrawal]:
    """The withdrawals that taint the version, and any whole-site withdrawal of a site in its lineage."""
    tainting = select(ConsentWithdrawal).join(ModelTaint, col(ModelTaint.withdrawal_id) == col(ConsentWithdrawal.id))
    rows = list(session.exec(tainting.where(ModelTaint.model_version_id == version_id)).all())
    if lineage:
        rows += session.exec(select(ConsentWithdrawal).where(col(ConsentWithdrawal.site).in_(sorted(lineage)),
                                                             ConsentWithdrawal.scope == WHOLE_SITE)).all()
    found = {row.id: row for row in rows if row.id is not None}
    return [ExcludedWithdrawal(number, found[number].site, found[number].scope) for number in sorted(found)]


def _stored(registry: Registry, record: VersionRecord) -> tuple[TrainingRun, list[ExcludedWithdrawal]]:
    with Session(registry.engine) as session:
        run = session.get(TrainingRun, record.run_id) if record.run_id else None
        if run is None:
            raise ConfigurationError(f"{record.ref} has no training run in the registry: there is no job to relaunch")
        version_id = session.exec(
            select(ModelVersion.id).join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
            .where(RegisteredModel.name == record.name, ModelVersion.version == record.version)).one()
        assert version_id is not None  # the record was just read
        return run, _withdrawals(session, version_id, {s.site for s in record.sites})


def plan(registry: Registry, name: str, version: int | None = None) -> RetrainPlan:
    """The retrain of ``name:version`` (newest if ``None``): module docstring.

    Raises
    ------
    NotFoundError
        No such model or version (exit 4).
    ConfigurationError
        The version has nothing to be retrained without (not tainted, no
        withdrawal in its lineage), no relaunchable run, or every site of
        its lineage withdrew (exit 2).
    """
    record = registry.get_version(name, version)
    run, found = _stored(registry, record)
    if run.mode not in MODES:
        raise ConfigurationError(f"{record.ref} was trained by a '{run.mode}' run; only {' and '.join(MODES)} runs "
                                 "can be relaunched")
    if not found:
        raise ConfigurationError(f"{record.ref} is not tainted and no site of its lineage withdrew consent: there is "
                                 "nothing to retrain it without ('fedguard models list --tainted' lists the tainted)")
    config: dict[str, Any] = json.loads(run.config_json)
    earlier = CoordinatorConfig.from_mapping({k: v for k, v in config.items() if k not in _NOT_RELAUNCHED})
    lineage = sorted(s.site for s in record.sites)
    withdrawn = {w.site for w in found if w.whole_site}
    dropped = tuple(site for site in lineage if site in withdrawn)
    kept = tuple(site for site in lineage if site not in withdrawn)
    if not kept:
        raise ConfigurationError(f"every site that trained {record.ref} withdrew its consent ({', '.join(dropped)}): "
                                 "there is no data left to retrain it on")
    excluded = {w.id: w for w in (*earlier.withdrawals, *found)}
    num_sites = max(1, earlier.num_sites - len(dropped))
    changes: dict[str, Any] = {
        "model-name": record.name, "num-sites": num_sites, "min-sites": min(earlier.min_sites, num_sites),
        "supersedes": record.version, "excludes-withdrawals": encode(excluded.values()),
    }
    new_config = {**{k: v for k, v in config.items() if k not in _NOT_RELAUNCHED}, **changes}
    CoordinatorConfig.from_mapping(new_config)  # e.g. SecAgg+ with fewer than 3 sites left: refused here
    notes = []
    if any(not w.whole_site for w in found):
        notes.append("records-level withdrawals: each site's agent leaves those records out itself" +
                     (" (virtual sites of a simulation keep no consent list)" if run.mode == "simulation" else ""))
    return RetrainPlan(record.name, record.version, run.mode, run.id, tuple(excluded[k] for k in sorted(excluded)),
                       kept, dropped, changes, new_config, tuple(notes))


def launch(retrain: RetrainPlan, *, federation: str, superlink: str | None, root_certificates: Path | None,
           insecure: bool, follow: bool, timeout: float | None, as_json: bool, console: Console) -> None:
    """Resubmit a deployment plan's job as ``fedguard run launch`` does (a new run id), and follow it."""
    from coordinator.run_cli import _connection, _machine_defaults, _submit_and_follow
    from coordinator.runs.job import Job

    if retrain.mode != "deployment":
        raise ConfigurationError(f"{retrain.ref} was trained in a {retrain.mode}; 'fedguard retrain' re-runs it there")
    defaults = _machine_defaults()
    job = Job.from_mapping({**retrain.run_config,
                            **{k: v for k, v in defaults.items() if not retrain.run_config.get(k)}})
    _submit_and_follow(job, _connection(federation, superlink, root_certificates, insecure, console), follow,
                       timeout, as_json, console)
