"""The federation's data contract: the columns every site's data must become, declared by the coordinator.

The coordinator writes it once (``fedguard coordinator data``, docs/deployment.md)
from a TOML file in the site-schema format (:mod:`federation.schema`) plus
``record-id`` and per-column ``unit``::

    label = "diagnosis"
    label-values = ["malignant", "benign"]     # class order of the model
    record-id = "patient_id"                   # optional: never a feature, must be unique

    [columns]                                  # the model's features, in this order
    radius_mean = { type = "float", min = 0, max = 50, unit = "mm" }

It travels to every site in its bundle and with every run (the ``config``
record of :class:`federation.protocol.TrainConfig`), as canonical JSON
(:meth:`DataContract.to_json`) whose SHA-256 is its :attr:`~DataContract.digest`.
A site's schema then only *maps* its export onto it (:mod:`federation.mapping`).
The model is built from :meth:`DataContract.data_schema`, so the coordinator's
model and the sites' encoding agree by construction.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from federation.schema import (
    FIRST_ROWS,
    CheckedTable,
    Column,
    Problem,
    SiteSchema,
    ValidationReport,
    canonical,
    is_missing,
)
from federation.tabular import read_utf8_text
from lifecycle.errors import ConfigurationError

if TYPE_CHECKING:
    from lifecycle.architecture import DataSchema

FORMAT = "fedguard-data-contract/1"
RECORD_ID = "record-id"
CONTRACT_FILE = "contract.json"
"""Its file name, in ``FEDGUARD_HOME/federation/`` and beside a held-out reference set."""
AGAINST = "the federation's data contract"


@dataclass(frozen=True)
class DataContract:
    """The federation's features (ordered, typed, bounded), its label and label values, an optional record id."""

    columns: tuple[Column, ...]
    label: str
    label_values: tuple[str, ...]
    record_id: str | None = None
    extra_columns: str = field(default="error", compare=False)
    """How the coordinator's own held-out file treats undeclared columns (not part of the contract sent out)."""
    source: str = field(default="<contract>", compare=False)

    def __post_init__(self) -> None:
        self.site_schema()  # the same checks as a site schema: unique names, label apart, ≥ 2 label values
        if self.record_id is not None and self.record_id in (*self.features, self.label):
            raise ConfigurationError(f"contract '{self.source}': record-id '{self.record_id}' is also a feature or "
                                     "the label; a record id is never trained on: declare it only with record-id")

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def site_schema(self, extra_columns: str | None = None) -> SiteSchema:
        """The contract as a site schema over the contract's own column names."""
        return SiteSchema(self.columns, self.label, self.label_values, extra_columns or self.extra_columns,
                          self.source)

    def data_schema(self) -> DataSchema:
        """What the model takes (features in order, target, class names): the coordinator builds its model on it."""
        from lifecycle.architecture import DataSchema

        return DataSchema(self.features, self.label, self.label_values)

    # -- serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "label": self.label, "label-values": list(self.label_values),
                "record-id": self.record_id, "features": [_column_dict(c) for c in self.columns]}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what bundles and runs carry, and what :attr:`digest` hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def digest(self) -> str:
        """SHA-256 of :meth:`to_json`: two parties hold the same contract iff their digests match."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<contract>") -> DataContract:
        if data.get("format") != FORMAT:
            raise ConfigurationError(f"'{source}' is not a fedguard data contract (expected format '{FORMAT}')")
        try:
            columns = {str(c["name"]): {k: v for k, v in c.items() if k != "name" and v is not None}
                       for c in data["features"]}
            raw = {"label": data["label"], "label-values": data["label-values"], "columns": columns}
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(f"data contract '{source}' lacks {exc}; ask the coordinator again") from None
        schema = SiteSchema.from_mapping(raw, source=source)
        record_id = data.get("record-id")
        return cls(schema.columns, schema.label, schema.label_values, str(record_id) if record_id else None,
                   source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str = "<contract>") -> DataContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigurationError(f"data contract '{source}' is not JSON; ask the coordinator again") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"data contract '{source}' is not a JSON object")
        return cls.from_dict(data, source=source)

    @classmethod
    def read(cls, path: Path) -> DataContract:
        """Read a contract written by :meth:`write` (``contract.json``)."""
        return cls.from_json(read_utf8_text(path, "data contract"), source=str(path))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True, ensure_ascii=False) + "\n",
                       encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> DataContract:
        """Read the coordinator's contract TOML (the site-schema format plus ``record-id`` and ``unit``)."""
        try:
            raw = tomllib.loads(read_utf8_text(path, "contract schema file"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"contract schema file '{path}' is not valid TOML: {exc}") from None
        record_id = raw.pop(RECORD_ID, None)
        if record_id is not None and (not isinstance(record_id, str) or not record_id.strip()):
            raise ConfigurationError(f"contract schema '{path}': record-id must be a column name")
        schema = SiteSchema.from_mapping(raw, source=str(path))
        return cls(schema.columns, schema.label, schema.label_values, record_id.strip() if record_id else None,
                   schema.extra_columns, str(path))

    # -- checking ----------------------------------------------------------------
    def check(self, header: Sequence[str], cells: Mapping[str, Sequence[object]], num_rows: int,
              source: str) -> CheckedTable:
        """Check a file written in the contract's own column names (the coordinator's held-out set)."""
        kept = [name for name in header if name != self.record_id]
        checked = self.site_schema().check(kept, cells, num_rows, source)
        ids = cells.get(self.record_id) if self.record_id is not None else None
        return with_problems(checked, record_id_problems(self.record_id, ids), AGAINST,
                             "fedguard coordinator data --data FILE --schema CONTRACT.toml")


def _column_dict(column: Column) -> dict[str, Any]:
    out: dict[str, Any] = {"name": column.name, "type": column.type}
    if column.min is not None:
        out["min"] = column.min
    if column.max is not None:
        out["max"] = column.max
    if column.values:
        out["values"] = list(column.values)
    if column.missing:
        out["missing"] = True
    if column.unit:
        out["unit"] = column.unit
    return out


def record_id_problems(name: str | None, cells: Sequence[object] | None) -> tuple[list[Problem], set[int]]:
    """A record-id column's empty and repeated ids (rows 1-based; the ids themselves are never named)."""
    if name is None or cells is None:
        return [], set()
    seen: set[str] = set()
    empty: list[int] = []
    repeated: list[int] = []
    for index, value in enumerate(cells, start=1):
        if is_missing(value):
            empty.append(index)
            continue
        key = canonical(value)
        if key in seen:
            repeated.append(index)
        seen.add(key)
    problems = []
    if empty:
        problems.append(Problem(name, "missing", "missing a record id", len(empty), tuple(empty[:FIRST_ROWS])))
    if repeated:
        problems.append(Problem(name, "duplicate-id", "repeating a record id of an earlier row", len(repeated),
                                tuple(repeated[:FIRST_ROWS])))
    return problems, {*empty, *repeated}


def with_problems(checked: CheckedTable, extra: tuple[list[Problem], set[int]] | list[Problem], against: str,
                  retry: str, *, drop: frozenset[str] = frozenset()) -> CheckedTable:
    """``checked`` with ``extra`` problems appended (and problem kinds in ``drop`` removed), named ``against``."""
    problems, rows = extra if isinstance(extra, tuple) else (extra, set())
    report = checked.report
    kept = [p for p in report.problems if p.kind not in drop]
    bad = checked.bad | rows
    new = ValidationReport(report.source, report.rows, (*kept, *problems), len(bad), against, retry)
    return CheckedTable(checked.values, checked.labels, new, frozenset(bad))
