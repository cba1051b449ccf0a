"""``fedguard retrain``: relaunch a tainted version's job without the withdrawn data; the new version supersedes it.

The plan (which sites stay, which withdrawals the run excludes, the run
config) is :func:`coordinator.retrain.plan`'s. A deployment version's job is
resubmitted to the coordinator's SuperLink as ``fedguard run launch`` does;
a simulation version's is re-run here, with the settings its ``fedguard
simulate`` run kept in its run folder (``outcome.json``): the same dataset,
split and seeds, so every site that stays trains on exactly the data it had,
while each virtual site withdrawn as a whole is refused before round 1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from lifecycle.errors import ConfigurationError

if TYPE_CHECKING:
    from coordinator.retrain import RetrainPlan
    from simulations.federation import SimulationConfig

OUTCOME = "outcome.json"


def simulation_config(retrain: RetrainPlan) -> SimulationConfig:
    """The settings of the ``fedguard simulate`` run that trained the version (from its run folder).

    Raises
    ------
    ConfigurationError
        The run folder or its ``outcome.json`` is gone (the data split
        cannot be redone without the dataset and seed it names).
    """
    return saved_config(retrain.ref, retrain.run_config)


def saved_config(ref: str, run_config: Mapping[str, Any]) -> SimulationConfig:
    """The ``fedguard simulate`` settings kept in the run folder of the run whose config is ``run_config``.

    Raises
    ------
    ConfigurationError
        The run folder or its ``outcome.json`` is gone or damaged.
    """
    from simulations.federation import SimulationConfig

    data_dir = str(run_config.get("data-dir", ""))
    path = Path(data_dir).parent / OUTCOME if data_dir else Path(OUTCOME)
    try:
        saved = json.loads(path.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise ConfigurationError(f"the simulation that trained {ref} kept its settings in {path}, which is "
                                 "gone or damaged: run 'fedguard simulate' again with its settings and the withdrawn "
                                 "sites left out")
    known = {f.name for f in fields(SimulationConfig)}
    return SimulationConfig(**{k: v for k, v in saved.items() if k in known})


def run_simulation(retrain: RetrainPlan, observer: Any, *, verbose: bool = False) -> dict[str, Any]:
    """Re-run the version's simulation with the plan's changes; the outcome of the new run."""
    from simulations.federation import run

    return run(simulation_config(retrain), observer, verbose=verbose, run_config=retrain.changes)


def _show_plan(console: Console, retrain: RetrainPlan, dry_run: bool) -> None:
    withdrawals = ", ".join(f"#{w.id} {w.site} ({w.scope})" for w in retrain.withdrawals)
    console.print(f"{'would retrain' if dry_run else 'retraining'} {retrain.ref} ({retrain.mode} run "
                  f"{retrain.run_id}) without withdrawal(s) {withdrawals}", highlight=False, soft_wrap=True)
    console.print(f"  sites kept: {', '.join(retrain.kept)}; left out: {', '.join(retrain.dropped) or 'none'}",
                  highlight=False, soft_wrap=True)
    for note in retrain.notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    if dry_run:
        console.print("  run config: " + " ".join(f"{k}={v}" for k, v in sorted(retrain.run_config.items())),
                      highlight=False, soft_wrap=True)


def retrain(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] (newest if no version).")],
    without_withdrawn: Annotated[bool, typer.Option(
        "--without-withdrawn", help="Leave out every site and record whose consent was withdrawn (required).")]
    = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would run; train nothing.")] = False,
    superlink: Annotated[str | None, typer.Option(
        envvar="FEDGUARD_SUPERLINK", help="Deployment: SuperLink address host:port [this machine's federation].")]
    = None,
    root_certificates: Annotated[Path | None, typer.Option(
        envvar="FEDGUARD_SUPERLINK_CA", help="Deployment: CA that verifies the SuperLink [the federation CA].")]
    = None,
    federation: Annotated[str, typer.Option(help="Deployment: name of the connection in FLWR_HOME.")] = "fedguard",
    insecure: Annotated[bool, typer.Option(help="Deployment: no TLS (loopback only).")] = False,
    follow: Annotated[bool, typer.Option(help="Deployment: follow progress until the run ends.")] = True,
    timeout: Annotated[float | None, typer.Option(help="Deployment: stop following after this many seconds.")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan and the outcome as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Simulation: show Flower's and Ray's logs.")] = False,
) -> None:
    """Relaunch a version's job without the data withdrawn from it; the new version supersedes it."""
    from coordinator.retrain import launch, plan
    from lifecycle.registry import Registry, parse_ref

    if not without_withdrawn:
        raise ConfigurationError("pass --without-withdrawn: a retrain relaunches the job without the data whose "
                                 "consent was withdrawn (the only kind of retrain)")
    name, version = parse_ref(ref)
    retrain_plan = plan(Registry.open(), name, version)
    console = Console(stderr=as_json)
    if as_json and (dry_run or retrain_plan.mode == "deployment"):
        typer.echo(json.dumps({"plan": retrain_plan.to_dict()}))
    else:
        _show_plan(console, retrain_plan, dry_run)
    if dry_run:
        return
    if retrain_plan.mode == "deployment":
        launch(retrain_plan, federation=federation, superlink=superlink, root_certificates=root_certificates,
               insecure=insecure, follow=follow, timeout=timeout, as_json=as_json, console=Console())
        return
    from simulations.cli import ProgressPrinter

    outcome = run_simulation(retrain_plan, ProgressPrinter(console, str(retrain_plan.run_config.get("watermark"))),
                             verbose=verbose)
    if as_json:
        typer.echo(json.dumps({"plan": retrain_plan.to_dict(), "outcome": outcome}, default=str))
        return
    console.print(f"[green]{outcome['model']}:{outcome['version']}[/green] supersedes {retrain_plan.ref}: trained on "
                  f"{', '.join(retrain_plan.kept)}, without "
                  + ", ".join(f"withdrawal #{w.id} ({w.site})" for w in retrain_plan.withdrawals),
                  highlight=False, soft_wrap=True)
