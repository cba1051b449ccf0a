"""Runs: simulations and deployed runs, live while they run (htmx polls the live part every second)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from serving.console import charts
from serving.console.context import Console, console_of
from serving.console.session import Operator
from serving.console.sources import RunView

router = APIRouter()


def run_charts(run: RunView) -> dict[str, Any]:
    """The run's charts and its per-round table: accuracy per round, ε per round, ε per site."""
    accuracy = {"test accuracy": [(float(r["round"]), float(r.get("accuracy") or math.nan)) for r in run.rounds]}
    epsilon = {"ε (largest site)": [(float(r["round"]), float(r["epsilon_max"])) for r in run.rounds
                                    if r.get("epsilon_max") is not None]}
    site_level = [(float(r["round"]), float(r["site_epsilon"])) for r in run.rounds
                  if r.get("site_epsilon") is not None]
    if site_level:
        epsilon["site-level ε"] = site_level
    return {
        "accuracy_chart": charts.line_chart(f"Test accuracy per round of run {run.run_id}", accuracy,
                                            x_label="round", y_label="accuracy", y_max=1.0),
        "epsilon_chart": charts.line_chart(f"Privacy spent (ε) per round of run {run.run_id}", epsilon,
                                           x_label="round", y_label="ε"),
        "site_chart": charts.budget_bars(f"ε spent per site in run {run.run_id}",
                                         [(site, eps, None) for site, eps in sorted(run.site_epsilon.items())],
                                         capped=False),
    }


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(request: Request) -> Response:
    """Every run, newest first, with its progress and the model it published."""
    console = console_of(request)
    operator = console.operator(request)
    source = console.sources.runs
    found = await run_in_threadpool(source.runs) if source is not None else []
    return console.render(request, "runs.html", operator, runs=found, unavailable=source is None, title="Runs")


async def _run(request: Request, run_id: str) -> tuple[Console, Operator, RunView]:
    console = console_of(request)
    operator = console.operator(request)
    if console.sources.runs is None:
        from lifecycle.errors import NotFoundError

        raise NotFoundError("runs live on the coordinator: use the console that 'fedguard console' serves there")
    run = await run_in_threadpool(console.sources.runs.run, run_id)
    return console, operator, run


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str) -> Response:
    """One run: its live part (htmx polls it while the run runs) and its configuration."""
    console, operator, run = await _run(request, run_id)
    return console.render(request, "run.html", operator, run=run, title=f"Run {run.run_id}", **run_charts(run))


@router.get("/runs/{run_id}/live", response_class=HTMLResponse)
async def run_live(request: Request, run_id: str) -> Response:
    """The part of the run page that changes; htmx swaps it in every second until the run ends."""
    console, operator, run = await _run(request, run_id)
    # HTTP 286: htmx swaps this last answer in and stops polling (the run has ended).
    return console.render(request, "run_live.html", operator, status_code=200 if run.status == "running" else 286,
                          run=run, **run_charts(run))
