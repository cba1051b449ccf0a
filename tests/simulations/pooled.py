"""A researcher's pooled file for tests: breast-cancer columns, a text label, and the hospital each record came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped, unused-ignore]

FEATURES = ("mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness")
HOSPITALS = ("H1", "H2", "H3")

SCHEMA = """\
label = "diagnosis"
label-values = ["malignant", "benign"]
id-column = "patient_id"

[columns]
"mean radius" = { type = "float", min = 0 }
"mean texture" = { type = "float", min = 0 }
"mean perimeter" = { type = "float", min = 0 }
"mean area" = { type = "float", min = 0, unit = "px" }
"mean smoothness" = { type = "float", min = 0 }
"""


def pooled_columns(seed: int = 0) -> dict[str, list[object]]:
    """Columns of the pooled file; hospitals of unequal size (H1 half, H2 a third, H3 the rest)."""
    bunch = load_breast_cancer()
    rows = len(bunch.target)
    hospital = np.random.default_rng(seed).choice(len(HOSPITALS), size=rows, p=[0.5, 0.33, 0.17])
    columns: dict[str, list[object]] = {"patient_id": [f"p{i:04d}" for i in range(rows)]}
    for name in FEATURES:
        columns[name] = [float(v) for v in bunch.data[:, list(bunch.feature_names).index(name)]]
    columns["diagnosis"] = [str(bunch.target_names[t]) for t in bunch.target]
    columns["hospital_id"] = [HOSPITALS[h] for h in hospital]
    return columns


def write_pooled(folder: Path, suffix: str = ".csv",
                 columns: dict[str, list[object]] | None = None) -> tuple[Path, Path]:
    """Write the pooled file (CSV or Parquet) and its site schema (TOML); return both paths."""
    columns = pooled_columns() if columns is None else columns
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"pooled{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table(columns), data)
    else:
        names = list(columns)
        lines = [",".join(f'"{n}"' if " " in n else n for n in names)]
        lines += [",".join(str(columns[n][i]) for n in names) for i in range(len(columns[names[0]]))]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    schema = folder / "schema.toml"
    schema.write_text(SCHEMA, encoding="utf-8")
    return data, schema
