"""``fedguard audit privacy NAME:VERSION --canaries N``: re-run a version's simulation with canaries; ε̂ against ε.

The one-run audit needs canaries in the training data, so it cannot be
done after the fact on a model already trained: this command re-runs the
version's ``fedguard simulate`` configuration (same dataset, split, seeds,
DP settings, from its run folder) with ``N`` canaries planted, and the
coordinator audits the model it publishes (:mod:`coordinator.privacy_audit`).
The audited model is registered as a new version of the same name, its
audit signed into its ML-BOM's metrics: that version, not the original,
can pass the ``privacy-audit-passed`` gate (a signed number about a model
must be about that very model, DESIGN §6). ε̂ > ε exits 5.

A version trained by a deployment is refused: canaries would have to be
planted in the sites' own data, which only each site can do.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.console import Console

from lifecycle.errors import ConfigurationError

ATTACKS = ("loss", "lira", "none")


def _simulation_run_config(name: str, version: int | None) -> tuple[str, dict[str, Any]]:
    """The version's ref and its training run's config; refuses a deployment-trained version."""
    from sqlmodel import Session

    from lifecycle.registry import Registry
    from lifecycle.registry.tables import TrainingRun

    registry = Registry.open()
    record = registry.get_version(name, version)
    with Session(registry.engine) as session:
        run = session.get(TrainingRun, record.run_id) if record.run_id else None
        if run is None:
            raise ConfigurationError(f"{record.ref} has no training run in the registry: there is no simulation to "
                                     "re-run with canaries")
        mode, config = run.mode, json.loads(run.config_json)
    if mode != "simulation":
        raise ConfigurationError(f"{record.ref} was trained by a {mode} run: the one-run audit plants canaries in "
                                 "the training data, which in a deployment only the sites themselves hold; audit "
                                 "a simulation of the same configuration ('fedguard simulate --canaries N') instead")
    return record.ref, config


def audit_privacy(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] of a simulation-trained version (newest if no version).")],
    canaries: Annotated[int, typer.Option(
        "--canaries", help="Canaries to plant (each with prob. 1/2), at most the training records (breast-cancer: "
                           "455, digits: 1437).")] = 200,
    attack: Annotated[str, typer.Option(
        "--attack", help="Membership inference on the audited model: 'loss' (Yeom et al.), 'lira' (Carlini et al., "
                         "with shadow federations) or 'none'.")] = "loss",
    shadows: Annotated[int, typer.Option(
        "--shadows", help="LiRA: shadow federations to train (even; each is a full simulation).")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the audit and the attack as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Re-run a simulated version with canaries: the one-run ε lower bound against the ledger's ε (exit 5 if above)."""
    from pathlib import Path

    from lifecycle.registry import parse_ref
    from simulations.cli import ProgressPrinter, audit_line
    from simulations.federation import run
    from simulations.membership import loss_attack
    from simulations.retrain import saved_config
    from simulations.shadows import lira_attack, shadow_masks

    if canaries < 2:
        raise ConfigurationError(f"--canaries {canaries}: the audit needs at least 2 canaries (200 is the default)")
    if attack not in ATTACKS:
        raise ConfigurationError(f"--attack {attack}: choose one of {', '.join(ATTACKS)}")
    if attack == "lira":
        shadow_masks(0, shadows, 0)  # refuses an odd or too small --shadows before any training
    name, version = parse_ref(ref)
    original, run_config = _simulation_run_config(name, version)
    cfg = replace(saved_config(original, run_config), canaries=canaries, model_name=name)
    console = Console(stderr=as_json)
    console.print(f"auditing {original}: re-running its simulation with {canaries} canaries", highlight=False)
    outcome = run(cfg, ProgressPrinter(console, cfg.watermark), verbose=verbose)  # exit 5 if ε̂ > ε
    section = outcome["privacy_audit"]
    result: dict[str, Any] = {"audited": original, "version": f"{outcome['model']}:{outcome['version']}",
                              "privacy_audit": section}
    attacks = [loss_attack(Path(outcome["artifact"]), Path(outcome["run_dir"]) / "data")] if attack != "none" else []
    if attack == "lira":
        attacks += lira_attack(outcome, cfg, shadows, ProgressPrinter(console, "none"), verbose=verbose,
                               announce=lambda line: console.print(f"[dim]{line}[/dim]", highlight=False))
    result["attacks"] = [a.to_dict() for a in attacks]
    if as_json:
        typer.echo(json.dumps(result, default=str))
        return
    console.print(f"{result['version']} (configuration of {original}, {canaries} canaries): "
                  f"{audit_line(section)}", highlight=False, soft_wrap=True)
    for a in attacks:
        console.print(f"{a.attack} attack, {a.members} members vs {a.non_members} held out: AUC {a.auc:.3f}, "
                      f"TPR {a.tpr_at_0_1pct_fpr:.3f} at 0.1 % FPR, {a.tpr_at_1pct_fpr:.3f} at 1 % FPR",
                      highlight=False, soft_wrap=True)
