"""``fedguard data``: look at a simulation's data split before training on it (no torch, Flower or Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from federation.defaults import DEFAULT_SEED

data_app = typer.Typer(help="Preview how a simulation splits its data across virtual sites (no training).",
                       no_args_is_help=True)


@data_app.command("partition")
def partition(
    data: Annotated[str, typer.Option("--data", help="Your pooled CSV or Parquet file.")] = "",
    schema: Annotated[str, typer.Option("--schema", help="Its site schema (TOML or JSON, docs/site-data.md).")] = "",
    dataset: Annotated[str, typer.Option(
        "--dataset", help="breast-cancer, digits, wine or synthetic[:classes] (without --data).")] = "breast-cancer",
    records: Annotated[int, typer.Option("--records", help="Rows of the synthetic set (0: 10000).")] = 0,
    features: Annotated[int, typer.Option("--features", help="Columns of the synthetic set (0: 20).")] = 0,
    spec: Annotated[str, typer.Option(
        "--partition", help="iid, dirichlet:α, by-column:COL or quantity-skew:β (default dirichlet:<alpha>).")] = "",
    alpha: Annotated[float, typer.Option("--alpha", help="α of the default dirichlet partition.")] = 0.5,
    sites: Annotated[int | None, typer.Option(
        "--sites", help="Number of sites (default 5; by-column: one per value).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, as for fedguard simulate.")] = DEFAULT_SEED,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share held out for testing.")] = 0.2,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw the split to this file (.svg, .png).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the partition report as JSON.")] = False,
) -> None:
    """Split the data as 'fedguard simulate' would with the same flags, and report each site's size and labels."""
    from simulations.data.options import DataOptions, cli_sites
    from simulations.data.plot import plot_partition
    from simulations.data.render import partition_table
    from simulations.data.sites import split

    options = DataOptions(dataset, data, schema, spec, alpha, records, features, cli_sites(sites, spec),
                          seed, test_fraction)
    result = split(options)
    if plot is not None:
        plot_partition(result.report, plot)
    if as_json:
        print(json.dumps(result.report.to_dict()))
        return
    console = Console()
    console.print(partition_table(result.report))
    if plot is not None:
        console.print(f"figure: {plot}")
