"""The site's own data file (CSV or Parquet): read, check against the site's schema, encode for training.

A deployed site points its node config at its file (``data-path``) and at
its schema (``schema-path``): a full site schema (:mod:`federation.schema`) or
a mapping of its export onto the federation's data contract, which arrives
with the run (:mod:`federation.mapping`, the same check as ``fedguard client
check --bundle``); a simulated site reads
``<data-dir>/site-<partition>.csv`` and accepts what the implicit schema
accepts (finite numeric features, labels 0..k-1). Either way the file is
checked *completely* before anything is trained, and a bad file fails the
message with a refusal for the coordinator (``data-invalid``: the columns and
kinds of problem, never a value or a row) while the site's log gets every
problem (:func:`site_data_mod`). A schema that does not fit the federation's
model raises :class:`ContractMismatchError`, whose message names columns and
labels only (``client.refusal`` sends it as ``contract-mismatch``).

The records never leave this process: what leaves is the manifest (SHA-256 of
the file) and the row count (``federation.tabular``).

Records the site withdrew (``fedguard client withdraw``, :mod:`client.consent`)
are dropped from the table right after it is read, before the check, the
encoding and every statistic: training, evaluation, the identity reply's row
count and the reference histograms all see the file without them. The rows
are matched on the schema's ``id-column`` (a mapping schema: the column that
holds the contract's ``record-id``); a site with withdrawn records and no id
column refuses to train rather than train on them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client import logger
from federation.consent import canonical_id
from federation.contract import DataContract
from federation.mapping import SiteMapping, check_site_table
from federation.protocol import SiteRefusal
from federation.schema import (
    CheckedTable,
    ContractMismatchError,
    SchemaValidationError,
    SiteSchema,
    encode,
    is_missing,
)
from federation.tabular import CSV_SUFFIXES, PARQUET_SUFFIXES, RawTable, TabularData, file_manifest, read_table
from lifecycle.errors import ConfigurationError

__all__ = ["CSV_SUFFIXES", "PARQUET_SUFFIXES", "ContractMismatchError", "RawTable", "check_file", "data_refusal",
           "encode", "exclude_records", "id_column_of", "load_site_data", "read_table", "site_data_mod"]


def check_file(path: Path, schema: SiteSchema | SiteMapping, contract: DataContract | None = None) -> CheckedTable:
    """Read ``path`` and check every cell against ``schema`` (through ``contract`` for a mapping; nothing raised)."""
    return _check(path, schema, contract)[0]


def _check(path: Path, schema: SiteSchema | SiteMapping, contract: DataContract | None,
           exclude: frozenset[str] = frozenset()) -> tuple[CheckedTable, SiteSchema]:
    table = read_table(path)
    if exclude:
        table, dropped = exclude_records(table, id_column_of(schema, contract), exclude)
        logger.info("site data '%s': %d withdrawn record(s) excluded (%d withdrawn in all)", path, dropped,
                    len(exclude))
    return check_site_table(table.header, table.cells, table.num_rows, str(path), schema, contract)


def id_column_of(schema: SiteSchema | SiteMapping, contract: DataContract | None) -> str | None:
    """The column of the site's file that holds record ids: ``id-column``, or the contract's ``record-id`` mapped."""
    if isinstance(schema, SiteSchema):
        return schema.id_column
    if contract is not None and contract.record_id is not None:
        return schema.site_column(contract.record_id)
    return None


def exclude_records(table: RawTable, id_column: str | None, exclude: frozenset[str]) -> tuple[RawTable, int]:
    """``table`` without the rows whose id is in ``exclude`` (canonical ids), and how many were dropped.

    Raises
    ------
    ConfigurationError
        The site withdrew records but its schema names no id column, or the file lacks it: training
        would otherwise use records whose consent was withdrawn.
    """
    if not exclude:
        return table, 0
    if id_column is None:
        raise ConfigurationError(
            "this site withdrew records, but its schema names no id column to exclude them by; add "
            "id-column = \"<column>\" to the site's schema (a mapping schema: map the contract's record-id)")
    ids = table.cells.get(id_column)
    if ids is None:
        raise ConfigurationError(f"this site withdrew records, but its file '{table.path}' has no id column "
                                 f"'{id_column}' to exclude them by; nothing was trained")
    keep = [i for i, value in enumerate(ids) if is_missing(value) or canonical_id(value) not in exclude]
    if len(keep) == table.num_rows:
        return table, 0
    cells = {name: [column[i] for i in keep] for name, column in table.cells.items()}
    return RawTable(table.path, table.header, cells, len(keep)), table.num_rows - len(keep)


def load_site_data(path: Path, schema: SiteSchema | SiteMapping, features: Sequence[str], target: str,
                   num_classes: int, labels: Sequence[str] = (), contract: DataContract | None = None,
                   exclude: frozenset[str] = frozenset()) -> TabularData:
    """The validated, encoded site data (cached per file version and exclusion list within the process).

    The one path from a site's file to model input, for ``fedguard client
    check --bundle`` and training alike: the withdrawn records in ``exclude``
    (canonical ids, :mod:`client.consent`) dropped, ``schema`` checked
    (through the federation's ``contract`` when it is a mapping), then
    :func:`encode`.

    Raises
    ------
    SchemaValidationError
        The file does not match the schema; its report lists every problem.
    ConfigurationError
        The file is missing or unreadable, or the schema does not fit the federation's model.
    """
    try:
        stat = path.stat()
    except OSError:
        raise ConfigurationError(f"data file '{path}' does not exist; set node config data-path to your file") from None
    return _load(path.resolve(), (stat.st_mtime_ns, stat.st_size), schema, tuple(features), target, num_classes,
                 tuple(labels), contract, exclude)


@functools.lru_cache(maxsize=1024)  # a simulation's Ray actor serves every virtual site: one entry per site file
def _load(path: Path, stamp: tuple[int, int], schema: SiteSchema | SiteMapping, features: tuple[str, ...],
          target: str, num_classes: int, labels: tuple[str, ...], contract: DataContract | None,
          exclude: frozenset[str]) -> TabularData:
    del stamp  # part of the cache key: an edited file is read again
    checked, effective = _check(path, schema, contract, exclude)
    checked.report.raise_if_invalid()
    x, y = encode(checked, effective, features, target, num_classes, labels)
    logger.info("site data '%s': %d rows match schema %s", path, checked.report.rows, schema.source)
    return TabularData(x, y, file_manifest(path), path)


def data_refusal(exc: SchemaValidationError) -> SiteRefusal:
    """What the coordinator learns of a bad file: the columns and kinds of problem (no value, no row)."""
    problems = sorted({f"{p.column} ({p.kind})" for p in exc.report.problems})
    shown = ", ".join(problems[:6]) + (", …" if len(problems) > 6 else "")
    return SiteRefusal("data-invalid", f"the site's data does not match its schema: {shown}; "
                                       "nothing was trained (details in the site's log)")


def site_data_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Turn a bad data file into a ``data-invalid`` refusal; every problem goes to the site's log."""
    try:
        return call_next(msg, context)
    except SchemaValidationError as exc:
        logger.error("site data failed validation; nothing was trained or sent:\n%s", exc)
        return Message(data_refusal(exc).to_error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), reply_to=msg)
