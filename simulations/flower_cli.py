"""``fedguard flower config|stop``: set up ``flwr run . local-simulation`` on a fresh machine, and stop it.

See :mod:`simulations.flower_local` and docs/simulation.md ("With Flower's own CLI").
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from simulations.flower_local import CONNECTION, NO_INSTALL_ENV, stop_local_superlink, write_local_simulation

flower_app = typer.Typer(help="Flower's own CLI (flwr run): write the local simulation connection, stop it.",
                         no_args_is_help=True)
console = Console()


@flower_app.command("config")
def config(
    num_supernodes: Annotated[int, typer.Option(
        "--num-supernodes", help="Virtual sites; at least the run config's num-sites (5 in pyproject.toml).")] = 5,
    cpus_per_site: Annotated[int, typer.Option("--cpus-per-site", help="CPU cores Ray reserves per site.")] = 1,
    name: Annotated[str, typer.Option("--name", help="The connection's name.")] = CONNECTION,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write the local simulation connection into $FLWR_HOME/config.toml (Flower ≥ 1.41 reads it there)."""
    written = write_local_simulation(name, num_supernodes=num_supernodes, cpus_per_site=cpus_per_site)
    if as_json:
        typer.echo(json.dumps({"connection": written.name, "config": str(written.config_path),
                               "command": written.command}))
        return
    console.print(f"wrote SuperLink connection '{written.name}' (the local SuperLink) to {written.config_path}",
                  highlight=False, soft_wrap=True)
    console.print(f"run it from the project's root with:\n  {written.command}", highlight=False, soft_wrap=True)
    console.print(f"[yellow]keep {NO_INSTALL_ENV}=1: without it the local SuperLink that flwr starts installs "
                  "the app's dependencies (uv sync, a CUDA torch) for every run[/yellow]", highlight=False,
                  soft_wrap=True)


@flower_app.command("stop")
def stop(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Stop the local SuperLink that 'flwr run' started for this FLWR_HOME (and its runs); nothing else."""
    pids = stop_local_superlink()
    if as_json:
        typer.echo(json.dumps({"stopped": pids}))
    elif pids:
        console.print(f"stopped the local SuperLink (pid {', '.join(map(str, pids))})", highlight=False)
    else:
        console.print("no local SuperLink of this FLWR_HOME is running", highlight=False)
