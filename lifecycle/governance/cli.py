"""``fedguard policy set|show|history``: declare a model's promotion criteria, versioned and audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lifecycle.audit import actors
from lifecycle.errors import ConfigurationError
from lifecycle.governance.criteria import CRITERIA
from lifecycle.governance.policies import PolicyRecord, PolicyStore
from lifecycle.governance.policy import DEFAULT_DOCUMENT, DEFAULT_POLICY, Policy
from lifecycle.registry import Registry

policy_app = typer.Typer(help="Declare a model's promotion policy (criteria per stage), show it and its history.",
                         no_args_is_help=True)
console = Console()

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(help="The model's name (it need not be trained yet).")]


def actor() -> str:
    """Who runs the command, for the audit trail (``user:<OS user>``, :mod:`lifecycle.audit.actors`)."""
    return actors.actor()


def _criteria_table(policy: Policy) -> Table:
    table = Table("stage", "criterion", "threshold", "what it measures")
    for stage, criteria in policy.stages:
        for key, threshold in criteria:
            table.add_row(stage, key, str(threshold).lower() if isinstance(threshold, bool) else str(threshold),
                          CRITERIA[key].what)
        if policy.required_approvals(stage):
            table.add_row(stage, "required-approvals", str(policy.required_approvals(stage)),
                          "signed approvals needed to enter the stage (not measured)")
    return table


@policy_app.command("set")
def set_policy(
    name: Name,
    file: Annotated[Path, typer.Argument(help="The policy, flat TOML with a table per stage (docs/governance.md).")],
    as_json: AsJson = False,
) -> None:
    """Validate FILE and store it as NAME's next policy version (exit 2 names a bad key; nothing is stored)."""
    try:
        document = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the policy file {file}: {exc}") from exc
    record = PolicyStore(Registry.open()).set(name, document, actor=actor(), source=str(file))
    if as_json:
        typer.echo(json.dumps(record.to_dict()))
        return
    if not record.changed:
        console.print(f"{name}: policy version {record.version} is already this document (sha256 "
                      f"{record.digest[:16]}); nothing changed", highlight=False)
        return
    console.print(f"{name}: policy version {record.version} set (sha256 {record.digest[:16]}); gates are evaluated "
                  "with it at the next publication or promotion", highlight=False)
    console.print(_criteria_table(record.policy))


@policy_app.command("show")
def show_policy(
    name: Name,
    version: Annotated[int | None, typer.Option("--version", min=1, help="A past version [current].")] = None,
    as_json: AsJson = False,
) -> None:
    """Show NAME's policy (the built-in default if none was declared): criteria per stage and the document."""
    store = PolicyStore(Registry.open())
    record: PolicyRecord | None = store.get(name, version) if version is not None else store.current(name)
    policy = record.policy if record is not None else DEFAULT_POLICY
    document = record.document if record is not None else DEFAULT_DOCUMENT
    if as_json:
        typer.echo(json.dumps({"model": name, **policy.to_dict(), "document": document,
                               **({"actor": record.actor, "created_at": record.created_at.isoformat()}
                                  if record is not None else {})}))
        return
    origin = (f"policy version {record.version}, set by {record.actor} at {record.created_at:%Y-%m-%d %H:%M}"
              if record is not None else "no policy declared: the built-in default")
    console.print(f"[bold]{name}[/bold]: {origin}; sha256 {policy.digest[:16]}; on-taint {policy.on_taint}; "
                  f"sensitive-attribute {policy.sensitive_attribute or '-'}", highlight=False)
    console.print(_criteria_table(policy))


@policy_app.command("history")
def history(name: Name, as_json: AsJson = False) -> None:
    """Every policy version of NAME, oldest first (each change is an audit event 'policy.set')."""
    records = PolicyStore(Registry.open()).history(name)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in records]))
        return
    if not records:
        console.print(f"{name}: no policy declared; the built-in default applies", highlight=False)
        return
    table = Table("version", "set at", "by", "sha256")
    for r in records:
        table.add_row(str(r.version), f"{r.created_at:%Y-%m-%d %H:%M:%S}", r.actor, r.digest[:16])
    console.print(table)
