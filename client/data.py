"""The site's own data file (CSV or Parquet): read, check against the site's schema, encode for training.

A deployed site points its node config at its file (``data-path``) and at
its schema (``schema-path``, :mod:`federation.schema`); a simulated site reads
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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from client import logger
from federation.protocol import SiteRefusal
from federation.schema import CheckedTable, SchemaValidationError, SiteSchema, canonical
from federation.tabular import TabularData, file_manifest, read_csv_rows
from lifecycle.errors import ConfigurationError

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


class ContractMismatchError(ConfigurationError):
    """The site's schema does not fit the federation's model; the message names columns and labels, no data."""


@dataclass(frozen=True)
class RawTable:
    """A file's header and its cells column by column (CSV: strings; Parquet: Python scalars or None)."""

    path: Path
    header: tuple[str, ...]
    cells: dict[str, list[object]]
    num_rows: int


def read_table(path: Path) -> RawTable:
    """Read a CSV (``federation.tabular``'s reader) or a Parquet file (``pyarrow``) into columns.

    Raises
    ------
    ConfigurationError
        The file is missing, its format is unknown, or Parquet support is not installed.
    """
    if not path.is_file():
        raise ConfigurationError(f"data file '{path}' does not exist; set node config data-path to your file")
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        header, rows = read_csv_rows(path)
        cells: dict[str, list[object]] = {
            name: [row[i] if i < len(row) else "" for _, row in rows] for i, name in enumerate(header)
            if name not in header[:i]
        }
        return RawTable(path, tuple(header), cells, len(rows))
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    raise ConfigurationError(f"data file '{path}': unknown format '{suffix}'; use .csv or .parquet")


def _read_parquet(path: Path) -> RawTable:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a declared dependency
        raise ConfigurationError("reading Parquet needs pyarrow: pip install -c constraints.txt pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types for a bad file
        raise ConfigurationError(f"data file '{path}' is not a readable Parquet file ({exc})") from None
    header = tuple(str(name) for name in table.column_names)
    cells = {name: table.column(i).to_pylist() for i, name in enumerate(header)}
    return RawTable(path, header, cells, table.num_rows)


def check_file(path: Path, schema: SiteSchema) -> CheckedTable:
    """Read ``path`` and check every cell against ``schema`` (the report lists all problems; nothing raised)."""
    table = read_table(path)
    return schema.check(table.header, table.cells, table.num_rows, str(path))


def _label_map(schema: SiteSchema, labels: Sequence[str], num_classes: int) -> np.ndarray:
    """Site label index → coordinator class index (by name when the coordinator sent names)."""
    indices = tuple(str(i) for i in range(num_classes))
    names = tuple(canonical(v) for v in labels)
    if names and set(schema.label_values) == set(names) and len(names) == num_classes:
        return np.array([names.index(v) for v in schema.label_values], dtype=np.int64)
    if schema.label_values == indices:
        return np.arange(num_classes, dtype=np.int64)
    raise ContractMismatchError(
        f"this site's label-values {list(schema.label_values)} do not match the federation's "
        f"{num_classes} classes {list(names) or list(indices)}; fix 'label-values' in the site's schema"
    )


def encode(checked: CheckedTable, schema: SiteSchema, features: Sequence[str], target: str,
           num_classes: int, labels: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Features in the federation's column order (missing values imputed locally) and class indices."""
    absent = [name for name in features if name not in schema.features]
    if absent or target != schema.label:
        raise ContractMismatchError(
            f"the federation's model needs columns {list(features)} and label '{target}', but this site's "
            f"schema {'lacks ' + str(absent[:5]) if absent else 'names label ' + repr(schema.label)}; "
            "align the site's schema with the federation's"
        )
    columns = []
    for name in features:
        column = checked.values[name].copy()
        gaps = np.isnan(column)
        if gaps.any():  # only where the schema allows missing values: impute from this site's own rows
            kind = next(c.type for c in schema.columns if c.name == name)
            present = column[~gaps]
            if present.size == 0:
                fill = 0.0
            elif kind == "category":
                fill = float(np.bincount(present.astype(np.int64)).argmax())
            else:
                fill = float(present.mean())
            column[gaps] = fill
        columns.append(column)
    mapped = _label_map(schema, labels, num_classes)[checked.labels]
    return np.stack(columns, axis=1).astype(np.float32), mapped.astype(np.int64)


def load_site_data(path: Path, schema: SiteSchema, features: Sequence[str], target: str, num_classes: int,
                   labels: Sequence[str] = ()) -> TabularData:
    """The validated, encoded site data (cached per file version within the process).

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
                 tuple(labels))


@functools.lru_cache(maxsize=8)
def _load(path: Path, stamp: tuple[int, int], schema: SiteSchema, features: tuple[str, ...], target: str,
          num_classes: int, labels: tuple[str, ...]) -> TabularData:
    del stamp  # part of the cache key: an edited file is read again
    checked = check_file(path, schema)
    checked.report.raise_if_invalid()
    x, y = encode(checked, schema, features, target, num_classes, labels)
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
