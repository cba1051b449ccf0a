"""A site's schema as a mapping of its own export onto the federation's data contract.

Hospitals export data their own way (``patient_id``, ``diagnosis`` as M/B,
``radius_mean``, …). With the federation's contract in hand
(:mod:`federation.contract`, from the site's bundle or the run), the site's
schema file only says how its file maps onto it; types, ranges, the label and
its values come from the contract (docs/site-data.md)::

    ignore = ["patient_id", "admission_date"]   # columns never read
    extra-columns = "error"                     # default; "ignore" lets other unmapped columns pass

    [rename]                                    # site column → contract column
    "Radius (mean)" = "radius_mean"

    [label-map]                                 # site value → contract label value
    M = "malignant"
    B = "benign"

A schema file *with* ``[columns]`` is the full site-schema format of
:mod:`federation.schema` and keeps working as before.
:func:`check_site_table` is the one check behind ``fedguard client check
--bundle`` and the site agent's training: it reports every mismatch at once,
naming the site's own columns.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from federation.contract import AGAINST, DataContract, record_id_problems, with_problems
from federation.schema import EXTRA_COLUMNS, CheckedTable, Problem, SiteSchema, canonical, is_missing
from federation.tabular import read_utf8_text
from lifecycle.errors import ConfigurationError

MAPPING_KEYS = frozenset({"rename", "label-map", "ignore", "extra-columns"})
RETRY = "fedguard client check --bundle SITE.bundle --data FILE --schema SCHEMA.toml"
THROUGH = f"{AGAINST} (through the site's schema)"


@dataclass(frozen=True)
class SiteMapping:
    """How a site's columns and label values map onto the federation's contract (see the module docstring)."""

    rename: tuple[tuple[str, str], ...] = ()
    label_map: tuple[tuple[str, str], ...] = ()
    ignore: tuple[str, ...] = ()
    extra_columns: str = "error"
    source: str = "<mapping>"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, source: str = "<mapping>") -> SiteMapping:
        unknown = set(raw) - MAPPING_KEYS
        if unknown:
            raise ConfigurationError(
                f"schema '{source}': unknown keys {sorted(unknown)} in a schema without [columns]; such a schema maps "
                f"the site's file onto the federation's contract with {', '.join(sorted(MAPPING_KEYS))} (the label "
                "and its values come from the contract), or declare [columns] for a full site schema")
        rename, label_map = _table(raw, "rename", source), _table(raw, "label-map", source)
        ignore = raw.get("ignore", [])
        if not isinstance(ignore, list) or not all(isinstance(v, str) for v in ignore):
            raise ConfigurationError(f"schema '{source}': ignore must be a list of column names, "
                                     "e.g. ignore = [\"patient_id\"]")
        extra = str(raw.get("extra-columns", "error"))
        if extra not in EXTRA_COLUMNS:
            raise ConfigurationError(f"schema '{source}': extra-columns must be one of {EXTRA_COLUMNS}")
        return cls(tuple(rename.items()), tuple((canonical(k), canonical(v)) for k, v in label_map.items()),
                   tuple(ignore), extra, source)

    def site_column(self, contract_column: str) -> str:
        """The site column that becomes ``contract_column`` (its own name unless renamed)."""
        return next((site for site, target in self.rename if target == contract_column), contract_column)

    def check(self, contract: DataContract, header: Sequence[str], cells: Mapping[str, Sequence[object]],
              num_rows: int, source: str) -> CheckedTable:
        """Map the file onto ``contract`` and check it; every mismatch at once, in the site's column names."""
        problems = self._mapping_problems(contract)
        rename, wanted = dict(self.rename), {*contract.features, contract.label}
        mapped: dict[str, Sequence[object]] = {}
        ids: Sequence[object] | None = None
        for name in header:
            target = rename.get(name, name)
            if name in self.ignore:
                continue
            if contract.record_id is not None and target == contract.record_id:
                ids = cells.get(name)
            elif target in mapped:
                problems.append(Problem(name, "duplicate-column", f"maps to contract column '{target}', which "
                                        "another column of the file already provides"))
            elif target in wanted:
                mapped[target] = cells.get(name, ())
            elif self.extra_columns == "error":
                problems.append(Problem(name, "extra-column", "is in the file but not in the federation's contract "
                                        "(map it with [rename], or list it in ignore)"))
        for name in (*contract.features, contract.label):
            if name not in mapped:
                problems.append(Problem(name, "missing-column", self._absent(name)))
        if contract.label in mapped:
            mapped[contract.label] = self._recode(mapped[contract.label])
        checked = contract.site_schema("ignore").check(list(mapped), mapped, num_rows, source)
        checked = replace(checked, report=replace(checked.report, problems=tuple(
            self._in_site_terms(p, contract) for p in checked.report.problems)))
        extra_ids, id_rows = record_id_problems(contract.record_id, ids)
        return with_problems(checked, (problems + extra_ids, id_rows), THROUGH, RETRY,
                             drop=frozenset({"missing-column"}))

    def _mapping_problems(self, contract: DataContract) -> list[Problem]:
        """Entries of the schema that cannot work with this contract (reported with the file's problems)."""
        problems = []
        known = {*contract.features, contract.label, *([contract.record_id] if contract.record_id else [])}
        targets = [target for _, target in self.rename]
        for site, target in self.rename:
            if target not in known:
                problems.append(Problem(site, "unknown-target", f"is renamed to '{target}', which is not a column of "
                                        "the federation's contract"))
            elif targets.count(target) > 1 and site == self.site_column(target):
                problems.append(Problem(target, "duplicate-rename", "is the target of more than one [rename] entry"))
        for value, target in self.label_map:
            if target not in contract.label_values:
                problems.append(Problem(self.site_column(contract.label), "unknown-label-target",
                                        f"[label-map] recodes '{value}' to '{target}', which is not one of the "
                                        f"contract's label values {list(contract.label_values)}"))
        return problems

    def _absent(self, name: str) -> str:
        site = self.site_column(name)
        if site != name:
            return f"is required by the federation's contract; [rename] maps site column '{site}' to it, but the " \
                   "file has no such column"
        return ("is required by the federation's contract but absent from the file; name your column so, or map it "
                f"with [rename] \"your-column\" = \"{name}\"")

    def _recode(self, cells: Sequence[object]) -> list[object]:
        codes = dict(self.label_map)
        return [value if is_missing(value) else codes.get(canonical(value), value) for value in cells]

    def _in_site_terms(self, problem: Problem, contract: DataContract) -> Problem:
        site = self.site_column(problem.column)
        detail = problem.detail
        if problem.kind == "unknown-label":
            detail = (f"with a label that is none of the contract's values {list(contract.label_values)} "
                      "and not recoded by [label-map]")
        if site != problem.column:
            detail = f"{detail} (contract column '{problem.column}')"
        return replace(problem, column=site, detail=detail)


def _table(raw: Mapping[str, Any], key: str, source: str) -> dict[str, str]:
    table = raw.get(key, {})
    if not isinstance(table, dict) or not all(isinstance(v, (str, int, float, bool)) for v in table.values()):
        raise ConfigurationError(f"schema '{source}': [{key}] must be a table of \"site\" = \"contract\" entries")
    return {str(k): str(v) if isinstance(v, str) else canonical(v) for k, v in table.items()}


def load_site_schema(path: Path) -> SiteSchema | SiteMapping:
    """A site's schema file: the full format (with ``[columns]``) or a mapping onto the contract (without)."""
    try:
        raw = tomllib.loads(read_utf8_text(path, "schema file"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"schema file '{path}' is not valid TOML: {exc}") from None
    if "columns" not in raw:
        return SiteMapping.from_mapping(raw, source=str(path))
    mixed = sorted(set(raw) & (MAPPING_KEYS - {"extra-columns"}))
    if mixed:
        raise ConfigurationError(f"schema '{path}' has [columns] and {mixed}: a full site schema declares its own "
                                 "columns, a mapping schema takes them from the federation's contract; keep one")
    return SiteSchema.from_mapping(raw, source=str(path))


def _fit_problems(schema: SiteSchema, contract: DataContract) -> list[Problem]:
    """Where a full site schema cannot give the contract's model input."""
    problems = [Problem(name, "missing-column", "is required by the federation's contract but not declared "
                        "under [columns] in the site's schema")
                for name in contract.features if name not in schema.features]
    if schema.label != contract.label:
        problems.append(Problem(schema.label, "label", f"is the site's label column; the contract's is "
                                f"'{contract.label}'"))
    if set(schema.label_values) != set(contract.label_values):
        problems.append(Problem(schema.label, "label-values", f"label-values {list(schema.label_values)} differ "
                                f"from the contract's {list(contract.label_values)}"))
    return problems


def check_site_table(header: Sequence[str], cells: Mapping[str, Sequence[object]], num_rows: int, source: str,
                     schema: SiteSchema | SiteMapping,
                     contract: DataContract | None) -> tuple[CheckedTable, SiteSchema]:
    """Check a site's table; return it and the schema its parsed values follow (what ``encode`` needs).

    Raises
    ------
    ConfigurationError
        ``schema`` is a mapping but no contract is known.
    """
    if isinstance(schema, SiteMapping):
        if contract is None:
            raise ConfigurationError(
                f"schema '{schema.source}' maps the site's file onto the federation's data contract, but no "
                "contract is at hand: check with --bundle SITE.bundle (a bundle issued after 'fedguard coordinator "
                "data'), or join a run whose coordinator declared one")
        return schema.check(contract, header, cells, num_rows, source), contract.site_schema()
    checked = schema.check(header, cells, num_rows, source)
    if contract is None:
        return checked, schema
    return with_problems(checked, _fit_problems(schema, contract), THROUGH, RETRY), schema
