"""Tabular data files: read, validate against the federation's schema, fingerprint.

Used by a site for its local data and by the coordinator for its held-out
evaluation set. Records never leave the site. What leaves is the *manifest*: the SHA-256 of
the data file and its row count, which the ML-BOM records so that an auditor
can later check which exact data a model was trained on without seeing it.
Validation happens before any training so that a malformed file fails loudly
with the row and column at fault instead of silently training on garbage.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifecycle.artifacts import file_sha256
from lifecycle.description import DataSchema
from lifecycle.errors import ConfigurationError, InputValidationError


def load_schema(path: Path) -> DataSchema:
    """Read a schema from JSON or TOML (keys ``features``, ``target``, ``labels``)."""
    text = read_utf8_text(path, "schema file")
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        schema = DataSchema(
            tuple(str(f) for f in raw["features"]), str(raw["target"]), tuple(str(x) for x in raw["labels"])
        )
    except FileNotFoundError:
        raise ConfigurationError(f"schema file '{path}' does not exist") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"schema file '{path}' is invalid ({exc}); it needs 'features', 'target' and 'labels'"
        ) from None
    if len(schema.labels) < 2:
        raise ConfigurationError(f"schema file '{path}' lists {len(schema.labels)} class labels; a federation's "
                                 "schema needs at least two")
    return schema


@dataclass(frozen=True)
class TabularData:
    """A validated dataset: features, integer labels and the file's manifest."""

    features: np.ndarray
    labels: np.ndarray
    manifest: str
    path: Path

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])


def file_manifest(path: Path) -> str:
    """SHA-256 of the file's bytes: the data manifest recorded in the ML-BOM."""
    return file_sha256(path)


def _parse_row(row: list[str], columns: list[int], line: int, header: list[str]) -> list[float]:
    values = []
    for col in columns:
        raw = row[col].strip() if col < len(row) else ""
        try:
            value = float(raw)
        except ValueError:
            raise InputValidationError(
                f"line {line}, column '{header[col]}': '{raw}' is not a number"
            ) from None
        if not math.isfinite(value):
            raise InputValidationError(f"line {line}, column '{header[col]}': value {raw} is not finite")
        values.append(value)
    return values


def read_utf8_text(path: Path, what: str) -> str:
    """The text of a file that must be UTF-8 (a leading byte-order mark, as Excel writes, is dropped).

    A file in another encoding (Latin-1, Windows-1252, UTF-16) is refused with
    its name, the line of the first undecodable byte and the encoding
    expected, instead of surfacing as a bare ``UnicodeDecodeError``: the
    operator re-saves the file as UTF-8 and checks again.

    Raises
    ------
    ConfigurationError
        The file does not exist.
    InputValidationError
        The file is not valid UTF-8.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} '{path}' does not exist") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputValidationError(
            f"{what} '{path}' is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line} cannot be decoded); "
            "fedguard reads UTF-8 only: re-save the file as UTF-8 and try again"
        ) from None


def read_csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (stripped) and the non-empty rows of a CSV, each with its line number.

    The one CSV reader of fedguard: :func:`load_csv` parses its cells as
    numbers, the site agent (``client.data``) validates them against the
    site's schema.

    Raises
    ------
    ConfigurationError
        The file does not exist.
    InputValidationError
        The file is not UTF-8 (:func:`read_utf8_text`).
    """
    if not path.is_file():
        raise ConfigurationError(f"data file '{path}' does not exist; pass the path of your CSV")
    reader = csv.reader(io.StringIO(read_utf8_text(path, "data file"), newline=""))
    header = [h.strip() for h in next(reader, [])]
    rows = [(line, row) for line, row in enumerate(reader, start=2) if row]
    return header, rows


CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class RawTable:
    """A file's header and its cells column by column (CSV: strings; Parquet: Python scalars or None)."""

    path: Path
    header: tuple[str, ...]
    cells: dict[str, list[object]]
    num_rows: int


def read_table(path: Path) -> RawTable:
    """Read a CSV (:func:`read_csv_rows`) or a Parquet file (``pyarrow``) into columns, cells as they are.

    Raises
    ------
    ConfigurationError
        The file is missing, its format is unknown, or Parquet support is not installed.
    """
    if not path.is_file():
        raise ConfigurationError(f"data file '{path}' does not exist; pass the path of your CSV or Parquet file")
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


def load_csv(path: Path, features: list[str], target: str, num_classes: int) -> TabularData:
    """Read and validate a CSV (header row; feature columns; integer label column).

    Raises
    ------
    ConfigurationError
        The file is missing or lacks a required column.
    InputValidationError
        A value is not a finite number or a label is out of range (names line and column).
    """
    header, data_rows = read_csv_rows(path)
    missing = [name for name in [*features, target] if name not in header]
    if missing:
        raise ConfigurationError(
            f"'{path}' lacks columns {missing[:5]}{'…' if len(missing) > 5 else ''}; "
            f"the federation's schema needs {len(features)} features and label column '{target}'"
        )
    columns = [header.index(name) for name in features]
    label_col = header.index(target)
    rows, labels = [], []
    for line, row in data_rows:
        rows.append(_parse_row(row, columns, line, header))
        label = _parse_row(row, [label_col], line, header)[0]
        if label != int(label) or not 0 <= label < num_classes:
            raise InputValidationError(
                f"line {line}: label {label:g} is not a class index in 0..{num_classes - 1}"
            )
        labels.append(int(label))
    if not rows:
        raise InputValidationError(f"'{path}' has no data rows")
    return TabularData(
        np.asarray(rows, dtype=np.float32), np.asarray(labels, dtype=np.int64), file_manifest(path), path
    )


def write_csv(path: Path, features: np.ndarray, labels: np.ndarray, names: list[str], target: str) -> None:
    """Write features and labels as a site CSV (used by simulations and tests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, target])
        for row, label in zip(features.tolist(), labels.tolist(), strict=True):
            writer.writerow([*(repr(float(v)) for v in row), int(label)])
