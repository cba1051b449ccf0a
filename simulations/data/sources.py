"""Where a simulation's records come from: a bundled set, a seeded synthetic set, or the researcher's own file.

* ``breast-cancer``, ``digits``, ``wine``: scikit-learn's bundled sets
  (:mod:`simulations.datasets`); nothing is downloaded.
* ``synthetic`` (or ``synthetic:K`` for K classes): scikit-learn's
  ``make_classification``, seeded, ``--records`` rows and ``--features``
  columns, for federations of hundreds of sites.
* ``--data FILE.csv|.parquet --schema SCHEMA.toml|.json``: a pooled file
  checked against a site schema (the format of ``docs/site-data.md``) by the
  site agent's own check, which reports every problem at once; categories and
  labels are encoded as at a site, and missing values (where the schema
  allows them) are filled from the pooled file. Columns outside the schema's
  ``[columns]`` are read only as partition columns (``by-column:COL``): a silo
  id is never a feature unless the schema declares it.

Notes
-----
``make_classification`` follows Guyon 2003 ("Design of experiments for the
NIPS 2003 variable selection benchmark"): Gaussian clusters on the vertices
of a hypercube in the informative subspace, plus redundant (linear
combinations) and noise features. Here half the features (at least
⌈log2(2K)⌉) are informative and a quarter redundant.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from federation.mapping import load_site_schema
from federation.schema import SchemaValidationError, SiteSchema, canonical, encode, is_missing
from federation.tabular import read_table, read_utf8_text
from lifecycle.errors import ConfigurationError
from simulations.data.options import SYNTHETIC, SYNTHETIC_FEATURES, SYNTHETIC_RECORDS, DataOptions
from simulations.datasets import available_datasets, load_dataset


@dataclass(frozen=True)
class Source:
    """Pooled records before the split: float features, class indices, names, and partition columns.

    ``columns`` holds, as text, the file's columns that a ``by-column``
    partition may split on; :meth:`column` also accepts a feature's name.
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: tuple[str, ...]
    label_names: tuple[str, ...]
    target: str = "label"
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        """The values of column ``name`` for every record (a partition column or a feature).

        Raises
        ------
        ConfigurationError
            No such column; the message lists the ones there are.
        """
        if name in self.columns:
            return self.columns[name]
        if name in self.feature_names:
            return self.features[:, self.feature_names.index(name)]
        known = [*self.columns, *self.feature_names]
        shown = ", ".join(known[:12]) + (", …" if len(known) > 12 else "")
        raise ConfigurationError(f"{self.name} has no column '{name}' to partition by; its columns: {shown}")


def available_sources() -> tuple[str, ...]:
    """The names ``--dataset`` accepts."""
    return (*available_datasets(), SYNTHETIC)


def load_source(options: DataOptions) -> Source:
    """The records ``options`` name (a file is read once per version of it; see the module docstring).

    Raises
    ------
    ConfigurationError
        Unknown dataset, unreadable file or schema.
    SchemaValidationError
        The file does not match its schema; the one-line message lists every problem.
    """
    if options.data:
        data, schema = Path(options.data), Path(options.schema)
        return _load_file(data.resolve(), _stamp(data), schema.resolve(), _stamp(schema))
    name, _, param = options.dataset.partition(":")
    if name == SYNTHETIC:
        return synthetic(options.records or SYNTHETIC_RECORDS, options.features or SYNTHETIC_FEATURES,
                         classes=_classes(param), seed=options.seed)
    data_set = load_dataset(options.dataset)
    return Source(data_set.name, data_set.features, data_set.labels, data_set.feature_names, data_set.label_names)


def _classes(param: str) -> int:
    if not param:
        return 2
    try:
        classes = int(param)
    except ValueError:
        classes = 0
    if classes < 2:
        raise ConfigurationError(f"--dataset synthetic:{param}: the number of classes must be an integer ≥ 2")
    return classes


def synthetic(records: int, features: int, *, classes: int = 2, seed: int) -> Source:
    """``records`` rows of ``make_classification`` data with ``features`` columns and ``classes`` classes."""
    from sklearn.datasets import make_classification

    informative = min(features, max(2, features // 2, math.ceil(math.log2(2 * classes))))
    if 2 ** informative < 2 * classes:
        raise ConfigurationError(f"--features {features} is too few for {classes} classes; use at least "
                                 f"{math.ceil(math.log2(2 * classes))}")
    x, y = make_classification(n_samples=records, n_features=features, n_informative=informative,
                               n_redundant=min(features - informative, features // 4), n_classes=classes,
                               random_state=seed)
    return Source(f"synthetic-{records}x{features}", np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64),
                  tuple(f"x{i}" for i in range(features)), tuple(str(c) for c in range(classes)))


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        raise ConfigurationError(f"'{path}' does not exist; pass the path of your data file and its schema") from None
    return stat.st_mtime_ns, stat.st_size


def load_schema(path: Path) -> SiteSchema:
    """A full site schema from TOML (as the site agent reads it) or JSON (the same keys).

    Raises
    ------
    ConfigurationError
        Unreadable, not a full site schema (a mapping onto a federation's contract needs that contract).
    """
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(read_utf8_text(path, "schema file"))
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"schema file '{path}' is not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or "columns" not in raw:
            raise ConfigurationError(f"schema '{path}' needs 'label', 'label-values' and a 'columns' object")
        return SiteSchema.from_mapping(raw, source=str(path))
    schema = load_site_schema(path)
    if not isinstance(schema, SiteSchema):
        raise ConfigurationError(f"schema '{path}' maps a site's file onto a federation's contract; a simulation "
                                 "needs the full site schema, with label, label-values and [columns]")
    return schema


@functools.lru_cache(maxsize=2)
def _load_file(path: Path, stamp: tuple[int, int], schema_path: Path, schema_stamp: tuple[int, int]) -> Source:
    del stamp, schema_stamp  # cache keys: an edited file is read again
    schema = load_schema(schema_path)
    table = read_table(path)
    declared = {*schema.features, schema.label, *([schema.id_column] if schema.id_column else [])}
    extra = [name for name in table.header if name not in declared]
    # The site check refuses undeclared columns under extra-columns = "error"; here they are partition columns.
    checked = schema.check([n for n in table.header if n in declared], table.cells, table.num_rows, str(path))
    report = checked.report
    if not report.ok:
        problems = "; ".join(p.describe() for p in report.problems)
        raise SchemaValidationError(f"'{path}' does not match schema '{schema_path}': {len(report.problems)} "
                                    f"problem(s), {report.bad_rows} of {report.rows} rows affected: {problems}; "
                                    "fix the file or the schema", report)
    x, y = encode(checked, schema, schema.features, schema.label, len(schema.label_values), schema.label_values)
    columns = {name: np.asarray(["" if is_missing(v) else canonical(v) for v in table.cells[name]], dtype=str)
               for name in (*extra, *([schema.id_column] if schema.id_column else []))}
    return Source(path.stem, x, y, schema.features, schema.label_values, schema.label, columns)
