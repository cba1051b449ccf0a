"""``fedguard predict``: score a CSV or Parquet file with a registered model, as the API would answer it.

Mounted by ``fedguard/cli.py`` as a command function (``app.command("predict")(predict)``).
Module level imports only Typer and Rich: pyarrow, ONNX Runtime and the
registry load inside the command. Errors propagate to the top-level CLI,
which prints one line and exits with the error's code (docs/serving.md,
"Batch scoring").

The admin flag
--------------
``--raw-outputs`` writes unrounded probabilities of every class whatever the
model's output policy says: the leak that output hardening exists to stop.
On the server, only an admin-scoped API key may do what an operator may do;
locally the same rule holds: the command needs an admin-scoped API key
(``--admin-key``, better the environment variable ``FEDGUARD_ADMIN_KEY``,
which stays out of the process list), authenticated against the registry's
hashed keys exactly as the server does, and the key id is recorded in the
audit event. Access to ``FEDGUARD_HOME`` alone is not enough, because
creating an admin key is itself audited (``fedguard keys create --scope admin``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from lifecycle.registry import Registry
    from serving.batch.scoring import BatchReport

console = Console()
err_console = Console(stderr=True)
RAW_WARNING = ("[bold yellow]Warning:[/bold yellow] --raw-outputs writes every class's probability at full "
               "precision, which output hardening withholds from API callers: such a file helps membership "
               "inference and model extraction. Keep it where the training data may be kept.")


class _RichProgress:
    """A Rich progress bar on stderr: one task per phase (validating, scoring)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def phase(self, name: str, total: int | None) -> None:
        """A new bar for ``name``, of ``total`` rows (``None``: not known yet, for a CSV file)."""
        self.task = self.bar.add_task(name, total=total)

    def advance(self, rows: int) -> None:
        """``rows`` more rows done in the current phase."""
        if self.task is not None:
            self.bar.advance(self.task, rows)


def predict(
    model: Annotated[str, typer.Argument(help="The model as NAME (its newest version) or NAME:VERSION.")],
    input_path: Annotated[Path, typer.Option("--input", "-i", help="The rows to score: a .csv or .parquet file "
                                             "with one column per feature (named as in the model's schema).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the predictions (Parquet); "
                                         "it appears only once every row is scored.")],
    id_column: Annotated[str | None, typer.Option(
        help="A column of the input copied to the output unchanged, to join predictions back to rows.")] = None,
    subject_column: Annotated[str | None, typer.Option(
        help="The column of data subjects' identifiers: rows of subjects who objected to the model "
        "('fedguard objections add') are left unscored. Needed when the model has objections on record.")] = None,
    environment: Annotated[str, typer.Option(
        "--env", help="The environment whose objection list applies (as 'fedguard serve --env' and "
        "'fedguard objections add --env').")] = "default",
    chunk_rows: Annotated[int, typer.Option(help="Rows read and scored at once (memory grows with it).")] = 65_536,
    raw_outputs: Annotated[bool, typer.Option(
        "--raw-outputs", help="Write full-precision probabilities of every class instead of the model's hardened "
        "outputs. Needs an admin-scoped API key.")] = False,
    admin_key: Annotated[str | None, typer.Option(
        envvar="FEDGUARD_ADMIN_KEY", show_envvar=True, show_default=False,
        help="An admin-scoped API key ('fedguard keys create --scope admin'), needed by --raw-outputs.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Score a CSV or Parquet file with a registered model, after verifying its signature.

    Every row is checked against the model's schema (columns, numbers,
    configured ranges) before any is scored; all problems are listed at once
    (exit code 2). The output holds the predicted label and the outputs the
    API would return for the model (FEDGUARD_SERVE_OUTPUTS), written
    atomically, and the run is audited (row count and file digests).
    """
    from lifecycle.audit import actors
    from lifecycle.registry import Registry
    from lifecycle.settings import get_settings
    from serving.batch.scoring import score_file
    from serving.settings import build_settings

    registry = Registry.open(get_settings())
    key_id = _admin_key_id(registry, admin_key) if raw_outputs else None
    if raw_outputs:
        err_console.print(RAW_WARNING, highlight=False)
    settings = build_settings()
    settings.check_files()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, disable=quiet, transient=False) as bar:
        report = score_file(registry, model, input_path, output, settings=settings, actor=actors.actor(),
                            id_column=id_column, chunk_rows=chunk_rows, raw_outputs=raw_outputs,
                            raw_key_id=key_id, progress=_RichProgress(bar), subject_column=subject_column,
                            environment=environment)
    _print(report, as_json)


def _admin_key_id(registry: Registry, presented: str | None) -> str:
    """The id of ``presented`` if it is a valid admin-scoped key (exit 7 otherwise)."""
    from lifecycle.errors import AuthError
    from serving.guards.keys import authenticate, require_scope

    if not presented:
        raise AuthError("--raw-outputs needs an admin-scoped API key: set FEDGUARD_ADMIN_KEY (or pass --admin-key) "
                        "to a key made with 'fedguard keys create --scope admin'")
    return require_scope(authenticate(registry, presented), "admin").key_id


def _print(report: BatchReport, as_json: bool) -> None:
    rate = report.rows / report.seconds if report.seconds > 0 else float("inf")
    if as_json:
        console.out(json.dumps({"model": report.model, "version": report.version, "rows": report.rows,
                                "output": str(report.output), "output_mode": report.output_mode,
                                "objected": report.objected, "input_sha256": report.input_sha256,
                                "output_sha256": report.output_sha256,
                                "seconds": round(report.seconds, 3)}), highlight=False)
        return
    refused = (f" {report.objected:,} row(s) of objecting subjects were left unscored (column 'objected')."
               if report.objected else "")
    err_console.print(f"Scored {report.rows:,} rows with {report.ref} ({report.output_mode} outputs) into "
                      f"'{report.output}' in {report.seconds:.1f} s ({rate:,.0f} rows/s); audited as "
                      f"model.batch_scored (output SHA-256 {report.output_sha256[:16]}…).{refused}", highlight=False)
