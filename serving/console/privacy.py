"""Privacy: the ledger per site and dataset manifest (spent, cap, remaining), and the DP parameters of each charge."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from serving.console import charts
from serving.console.context import console_of
from serving.console.sources import BudgetRow, ChargeView

router = APIRouter()


def site_charts(rows: list[BudgetRow]) -> list[tuple[str, Any]]:
    """One bar chart per site: each (manifest, DP level) row's ε spent against its cap."""
    out = []
    for site in sorted({r.site for r in rows}):
        bars = [(f"{r.manifest[:12]}… {r.kind}", r.epsilon, r.epsilon_cap) for r in rows if r.site == site]
        out.append((site, charts.budget_bars(f"Privacy budget of site {site}: ε spent against the cap", bars)))
    return out


@router.get("/privacy", response_class=HTMLResponse)
async def privacy_page(request: Request, site: str = "") -> Response:
    """The ledger's rows (spent, cap, remaining), a chart per site, and the charges' DP parameters."""
    console = console_of(request)
    operator = console.operator(request)
    ledger = console.sources.ledger
    rows: list[BudgetRow] = []
    charges: list[ChargeView] = []
    if ledger is not None:
        rows = await run_in_threadpool(ledger.budgets)
        charges = await run_in_threadpool(ledger.charges, site or None)
    if site:
        rows = [r for r in rows if r.site == site]
    return console.render(request, "budgets.html", operator, rows=rows, charges=charges[-500:],
                          site_charts=site_charts(rows), site=site, unavailable=ledger is None,
                          sites=sorted({r.site for r in rows}), title="Privacy")
