"""Entry point of the ``fedguard`` command.

Each package contributes its commands (``simulations.cli``, ``lifecycle.cli``,
``serving.cli``); this module mounts them and is the one place where errors
become one-line messages and documented exit codes (docs/cli.md)::

    0 ok · 1 internal error · 2 bad argument or configuration · 3 unusable state
    (home, registry, keys) · 4 not found · 5 verification failed · 6 training
    failed · 7 authentication/authorization · 8 privacy budget exceeded · 9 sites
    unavailable · 10 run stopped
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

import typer
from rich.console import Console
from rich.markup import escape

from client.cli import client_app
from coordinator.cli import coordinator_app, site_app
from coordinator.run_cli import run_app
from fedguard.verify import verify
from lifecycle.cli import models_app
from lifecycle.errors import FedguardError
from privacy.cli import privacy_app
from serving.cli import keys_app, serve
from serving.rollout.cli import deploy_app
from simulations.cli import simulate
from simulations.doctor_cli import doctor_app
from simulations.flower_cli import flower_app

app = typer.Typer(
    name="fedguard",
    help="Federated, privacy-first ML: train across sites with DP, watermark, sign, register, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("simulate")(simulate)
models_app.command("verify")(verify)
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(privacy_app, name="privacy")
app.add_typer(deploy_app, name="deploy")
app.command("serve")(serve)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(site_app, name="site")
app.add_typer(client_app, name="client")
app.add_typer(run_app, name="run")
app.add_typer(doctor_app, name="doctor")
app.add_typer(flower_app, name="flower")


def main() -> None:
    """Run the CLI, mapping fedguard errors to one line on stderr and an exit code."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    logging.basicConfig(level=os.environ.get("FEDGUARD_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    err = Console(stderr=True)
    try:
        app()
    except FedguardError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)  # '[columns]' is text
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last resort: a bug, said in one line, traceback on request
        if os.environ.get("FEDGUARD_DEBUG"):
            traceback.print_exc()
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {exc} (set FEDGUARD_DEBUG=1 for the traceback)",
                  highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
