"""The site's schema file: what its data file must look like, and the check that reports every problem.

A site operator describes the columns of the file the site trains on in a
flat TOML file (hyphenated keys, docs/site-data.md)::

    label = "diagnosis"
    label-values = ["benign", "malignant"]
    extra-columns = "error"              # or "ignore"
    id-column = "patient_id"             # optional: the record id, never a feature

    [columns]
    age = { type = "int", min = 18, max = 110 }
    bmi = { type = "float", min = 10.0, max = 80.0, missing = true }
    sex = { type = "category", values = ["F", "M"] }
    smoker = { type = "bool" }

:meth:`SiteSchema.check` reads every cell once and collects *all* problems
(missing and extra columns, type errors, out-of-range values, missing
values, unknown labels) with row counts and the first row numbers, before
anything is trained: an operator fixes a file in one pass instead of one
error per attempt. Problems name columns and rows, never values, so the
report itself leaks no record even if a log is shipped elsewhere.
:func:`encode` turns a checked table into model input, the same way at a
site and for the coordinator's reference set. The federation's data contract
(:mod:`federation.contract`) is written in this format too, and a site
schema without ``[columns]`` maps onto it (:mod:`federation.mapping`).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federation.tabular import read_utf8_text
from lifecycle.errors import ConfigurationError, InputValidationError

TYPES = ("int", "float", "category", "bool")
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})
TRUE_TOKENS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_TOKENS = frozenset({"false", "f", "no", "n", "0"})
EXTRA_COLUMNS = ("error", "ignore")
FIRST_ROWS = 5
_COLUMN_KEYS = frozenset({"type", "min", "max", "values", "missing", "unit"})
_TOP_KEYS = frozenset({"label", "label-values", "extra-columns", "columns", "id-column"})


class SchemaValidationError(InputValidationError):
    """The site's data file does not match its schema; ``report`` lists every problem."""

    def __init__(self, message: str, report: ValidationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Column:
    """One declared column: its type, bounds, allowed values and whether it may be empty."""

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    missing: bool = False
    unit: str | None = None
    """What a number is measured in (``mm``, ``mg/dL``): documentation, and named when a value is out of range."""


@dataclass(frozen=True)
class Problem:
    """One kind of problem in one column: how many rows, and the first few (1-based data rows)."""

    column: str
    kind: str
    detail: str
    count: int = 0
    rows: tuple[int, ...] = ()

    def describe(self) -> str:
        if not self.rows:
            return f"column '{self.column}': {self.detail}"
        shown = ", ".join(str(r) for r in self.rows) + (", …" if self.count > len(self.rows) else "")
        return f"column '{self.column}': {self.count} row(s) {self.detail} (rows {shown})"

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "detail": self.detail, "count": self.count,
                "rows": list(self.rows)}


@dataclass(frozen=True)
class ValidationReport:
    """Every problem found in one file, plus totals."""

    source: str
    rows: int
    problems: tuple[Problem, ...]
    bad_rows: int
    against: str = "the site's schema"
    """What the file was checked against, as the summary names it."""
    retry: str = "fedguard client check --data FILE --schema SCHEMA.toml"
    """The command that checks the file again, as the summary suggests it."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"'{self.source}': {self.rows} rows match {self.against}"
        lines = [f"'{self.source}' does not match {self.against}: {len(self.problems)} problem(s), "
                 f"{self.bad_rows} of {self.rows} rows affected"]
        lines += [f"  - {p.describe()}" for p in self.problems]
        lines.append(f"fix the file or the schema, then check again with '{self.retry}'")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "ok": self.ok, "rows": self.rows, "bad_rows": self.bad_rows,
                "problems": [p.to_dict() for p in self.problems]}

    def raise_if_invalid(self) -> None:
        if not self.ok:
            raise SchemaValidationError(self.summary(), self)


@dataclass(frozen=True)
class CheckedTable:
    """Parsed columns (float64, NaN where missing; categories and labels as value indices) and the report."""

    values: dict[str, np.ndarray]
    labels: np.ndarray
    report: ValidationReport
    bad: frozenset[int] = frozenset()
    """The 1-based rows with at least one problem (``report.bad_rows`` counts them)."""


def canonical(value: object) -> str:
    """The text a category or label value compares as (``1``, ``1.0`` and ``"1"`` are one value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
        return str(int(number)) if math.isfinite(number) and number.is_integer() else repr(number)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else text


def is_missing(value: object) -> bool:
    """Whether a cell counts as missing: ``None``, NaN, or one of :data:`MISSING_TOKENS` (any case, spaces ignored)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and value.strip().lower() in MISSING_TOKENS


def _number(value: object) -> float | None:
    """A finite-or-infinite float from a CSV string or a Parquet scalar; None when not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def parse_cell(column: Column, value: object) -> tuple[float, str | None]:
    """The cell as a float (category: index of its value), or NaN and the problem kind."""
    if column.type == "bool":
        if isinstance(value, bool):
            return float(value), None
        text = canonical(value).lower()
        if text in TRUE_TOKENS or text in FALSE_TOKENS:
            return float(text in TRUE_TOKENS), None
        return math.nan, "type"
    if column.type == "category":
        key = canonical(value)
        return (float(column.values.index(key)), None) if key in column.values else (math.nan, "not-allowed")
    number = _number(value)
    if number is None or not math.isfinite(number):
        return math.nan, "type"
    if column.type == "int" and not number.is_integer():
        return math.nan, "type"
    if column.min is not None and number < column.min:
        return math.nan, "below-min"
    if column.max is not None and number > column.max:
        return math.nan, "above-max"
    return number, None


_TYPE_NAMES = {"int": "an integer", "float": "a finite number", "bool": "a boolean"}


def _detail(column: Column, kind: str) -> str:
    unit = f" {column.unit}" if column.unit else ""
    return {
        "type": f"not {_TYPE_NAMES.get(column.type, column.type)}",
        "below-min": f"below min {column.min:g}{unit}" if column.min is not None else "below min",
        "above-max": f"above max {column.max:g}{unit}" if column.max is not None else "above max",
        "not-allowed": f"not one of the {len(column.values)} allowed values",
        "missing": "missing a value (the schema does not allow missing values here)",
    }[kind]


@dataclass
class _Tally:
    rows: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    bad: set[int] = field(default_factory=set)

    def add(self, column: str, kind: str, row: int) -> None:
        self.rows.setdefault((column, kind), []).append(row)
        self.bad.add(row)


@dataclass(frozen=True)
class SiteSchema:
    """The columns a site's file must have, its label column and the label's values (in class order)."""

    columns: tuple[Column, ...]
    label: str
    label_values: tuple[str, ...]
    extra_columns: str = "error"
    source: str = "<schema>"
    id_column: str | None = None
    """The column holding each record's identifier (``id-column``): checked (present, unique), never a feature.

    A site that withdraws records (``fedguard client withdraw --records``)
    needs it: its agent excludes the rows whose id was withdrawn.
    """

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"schema '{self.source}': column names must be unique")
        if self.id_column is not None and self.id_column in (*names, self.label):
            raise ConfigurationError(f"schema '{self.source}': id-column '{self.id_column}' is also a feature or "
                                     "the label; a record id is never trained on: declare it only with id-column")
        if self.label in names:
            raise ConfigurationError(f"schema '{self.source}': the label column '{self.label}' is also "
                                     "declared under [columns]; declare it only with 'label' and 'label-values'")
        if len(self.label_values) < 2 or len(set(self.label_values)) != len(self.label_values):
            raise ConfigurationError(f"schema '{self.source}': 'label-values' needs at least two distinct values")
        if self.extra_columns not in EXTRA_COLUMNS:
            raise ConfigurationError(f"schema '{self.source}': extra-columns must be one of {EXTRA_COLUMNS}")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @classmethod
    def load(cls, path: Path) -> SiteSchema:
        """Read and check a schema file (see the module docstring for the format)."""
        text = read_utf8_text(path, "schema file")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"schema file '{path}' is not valid TOML: {exc}") from None
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "<schema>") -> SiteSchema:
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            raise ConfigurationError(f"schema '{source}': unknown keys {sorted(unknown)}; "
                                     f"known: {', '.join(sorted(_TOP_KEYS))}")
        if "label" not in raw or "label-values" not in raw or not isinstance(raw.get("columns"), dict):
            raise ConfigurationError(f"schema '{source}' needs 'label', 'label-values' and a [columns] table")
        columns = tuple(_column(name, spec, source) for name, spec in raw["columns"].items())
        if not columns:
            raise ConfigurationError(f"schema '{source}' declares no feature columns")
        id_column = raw.get("id-column")
        if id_column is not None and (not isinstance(id_column, str) or not id_column.strip()):
            raise ConfigurationError(f"schema '{source}': id-column must be a column name, e.g. "
                                     "id-column = \"patient_id\"")
        return cls(columns, str(raw["label"]), tuple(canonical(v) for v in raw["label-values"]),
                   str(raw.get("extra-columns", "error")), source, id_column.strip() if id_column else None)

    @classmethod
    def implicit(cls, features: Sequence[str], label: str, num_classes: int) -> SiteSchema:
        """What a site without a schema file accepts: finite numeric features, labels 0..k-1 (simulation)."""
        return cls(tuple(Column(name, "float") for name in features), label,
                   tuple(str(i) for i in range(num_classes)), "ignore", "<implicit>")

    def check(self, header: Sequence[str], cells: Mapping[str, Sequence[object]], num_rows: int,
              source: str) -> CheckedTable:
        """Parse every declared column of a table and report every problem (nothing raised here)."""
        problems: list[Problem] = []
        present = set(header)
        seen: set[str] = set()
        for name in header:
            if name in seen:
                problems.append(Problem(name, "duplicate-column", "appears more than once in the header"))
            seen.add(name)
        declared = (*self.features, self.label, *([self.id_column] if self.id_column else []))
        for name in declared:
            if name not in present:
                problems.append(Problem(name, "missing-column", "is declared in the schema but absent from the file"))
        if self.extra_columns == "error":
            for name in header:
                if name not in declared:
                    problems.append(Problem(name, "extra-column", "is in the file but not declared in the schema "
                                            "(declare it, or set extra-columns = \"ignore\")"))
        if num_rows == 0:
            problems.append(Problem("*", "no-rows", "the file has no data rows"))
        tally = _Tally()
        values = {c.name: self._parse_column(c, cells.get(c.name), num_rows, tally) for c in self.columns}
        labels = self._parse_labels(cells.get(self.label), num_rows, tally)
        for (column, kind), rows in tally.rows.items():
            spec = next((c for c in self.columns if c.name == column), None)
            detail = (_detail(spec, kind) if spec is not None else
                      "missing a label" if kind == "missing" else
                      f"with a label not among the {len(self.label_values)} label-values")
            problems.append(Problem(column, kind, detail, len(rows), tuple(rows[:FIRST_ROWS])))
        bad = set(tally.bad)
        if self.id_column is not None and self.id_column in present:
            from federation.contract import record_id_problems  # the contract's record-id check, one rule

            id_problems, id_rows = record_id_problems(self.id_column, cells.get(self.id_column))
            problems += id_problems
            bad |= id_rows
        report = ValidationReport(source, num_rows, tuple(problems), len(bad))
        return CheckedTable(values, labels, report, frozenset(bad))

    def _parse_column(self, column: Column, cells: Sequence[object] | None, num_rows: int,
                      tally: _Tally) -> np.ndarray:
        out = np.full(num_rows, math.nan)
        if cells is None:
            return out
        for index, value in enumerate(cells):
            if is_missing(value):
                if not column.missing:
                    tally.add(column.name, "missing", index + 1)
                continue
            out[index], kind = parse_cell(column, value)
            if kind is not None:
                tally.add(column.name, kind, index + 1)
        return out

    def _parse_labels(self, cells: Sequence[object] | None, num_rows: int, tally: _Tally) -> np.ndarray:
        out = np.full(num_rows, -1, dtype=np.int64)
        if cells is None:
            return out
        for index, value in enumerate(cells):
            if is_missing(value):
                tally.add(self.label, "missing", index + 1)
                continue
            key = canonical(value)
            if key in self.label_values:
                out[index] = self.label_values.index(key)
            else:
                tally.add(self.label, "unknown-label", index + 1)
        return out


class ContractMismatchError(ConfigurationError):
    """A site's schema does not fit the federation's model; the message names columns and labels, never data.

    The site sends its message to the coordinator as a ``contract-mismatch``
    refusal (``client.refusal``), so it must stay free of cell values.
    """


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


def _column(name: str, spec: object, source: str) -> Column:
    if not isinstance(spec, dict):
        raise ConfigurationError(f"schema '{source}': column '{name}' must be a table such as "
                                 "{ type = \"float\", min = 0 }")
    unknown = set(spec) - _COLUMN_KEYS
    if unknown:
        raise ConfigurationError(f"schema '{source}': column '{name}' has unknown keys {sorted(unknown)}; "
                                 f"known: {', '.join(sorted(_COLUMN_KEYS))}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigurationError(f"schema '{source}': column '{name}' needs type = one of {', '.join(TYPES)}")
    values = tuple(canonical(v) for v in spec.get("values", []))
    if kind == "category" and len(values) < 1:
        raise ConfigurationError(f"schema '{source}': category column '{name}' needs 'values'")
    if kind != "category" and values:
        raise ConfigurationError(f"schema '{source}': 'values' is for category columns; '{name}' is {kind}")
    low, high = _bound(spec, "min", name, source), _bound(spec, "max", name, source)
    if (low is not None or high is not None) and kind not in ("int", "float"):
        raise ConfigurationError(f"schema '{source}': min/max apply to int and float columns, not '{name}'")
    if low is not None and high is not None and low > high:
        raise ConfigurationError(f"schema '{source}': column '{name}' has min > max")
    unit = spec.get("unit")
    if unit is not None and (not isinstance(unit, str) or not unit.strip()):
        raise ConfigurationError(f"schema '{source}': column '{name}': unit must be a text such as \"mm\"")
    return Column(name, kind, low, high, values, bool(spec.get("missing", False)), unit.strip() if unit else None)


def _bound(spec: Mapping[str, object], key: str, name: str, source: str) -> float | None:
    """A column's ``min`` or ``max`` as a finite float, or None when absent.

    TOML accepts ``nan`` and ``inf``; a NaN bound compares False with every
    value, so it would silently accept everything. Refused, like a bound that
    is not a number at all: no bound is spelt by leaving the key out.
    """
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ConfigurationError(f"schema '{source}': column '{name}': {key} must be a finite number, got {value!r}; "
                             f"fix it, or remove '{key}' for no bound")
