"""``fedguard doctor``: find and clean up what a killed fedguard process left behind.

``doctor ray`` lists the Ray processes of this home's Ray temp dir whose
driver (a ``fedguard simulate`` killed with SIGKILL, or one that crashed) is
gone, and stops them: SIGTERM, then SIGKILL after ``--grace`` seconds. Only
this user's processes of this ``FEDGUARD_HOME`` (:func:`simulations.ray_processes.ray_tmpdir`)
are considered; a running simulation's Ray, another home's and another
user's are never touched. ``fedguard simulate`` does the same before it
starts Ray.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console

from lifecycle.settings import get_settings
from simulations.ray_processes import orphaned_ray_processes, ray_tmpdir, stop_orphaned_ray

doctor_app = typer.Typer(help="Find and clean up what a killed fedguard process left behind.", no_args_is_help=True)
console = Console()


@doctor_app.command("ray")
def ray(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the orphaned processes; stop nothing.")] = False,
    grace: Annotated[float, typer.Option("--grace", help="Seconds between SIGTERM and SIGKILL.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Stop the Ray processes a killed 'fedguard simulate' of this home left running."""
    tmpdir = ray_tmpdir(get_settings().home)
    found = orphaned_ray_processes(tmpdir) if dry_run else stop_orphaned_ray(tmpdir, grace=grace)
    if as_json:
        typer.echo(json.dumps({"ray_tmpdir": str(tmpdir), "stopped": not dry_run,
                               "processes": [asdict(p) for p in found]}))
        return
    if not found:
        console.print(f"no orphaned Ray process under {tmpdir}", highlight=False)
        return
    verb = "would stop" if dry_run else "stopped"
    for process in found:
        console.print(f"{verb} {process.name} (pid {process.pid}) of {process.session}: "
                      f"driver pid {process.driver_pid} is gone", highlight=False)
