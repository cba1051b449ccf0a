"""``fedguard client ...``: the site agent's commands.

``check`` validates the site's data file against its schema offline (every
problem at once; exit 2 when any), so an operator can fix a file before the
site ever joins a run. ``audit`` shows or verifies the site's local audit log
of outgoing messages (docs/site-data.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from client.audit import read_log, verify_log
from client.data import check_file
from client.schema import SiteSchema

client_app = typer.Typer(help="The site agent: check the site's data, inspect its audit log.", no_args_is_help=True)
console = Console()


@client_app.command("check")
def check(
    data: Annotated[Path, typer.Option("--data", help="The site's CSV or Parquet file.")],
    schema: Annotated[Path, typer.Option("--schema", help="The site's schema file (TOML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a data file against its schema; list every problem (exit 2 if any)."""
    report = check_file(data, SiteSchema.load(schema)).report
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    elif report.ok:
        console.print(f"[green]ok[/green] {report.summary()}", highlight=False, soft_wrap=True)
    if not report.ok:
        if not as_json:
            console.print(report.summary(), highlight=False, soft_wrap=True)
        raise typer.Exit(2)


@client_app.command("audit")
def audit(
    log: Annotated[Path, typer.Option("--log", help="The site's audit log (node config audit-path).")],
    verify: Annotated[bool, typer.Option("--verify", help="Verify the hash chain (exit 5 if broken).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the lines as JSON.")] = False,
) -> None:
    """Show the messages this site sent (kind, size, SHA-256: never their content), or verify the log."""
    if verify:
        count = verify_log(log)  # raises AuditLogError (exit 5) naming the first bad line
        if as_json:
            typer.echo(json.dumps({"log": str(log), "lines": count, "verified": True}))
        else:
            console.print(f"[green]verified[/green] {count} line(s) of '{log}': the hash chain is intact",
                          highlight=False, soft_wrap=True)
        return
    entries = list(read_log(log))
    if as_json:
        typer.echo(json.dumps(entries))
        return
    table = Table("seq", "time", "run", "round", "kind", "records", "bytes", "sha256")
    for e in entries:
        kind = f"{e['kind']} (error)" if e.get("error") else str(e["kind"])
        table.add_row(str(e["seq"]), str(e["at"]), str(e["run-id"]), str(e["round"]), kind,
                      ",".join(e.get("records", [])), str(e["size"]), str(e["sha256"])[:16] + "…")
    console.print(table)
