"""``fedguard objections ...``: record and lift data subjects' objections to being scored by a model.

Mounted in ``fedguard/cli.py`` as ``app.add_typer(objections_app, name="objections")``.
Every command writes through :class:`~lifecycle.governance.objections.ObjectionStore`
(one transaction with its audit event, actor ``cli:<user>``); serving
replicas of the environment that share the registry refuse the subject from
their next request after ``deploy_refresh_seconds``.

Identifiers are read from ``--subject`` or, better (a shell history and the
process list keep command lines), from ``--file``: one per line, or one
column of a CSV file with a header (``--column``). They are stored only as
HMAC-SHA256 digests, and nothing here ever prints one: ``list`` shows counts,
dates, actors and reasons. Exit codes: 2 for a malformed identifier, file,
reason or environment (the message gives the line, never the value), 4 for an
unknown model.

This module imports neither torch nor FastAPI.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lifecycle.errors import ConfigurationError
from lifecycle.governance.objections import SUBJECT_ID_RULE, ObjectionStore, is_subject_id
from lifecycle.registry import Registry
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT
from lifecycle.settings import get_settings
from serving.cli import _actor

console = Console()
objections_app = typer.Typer(
    name="objections",
    help="Record, lift and count subjects' objections to being scored by a model, per environment.",
    no_args_is_help=True,
)
MAX_FILE_BYTES = 64 * 1024 * 1024
ModelArg = Annotated[str, typer.Argument(help="The model's name (see 'fedguard models list').")]
EnvOption = Annotated[str, typer.Option("--env", help="The environment whose servers refuse the subjects.")]
SubjectOption = Annotated[list[str] | None, typer.Option(
    "--subject", help="A subject identifier (repeatable). Prefer --file: command lines end up in shell history.")]
FileOption = Annotated[Path | None, typer.Option(
    "--file", help="A file of identifiers: one per line, or a CSV column named by --column.")]
ColumnOption = Annotated[str | None, typer.Option(
    "--column", help="With --file: the CSV file has a header, and this column holds the identifiers.")]
ReasonOption = Annotated[str, typer.Option(
    "--reason", help="Why (e.g. the letter's reference); never the subject's identifier: it is kept in the clear.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def _store() -> ObjectionStore:
    return ObjectionStore(Registry.open(get_settings()))


def read_subject_file(path: Path, column: str | None = None) -> list[str]:
    """The identifiers in ``path``: each non-blank line (surrounding spaces removed), or CSV column ``column``.

    Raises
    ------
    ConfigurationError
        The file is missing, too large, not UTF-8, has no identifier, lacks
        ``column``, or holds a malformed identifier (named by its line, never
        by its value).
    """
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigurationError(f"{path} is larger than {MAX_FILE_BYTES // 2**20} MiB; split it")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror or exc}; pass an existing file") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path} is not UTF-8 text; save it as UTF-8 (CSV or one identifier "
                                 "per line)") from None
    cells = _column(path, text, column) if column is not None else \
        [(n, line) for n, line in enumerate(text.splitlines(), start=1)]
    subjects: list[str] = []
    for line, cell in cells:
        value = cell.strip()
        if not value:
            continue
        if not is_subject_id(value):
            raise ConfigurationError(f"{path} line {line}: the identifier is not {SUBJECT_ID_RULE}; fix that line")
        subjects.append(value)
    if not subjects:
        raise ConfigurationError(f"{path} holds no identifier; put one per line (or name the CSV column "
                                 "with --column)")
    return subjects


def _column(path: Path, text: str, column: str) -> list[tuple[int, str]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or column not in [h.strip() for h in header]:
        raise ConfigurationError(f"{path} has no column {column!r} in its header line; name the column that "
                                 "holds the identifiers")
    index = [h.strip() for h in header].index(column)
    return [(reader.line_num, row[index] if index < len(row) else "") for row in reader]


def _subjects(subjects: list[str] | None, file: Path | None, column: str | None) -> list[str]:
    if bool(subjects) == (file is not None):
        raise ConfigurationError("give the subjects with --subject ID (repeatable) or --file FILE, not both")
    if column is not None and file is None:
        raise ConfigurationError("--column goes with --file")
    return read_subject_file(file, column) if file is not None else list(subjects or [])


def _emit(data: dict[str, Any]) -> None:
    console.out(json.dumps(data, default=str), highlight=False)


def _change(verb: str, model: str, env: str, subjects: list[str], reason: str, as_json: bool) -> None:
    """Add or remove ``subjects`` on ``model``'s list in ``env`` and say what changed (``verb``: add, remove)."""
    store = _store()
    change = store.add if verb == "add" else store.remove
    changed = change(model, env, subjects, reason=reason, actor=_actor())
    total = store.count(model, env)
    unchanged = len(set(subjects)) - changed
    if verb == "add":
        result = {"model": model, "environment": env, "added": changed, "already_listed": unchanged, "total": total}
        text = f"{changed} subject exception(s) added, {unchanged} already listed; {total} in all."
    else:
        result = {"model": model, "environment": env, "removed": changed, "not_listed": unchanged, "total": total}
        text = f"{changed} subject exception(s) removed, {unchanged} were not listed; {total} remain."
    if as_json:
        _emit(result)
        return
    console.print(f"{model} ({env}): {text}", highlight=False, markup=False)


@objections_app.command("add")
def add(
    model: ModelArg,
    reason: ReasonOption,
    subject: SubjectOption = None,
    file: FileOption = None,
    column: ColumnOption = None,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Record subjects' objections: servers of the environment refuse them, unscored, from then on."""
    _change("add", model, env, _subjects(subject, file, column), reason, as_json)


@objections_app.command("remove")
def remove(
    model: ModelArg,
    reason: ReasonOption,
    subject: SubjectOption = None,
    file: FileOption = None,
    column: ColumnOption = None,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """Lift subjects' objections (e.g. consent given again): servers score them again."""
    _change("remove", model, env, _subjects(subject, file, column), reason, as_json)


@objections_app.command("list")
def list_(
    model: ModelArg,
    env: EnvOption = DEFAULT_ENVIRONMENT,
    as_json: JsonOption = False,
) -> None:
    """How many subjects objected, added when, by whom and why; never an identifier."""
    summary = _store().summary(model, env)
    if as_json:
        _emit(summary.to_dict())
        return
    console.print(f"{model} ({env}): {summary.count} subject(s) objected.", highlight=False, markup=False)
    if not summary.batches:
        return
    table = Table("added (UTC)", "by", "reason", "still listed")
    for batch in summary.batches:
        table.add_row(batch.added_at.strftime("%Y-%m-%d %H:%M:%S"), escape(batch.actor), escape(batch.reason),
                      str(batch.count))
    console.print(table)
