"""``fedguard models list|show|gates``: what the registry holds, with full lineage and gate decisions."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from lifecycle.bom import read_bom, read_lineage
from lifecycle.errors import ConfigurationError, StateError
from lifecycle.governance.decisions import PRODUCTION, STAGES, STAGING, GateReport
from lifecycle.governance.gates import StoredDecision, evaluate, latest_decisions
from lifecycle.registry import Registry, VersionRecord

models_app = typer.Typer(help="Inspect and verify registered models.", no_args_is_help=True)
console = Console()


def _bom_training(record: VersionRecord) -> dict[str, Any]:
    """The signed BOM's training section (privacy details beyond the registry's columns)."""
    try:
        training: dict[str, Any] = read_lineage(read_bom(record.artifact.model_dir))["training"]
    except (StateError, KeyError, TypeError):
        return {}
    return training


def version_summary(record: VersionRecord) -> dict[str, Any]:
    """A JSON-ready description of one version and its lineage (registry rows + signed BOM)."""
    training = _bom_training(record)
    bom_sites = {str(s.get("site")): s for s in training.get("sites", [])}
    return {
        "model": record.name,
        "version": record.version,
        "stage": record.stage,
        "created_at": record.created_at.isoformat(),
        "artifact": str(record.artifact.model_dir),
        "artifact_digest": record.artifact.digest,
        "signature_path": str(record.artifact.signature_path),
        "signer": record.signer_fingerprint,
        "run": record.run_id,
        "metrics": record.metrics,
        "watermark": record.watermark,
        "secure_aggregation": training.get("secure_aggregation"),
        "aggregation": training.get("aggregation"),
        "sites": [
            {"site": s.site, "num_examples": s.num_examples, "data_manifest": s.data_manifest,
             "epsilon": s.epsilon, "delta": s.delta, "rounds": s.rounds_participated,
             "site_epsilon": bom_sites.get(s.site, {}).get("site_dp", {}).get("epsilon"),
             "ledger": bom_sites.get(s.site, {}).get("ledger", {})}
            for s in record.sites
        ],
    }


@models_app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tainted: Annotated[bool, typer.Option("--tainted", help="List every version whose lineage holds withdrawn "
                                          "data, with the withdrawals that taint it.")] = False,
) -> None:
    """List registered models with their newest version (--tainted: every tainted version)."""
    if tainted:
        _list_tainted(as_json)
        return
    records = Registry.open().latest_versions()
    if as_json:
        typer.echo(json.dumps([version_summary(r) for r in records]))
        return
    if not records:
        console.print("no models registered yet; run 'fedguard simulate' to train one")
        return
    table = Table("model", "latest", "accuracy", "sites", "max ε", "created")
    for r in records:
        eps = [s.epsilon for s in r.sites if s.epsilon is not None]
        acc = r.metrics.get("accuracy")
        table.add_row(r.name, str(r.version), "-" if acc is None else f"{acc:.3f}", str(len(r.sites)),
                      f"{max(eps):.2f}" if eps else "-", r.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@models_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: newest).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one version's lineage: run, sites, ε, metrics, watermark, signature, latest gate decisions."""
    registry = Registry.open()
    record = registry.resolve(ref)
    summary = version_summary(record)
    decisions = latest_decisions(registry, record.name, record.version)
    summary["gates"] = [d.to_dict() for d in decisions]
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.print(f"[bold]{record.ref}[/bold]  stage={record.stage}  created {summary['created_at']}")
    console.print(f"artifact   {summary['artifact']}\n"
                  f"signature  {summary['signature_path']}  signer {record.signer_fingerprint[:16]}…")
    console.print(f"run        {record.run_id}  aggregation {summary['aggregation']}  "
                  f"secure aggregation {summary['secure_aggregation']}")
    console.print("metrics    " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in record.metrics.items() if not isinstance(v, dict)))
    fair, drift = record.metrics.get("fairness"), record.metrics.get("drift")
    if isinstance(fair, dict):
        console.print(f"fairness   '{fair.get('attribute')}' ({fair.get('grouping')}): demographic parity difference "
                      f"{_value(fair.get('demographic_parity_difference'))}, equalized odds difference "
                      f"{_value(fair.get('equalized_odds_difference'))}", highlight=False)
    if isinstance(drift, dict):
        console.print(f"drift      {drift.get('statistic')} {_value(drift.get('max'))} (worst feature "
                      f"'{drift.get('feature')}') of the held-out set against the reference", highlight=False)
    mark = record.watermark
    console.print(f"watermark  {mark.get('scheme')}  commitment {str(mark.get('commitment', ''))[:16]}…  "
                  f"trigger accuracy {mark.get('trigger_accuracy')}  p={mark.get('p_value')}")
    table = Table("site", "examples", "rounds", "record ε", "δ", "site ε", "ledger ε (all runs)",
                  "data manifest (SHA-256)")
    for s, row in zip(record.sites, summary["sites"], strict=True):
        ledger = ", ".join(f"{kind} {v['epsilon']:.2f}" for kind, v in sorted(row["ledger"].items()))
        table.add_row(s.site, str(s.num_examples), str(s.rounds_participated),
                      "-" if s.epsilon is None else f"{s.epsilon:.3f}", "-" if s.delta is None else f"{s.delta:g}",
                      "-" if row["site_epsilon"] is None else f"{row['site_epsilon']:.3f}", ledger or "-",
                      s.data_manifest[:16] + "…")
    console.print(table)
    console.print("gates      " + ("; ".join(_gate_line(d) for d in decisions)
                                    or f"no decision yet ('fedguard models gates {record.ref} --evaluate')"),
                  highlight=False)


def _gate_line(decision: StoredDecision) -> str:
    report = decision.report
    where = f"{report.stage}@{report.environment}" if report.environment else report.stage
    verdict = "pass" if report.passed else "FAIL " + ", ".join(r.criterion for r in report.failing)
    return f"{where}: {verdict} ({decision.trigger}, {decision.created_at:%Y-%m-%d %H:%M})"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_report(report: GateReport, heading: str) -> None:
    console.print(heading, highlight=False)
    table = Table("criterion", "measured", "threshold", "result", "evidence")
    for r in report.results:
        table.add_row(r.criterion, _value(r.measured), _value(r.threshold),
                      "[green]pass[/green]" if r.passed else "[red]FAIL[/red]", r.evidence)
    if not report.results:
        console.print("  no criterion declared for this stage: the gate is open", highlight=False)
    else:
        console.print(table)


@models_app.command("gates")
def gates(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: newest).")],
    stage: Annotated[str | None, typer.Option("--stage", help="Only this stage: " + ", ".join(STAGES) + ".")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Only this environment ('' : decisions at publication).")
                   ] = None,
    now: Annotated[bool, typer.Option("--evaluate", help="Evaluate now under the current policy (trigger "
                                                         "'manual'), store and show the decisions.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every criterion of the latest gate decisions: measured value, threshold, pass/fail, evidence."""
    from lifecycle.governance.cli import actor

    if stage is not None and stage not in STAGES:
        raise ConfigurationError(f"unknown stage '{stage}' for --stage; known stages: {', '.join(STAGES)}")
    registry = Registry.open()
    record = registry.resolve(ref)
    if now:
        for s in [stage] if stage else [STAGING, PRODUCTION]:
            evaluate(registry, record.name, record.version, s, environment=env or "", trigger="manual",
                     actor=actor())
    decisions = [d for d in latest_decisions(registry, record.name, record.version)
                 if (stage is None or d.report.stage == stage) and (env is None or d.report.environment == env)]
    if as_json:
        typer.echo(json.dumps([d.to_dict() for d in decisions], default=str))
        return
    if not decisions:
        console.print(f"{record.ref}: no gate decision yet; '--evaluate' evaluates now", highlight=False)
        return
    for d in decisions:
        r = d.report
        policy = f"policy version {r.policy_version}" if r.policy_version is not None else "default policy"
        _print_report(r, f"[bold]{record.ref}[/bold] {r.stage}" + (f" in {r.environment}" if r.environment else "")
                      + f": {'[green]PASSED[/green]' if r.passed else '[red]FAILED[/red]'} ({policy}; {d.trigger} "
                      f"by {d.actor} at {d.created_at:%Y-%m-%d %H:%M:%S})")


def _list_tainted(as_json: bool) -> None:
    """``models list --tainted``: one entry per tainted version, each with its withdrawals."""
    from lifecycle.governance.consent import ConsentStore

    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for taint in ConsentStore(Registry.open()).tainted():
        grouped.setdefault((taint.model, taint.version), []).append(
            {**taint.withdrawal.to_dict(), "tainted_at": taint.tainted_at.isoformat()})
    if as_json:
        typer.echo(json.dumps([{"model": model, "version": version, "ref": f"{model}:{version}",
                                "withdrawals": withdrawals} for (model, version), withdrawals in grouped.items()]))
        return
    if not grouped:
        console.print("no tainted version: no consent withdrawal covers any model's lineage")
        return
    table = Table("version", "withdrawal", "site", "scope", "withdrawn", "reason")
    for (model, version), withdrawals in grouped.items():
        for w in withdrawals:
            scope = "whole site" if w["scope"] == "site" else f"{w['record_count']} record(s)"
            table.add_row(f"{model}:{version}", f"#{w['id']}", str(w["site"]), scope, str(w["created_at"])[:16],
                          str(w["reason"]))
    console.print(table)
