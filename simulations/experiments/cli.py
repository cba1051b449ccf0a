"""``fedguard experiment``: run a grid of simulations as Ray Tune trials, and report their results."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

experiment_app = typer.Typer(
    help="Run grids of simulations as Ray Tune trials (resumable), and report them (HTML, figures).",
    no_args_is_help=True,
)


@experiment_app.command("run")
def run(
    grid: Annotated[Path, typer.Argument(help="The grid file (TOML: [fixed], [grid], [[trials]], seeds).")],
    out: Annotated[Path, typer.Option("--out", help="Results folder; reuse it to resume.")] = Path("results"),
    ray_address: Annotated[str, typer.Option(
        "--ray-address", envvar="RAY_ADDRESS", help="Attach to this Ray cluster (default: a local Ray).")] = "",
    concurrent: Annotated[int, typer.Option(
        "--concurrent", min=0, help="Trials at once (0: cluster CPUs ÷ the largest trial's sites × CPUs).")] = 0,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run failed trials again.")] = False,
    trial_timeout: Annotated[float, typer.Option(
        "--trial-timeout", min=0, help="Seconds before a trial is killed and recorded as failed (0: no limit).")] = 0,
) -> None:
    """Run every trial of GRID that has no result in --out yet; a failing trial is recorded, never fatal."""
    from simulations.experiments.grid import load_grid
    from simulations.experiments.runner import SweepOptions, run_sweep

    console = Console(stderr=True, soft_wrap=True)
    parsed = load_grid(grid)  # exit 2 names the file and the key
    summary = run_sweep(parsed, SweepOptions(out, ray_address, concurrent, retry_failed, trial_timeout), console)
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(summary.statuses.items()))
    console.print(f"{summary.total} trials ({statuses}); ran {summary.ran} now; results in "
                  f"{out / 'results.parquet'} and {out / 'trials'}", highlight=False)
    if summary.missing:
        console.print(f"[yellow]interrupted: {summary.missing} trials have no result yet; run the same command "
                      "to resume[/yellow]")
        raise typer.Exit(130)


@experiment_app.command("report")
def report(
    results: Annotated[Path, typer.Argument(help="The results folder of 'fedguard experiment run'.")],
    html: Annotated[Path | None, typer.Option("--html", help="The HTML file (default: RESULTS/report.html).")] = None,
    markdown: Annotated[Path | None, typer.Option(
        "--markdown", help="Also write the results per setting (mean ± sd over seeds) as a Markdown table here.")
    ] = None,
) -> None:
    """Write a self-contained HTML report with its figures (PNG and SVG) from a results folder."""
    from simulations.experiments.report import write_markdown, write_report

    written = write_report(results, html or results / "report.html")
    console = Console(soft_wrap=True)
    console.print(f"report: {written.html} ({len(written.figures) // 2} figures as SVG and PNG in "
                  f"{written.figures_dir})", highlight=False)
    if markdown is not None:
        console.print(f"table: {write_markdown(results, markdown)}", highlight=False)
