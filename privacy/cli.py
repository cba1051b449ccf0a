"""``fedguard privacy ledger|cap``: what each site has spent, what it has left, and its caps.

Reads the coordinator's ledger in the registry database (``FEDGUARD_HOME`` or
``FEDGUARD_DATABASE_URL``), or a site agent's own ledger file with
``--ledger PATH``. The ε shown is the accountant's composition over every
recorded charge on the manifest (all runs and rounds); the naive sum of
per-charge ε's (basic composition: one charge per round at record level, one
per run under declared site-level sampling) is shown beside it for
comparison. The table fits an 80-column terminal: headers never wrap, a long
site name folds.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Column, Table

from privacy.ledger import ANY, PrivacyLedger, SiteLedger, coordinator_ledger

privacy_app = typer.Typer(help="Inspect privacy budgets: spend per site, caps, remaining ε.",
                          no_args_is_help=True)
console = Console()

LedgerOption = Annotated[
    Path | None,
    typer.Option("--ledger", help="A site agent's ledger file instead of the coordinator's registry."),
]


MANIFEST_CHARS = 8  # enough to tell a site's files apart on screen; --json has the whole SHA-256
_NUMBER_COLUMNS = ("level", "runs", "ε spent", "δ", "ε cap", "ε left", "Σε naive")
NAIVE_NOTE = ("Σε naive: sum of the ε of each charge (one per round at record level) at δ = Σδ; "
              "basic composition, for comparison with the composed ε spent")


def _open(path: Path | None) -> PrivacyLedger:
    return SiteLedger.open(path) if path is not None else coordinator_ledger()


def _fmt(value: float | None) -> str:
    return "-" if value is None else ("∞" if math.isinf(value) else f"{value:.3f}")


@privacy_app.command("ledger")
def ledger(
    site: Annotated[str | None, typer.Option("--site", help="Only this site.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ledger_path: LedgerOption = None,
) -> None:
    """Show ε spent and remaining per site, dataset manifest and DP level (record/site)."""
    book = _open(ledger_path)
    try:
        rows = book.summary(site)
        caps = [c for c in book.caps() if site is None or c.site in (site, ANY)]
    finally:
        book.close()
    if as_json:
        typer.echo(json.dumps({"entries": [asdict(r) for r in rows], "caps": [asdict(c) for c in caps]}))
        return
    if not rows:
        console.print("no privacy spent yet" + (f" by site '{site}'" if site else ""))
    else:
        table = Table(Column("site", overflow="fold", min_width=4), Column("manifest", no_wrap=True),
                      *(Column(title, no_wrap=True) for title in _NUMBER_COLUMNS), box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
        for r in rows:
            table.add_row(r.site, r.manifest[:MANIFEST_CHARS], r.kind, str(r.runs), _fmt(r.epsilon), f"{r.delta:g}",
                          _fmt(r.epsilon_cap), _fmt(r.epsilon_remaining), _fmt(r.epsilon_naive))
        console.print(table)
        console.print(NAIVE_NOTE, highlight=False)
    if caps:
        console.print("caps: " + "; ".join(f"{c.site}/{c.manifest[:16]}/{c.kind} ε≤{c.epsilon:g} at δ={c.delta:g}"
                                           for c in caps))


@privacy_app.command("cap")
def cap(
    site: Annotated[str, typer.Argument(help="Site name, or '*' for every site.")],
    epsilon: Annotated[float, typer.Argument(help="The ε cap (composed over all runs on a manifest).")],
    delta: Annotated[float, typer.Option("--delta", help="δ at which the cap is evaluated.")] = 1e-5,
    manifest: Annotated[str, typer.Option("--manifest", help="Dataset manifest, or '*' for any.")] = ANY,
    kind: Annotated[str, typer.Option("--kind", help="'record', 'site', 'reference' or '*' for each.")] = ANY,
    accountant: Annotated[str, typer.Option("--accountant", help="'rdp' or 'prv'.")] = "rdp",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ledger_path: LedgerOption = None,
) -> None:
    """Set (or replace) a privacy cap; the change is audited."""
    book = _open(ledger_path)
    try:
        result = book.set_cap(site, epsilon, delta, manifest=manifest, kind=kind, accountant=accountant,
                              actor="cli")
    finally:
        book.close()
    if as_json:
        typer.echo(json.dumps(asdict(result)))
    else:
        console.print(f"cap set: {result.site}/{result.manifest}/{result.kind} ε≤{result.epsilon:g} "
                      f"at δ={result.delta:g} ({result.accountant})")
