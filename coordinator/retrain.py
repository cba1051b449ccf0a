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

A withdrawal of *some records* changes nothing at the coordinator: only the
site's agent can leave those records out, and the coordinator cannot see
that it does. So a retrain goes ahead only where the exclusion is known to
happen: in a deployment, for a withdrawal the site's agent itself recorded
(source ``site``: ``fedguard client withdraw`` put the records in the consent
list the agent reads before every load). Otherwise (recorded by the operator
on the site's behalf, or any records withdrawal in a simulation, whose
virtual sites keep no consent list) the plan is refused: the new version
would be recorded as trained without records it still trained on. The run
names every withdrawal it excludes, so the lineage says what the new version
was trained without.

:func:`plan` decides all of this from the registry alone (``--dry-run``
prints it); :func:`launch` resubmits a deployment job through ``fedguard run
launch``'s machinery. A simulation is re-run by ``simulations.retrain``,
which may import the simulation engine (DESIGN §3).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
SITE_SOURCE = "site"
"""The source of a withdrawal the site's own agent recorded (its signed statement, ``fedguard client withdraw``)."""
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


def _withdrawals(session: Session, version_id: int, lineage: set[str]) -> list[tuple[ExcludedWithdrawal, str]]:
    """The withdrawals that taint the version, and any whole-site withdrawal of a site in its lineage (with source)."""
    tainting = select(ConsentWithdrawal).join(ModelTaint, col(ModelTaint.withdrawal_id) == col(ConsentWithdrawal.id))
    rows = list(session.exec(tainting.where(ModelTaint.model_version_id == version_id)).all())
    if lineage:
        rows += session.exec(select(ConsentWithdrawal).where(col(ConsentWithdrawal.site).in_(sorted(lineage)),
                                                             ConsentWithdrawal.scope == WHOLE_SITE)).all()
    found = {row.id: row for row in rows if row.id is not None}
    signed = session.exec(select(ConsentWithdrawal).where(ConsentWithdrawal.source == SITE_SOURCE,
                                                          ConsentWithdrawal.scope != WHOLE_SITE)).all()
    return [(ExcludedWithdrawal(number, row.site, row.scope),
             SITE_SOURCE if _confirmed(row, signed) else row.source)
            for number, row in sorted(found.items())]


def _confirmed(row: ConsentWithdrawal, signed: Sequence[ConsentWithdrawal]) -> bool:
    """Whether the site's agent itself recorded ``row``'s records (a later signed statement of as many records).

    The coordinator keeps no record id (salted digests differ between the
    two recordings), so the count is all it can match: the operator's list
    and the site's own are the same list when the site sent it afterwards.
    """
    return row.source == SITE_SOURCE or any(
        s.site == row.site and s.record_count == row.record_count and (s.id or 0) > (row.id or 0) for s in signed)


def _stored(registry: Registry, record: VersionRecord) -> tuple[TrainingRun, list[tuple[ExcludedWithdrawal, str]]]:
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
    run, sourced = _stored(registry, record)
    found = [w for w, _ in sourced]
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
    _check_enforceable(record.ref, run.mode, [(w, source) for w, source in sourced if w.site in kept])
    excluded = {w.id: w for w in (*earlier.withdrawals, *found)}
    num_sites = max(1, earlier.num_sites - len(dropped))
    changes: dict[str, Any] = {
        "model-name": record.name, "num-sites": num_sites, "min-sites": min(earlier.min_sites, num_sites),
        "supersedes": record.version, "excludes-withdrawals": encode(excluded.values()),
    }
    new_config = {**{k: v for k, v in config.items() if k not in _NOT_RELAUNCHED}, **changes}
    CoordinatorConfig.from_mapping(new_config)  # e.g. SecAgg+ with fewer than 3 sites left: refused here
    notes = []
    if any(not w.whole_site for w in found if w.site in kept):
        notes.append("records-level withdrawals: each site's agent leaves those records out itself "
                     "(its consent list, from 'fedguard client withdraw')")
    return RetrainPlan(record.name, record.version, run.mode, run.id, tuple(excluded[k] for k in sorted(excluded)),
                       kept, dropped, changes, new_config, tuple(notes))


def _check_enforceable(ref: str, mode: str, withdrawals: list[tuple[ExcludedWithdrawal, str]]) -> None:
    """Refuse a retrain "without" records-level withdrawals that nothing would actually leave out (module doc).

    Raises
    ------
    ConfigurationError
        A records withdrawal of a site that stays in the run, in a simulation,
        or in a deployment not recorded by the site's own agent (exit 2).
    """
    unenforced = [w for w, source in withdrawals
                  if not w.whole_site and (mode == "simulation" or source != SITE_SOURCE)]
    if not unenforced:
        return
    named = ", ".join(f"#{w.id} ({w.site}, {w.scope})" for w in unenforced)
    if mode == "simulation":
        raise ConfigurationError(
            f"{ref} is tainted by records-level withdrawal(s) {named}, and the virtual sites of a simulation keep no "
            "consent list, so a retrain would still train on those records: retrain after the site's records are "
            "removed from the data (run 'fedguard simulate' on the cleaned dataset), or withdraw the whole site "
            "('fedguard site withdraw NAME')")
    raise ConfigurationError(
        f"{ref} is tainted by records-level withdrawal(s) {named} that the operator recorded, not the site's agent, "
        "so nothing shows the site leaves those records out: have the site run 'fedguard client withdraw --records "
        "FILE' with the same list (its agent then excludes them) and record its statement ('fedguard site withdraw "
        "NAME --statement FILE'), or withdraw the whole site")


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
