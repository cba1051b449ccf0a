"""Entry point of the ``fedguard`` command.

Each package contributes its commands (``simulations.cli``, ``lifecycle.cli``,
``serving.cli``); this module mounts them and is the one place where errors
become one-line messages and documented exit codes (docs/cli.md)::

    0 ok · 1 internal error · 2 bad argument or configuration · 3 unusable state
    (home, registry, keys) · 4 not found · 5 verification failed · 6 training
    failed · 7 authentication/authorization · 8 privacy budget exceeded · 9 sites
    unavailable · 10 run stopped · 11 refused by governance

Start-up is lazy: :data:`COMMANDS` names each command's module and help line,
and :class:`LazyGroup` imports a command's module only when that command
runs (or its own ``--help`` is asked for). ``fedguard --help`` imports no
package of ours beyond this one and :mod:`lifecycle.errors`. Each command
module follows the same rule one level down: torch, Flower, Ray, Opacus,
TenSEAL, FastAPI and uvicorn are imported inside the command function that
needs them, never at module level (``tests/fedguard/test_cli_startup.py``
checks it in a fresh interpreter).

To add a command: write it in its package's ``cli.py`` (heavy imports inside
the function body), add one :class:`Entry` to :data:`COMMANDS`, and keep its
help line equal to the sub-app's own (a test compares them).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from difflib import get_close_matches
from functools import cache
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from lifecycle.errors import FedguardError


@dataclass(frozen=True)
class Entry:
    """One top-level command: where it lives and the help line ``fedguard --help`` shows without importing it.

    ``target`` is ``"module:attribute"``, a :class:`typer.Typer` sub-app or a
    command function. ``extra`` adds commands to a sub-app from modules that
    its own package may not import (DESIGN §3): ``{"verify":
    "fedguard.verify:verify"}`` adds ``fedguard models verify``.
    """

    target: str
    help: str
    extra: dict[str, str] = field(default_factory=dict)


COMMANDS: dict[str, Entry] = {
    "simulate": Entry("simulations.cli:simulate",
                      "Train a model across simulated sites with DP, then watermark, sign and register it."),
    "new": Entry("fedguard.new:new",
                 "Scaffold a Flower app with your own PyTorch model (pyproject, model, data loader, job file)."),
    "data": Entry("simulations.data.cli:data_app",
                  "Preview how a simulation splits its data across virtual sites (no training)."),
    "retrain": Entry("simulations.retrain:retrain",
                     "Relaunch a version's job without the data withdrawn from it; the new version supersedes it."),
    "models": Entry("lifecycle.cli:models_app", "Inspect and verify registered models.",
                    extra={"verify": "fedguard.verify:verify",
                           "promote": "lifecycle.governance.stages_cli:promote",
                           "demote": "lifecycle.governance.stages_cli:demote",
                           "history": "lifecycle.governance.stages_cli:history",
                           "approve": "lifecycle.governance.stages_cli:approve",
                           "approvals": "lifecycle.governance.stages_cli:approvals"}),
    "operator": Entry("lifecycle.governance.stages_cli:operator_app",
                      "Create and show your Ed25519 approver key, which signs approvals and overrides."),
    "policy": Entry("lifecycle.governance.cli:policy_app",
                    "Declare a model's promotion policy (criteria per stage), show it and its history."),
    "keys": Entry("serving.cli:keys_app", "Create, list and revoke API keys for the serving tier (stored hashed)."),
    "watermark": Entry("watermark.cli:watermark_app",
                       "Verify a model's watermark through a running fedguard server (admin key)."),
    "audit": Entry("lifecycle.audit.cli:audit_app",
                   "Verify the audit trail (hash chain and signed checkpoints); sign a checkpoint.",
                   extra={"privacy": "simulations.privacy_audit:audit_privacy"}),
    "privacy": Entry("privacy.cli:privacy_app", "Inspect privacy budgets: spend per site, caps, remaining ε."),
    "deploy": Entry("serving.rollout.cli:deploy_app",
                    "Roll model versions out (canary, shadow, blue/green), roll back, and kill or revive a model."),
    "objections": Entry("serving.objections_cli:objections_app",
                        "Record, lift and count subjects' objections to being scored by a model, per environment."),
    "serve": Entry("fedguard.console:serve",
                   "Serve every registered model as deployed, after verifying each signature."),
    "console": Entry("fedguard.console:console",
                     "Serve the operator console alone (no model) at /console: runs, privacy, models, audit, sites."),
    "predict": Entry("serving.batch.cli:predict",
                     "Score a CSV or Parquet file with a registered model, after verifying its signature."),
    "coordinator": Entry("coordinator.cli:coordinator_app",
                         "Create and run a federation's coordinator (SuperLink behind a mutual-TLS gateway)."),
    "site": Entry("coordinator.cli:site_app",
                  "Enrol sites, rotate or revoke their credentials, list them, record consent withdrawals."),
    "client": Entry("client.cli:client_app",
                    "The site agent: run it, check the site's data, inspect its audit log, withdraw consent."),
    "run": Entry("coordinator.run_cli:run_app",
                 "Submit federated runs to the coordinator's SuperLink and follow them."),
    "experiment": Entry("simulations.experiments.cli:experiment_app",
                        "Run grids of simulations as Ray Tune trials (resumable), and report them (HTML, figures)."),
    "doctor": Entry("simulations.doctor_cli:doctor_app",
                    "Find and clean up what a killed fedguard process left behind."),
    "flower": Entry("simulations.flower_cli:flower_app",
                    "Flower's own CLI (flwr run): write the local simulation connection, stop it."),
}
"""Every top-level command, in the order ``fedguard --help`` lists them."""


def _root() -> None:
    """Federated, privacy-first ML: train across sites with DP, watermark, sign, register, serve."""


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@cache
def load_command(name: str) -> click.Command:
    """Import the module of top-level command ``name`` and build its click command (once per process).

    The command is mounted on a throw-away parent exactly as an eager
    ``app.add_typer(sub_app, name=...)`` or ``app.command(name)(function)``
    would mount it, so options, help and completion settings are the same.
    """
    entry = COMMANDS[name]
    target = _resolve(entry.target)
    parent = typer.Typer(add_completion=False)
    parent.callback()(_root)
    if isinstance(target, typer.Typer):
        for sub, where in entry.extra.items():
            target.command(sub)(_resolve(where))
        parent.add_typer(target, name=name)
    else:
        parent.command(name)(target)
    group = typer.main.get_command(parent)
    assert isinstance(group, click.Group)
    return group.commands[name]


class LazyGroup(TyperGroup):
    """The top-level group: lists :data:`COMMANDS` from the table, imports one only to run it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Command names in the table's order (nothing imported)."""
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """A help-only stand-in for ``cmd_name`` (name and help line), for the ``fedguard --help`` listing."""
        entry = COMMANDS.get(cmd_name)
        return None if entry is None else click.Command(cmd_name, help=entry.help, short_help=entry.help)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                            list[str]]:
        """The real command named by ``args[0]``, imported now; a usage error with a suggestion otherwise."""
        name = click.utils.make_str(args[0])
        if name in COMMANDS:
            return name, load_command(name), args[1:]
        message = f"No such command {name!r}."
        matches = get_close_matches(name, list(COMMANDS))
        if matches:
            message = message.rstrip(".") + ". Did you mean " + ", ".join(f"{m!r}" for m in matches) + "?"
        ctx.fail(message)


app = typer.Typer(
    name="fedguard",
    cls=LazyGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.callback()(_root)


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
