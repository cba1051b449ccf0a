"""Hospital-style exports of scikit-learn's breast-cancer set, and the federation's contract for them.

What a hospital writes (``patient_id``, ``diagnosis`` as ``M``/``B``,
``radius_mean``, ``texture_se``, …, the Wisconsin export's column names),
what the coordinator declares (the same feature names, ``diagnosis`` with
``malignant``/``benign``, record id ``patient_id``), and a site's mapping
schema between the two. Deterministic: rows are picked by index.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

LABEL = "diagnosis"
LABEL_VALUES = ("malignant", "benign")  # scikit-learn's target order: 0 malignant, 1 benign
HOSPITAL_CODES = {"malignant": "M", "benign": "B"}
RECORD_ID = "patient_id"
_UNITS = {"radius": "mm", "perimeter": "mm", "area": "mm2"}


def hospital_name(sklearn_name: str) -> str:
    """``mean radius`` → ``radius_mean``, ``radius error`` → ``radius_se``, ``worst radius`` → ``radius_worst``."""
    words = sklearn_name.split()
    if words[0] in ("mean", "worst"):
        return "_".join(words[1:]) + "_" + words[0]
    return "_".join(words[:-1]) + "_se"


@functools.cache
def breast_cancer() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Features, labels (0 malignant, 1 benign) and the hospital column names of all 569 rows."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = tuple(hospital_name(str(n)) for n in data.feature_names)
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target, dtype=np.int64), names


def features(count: int = 30) -> tuple[str, ...]:
    return breast_cancer()[2][:count]


def split(sites: int, *, every: int = 5) -> tuple[list[int], list[list[int]]]:
    """Row indices: every ``every``-th row held out for the coordinator, the rest dealt round-robin to sites."""
    rows = range(len(breast_cancer()[1]))
    held = [i for i in rows if i % every == 0]
    rest = [i for i in rows if i % every]
    return held, [rest[s::sites] for s in range(sites)]


def contract_toml(count: int = 30, *, record_id: bool = True) -> str:
    """The coordinator's contract: the first ``count`` features, bounds with room, units where they apply."""
    x, _, names = breast_cancer()
    lines = [f'label = "{LABEL}"', f"label-values = {list(LABEL_VALUES)!r}".replace("'", '"')]
    if record_id:
        lines.append(f'record-id = "{RECORD_ID}"')
    lines += ["", "[columns]"]
    for index, name in enumerate(names[:count]):
        unit = next((f', unit = "{u}"' for k, u in _UNITS.items() if name.startswith(k)), "")
        lines.append(f'{name} = {{ type = "float", min = 0, max = {float(np.ceil(x[:, index].max() * 2))}{unit} }}')
    return "\n".join(lines) + "\n"


def write_export(path: Path, rows: Sequence[int], *, count: int = 30, rename: Mapping[str, str] | None = None,
                 codes: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None,
                 record_ids: bool = True) -> Path:
    """A CSV as a hospital exports it: ``patient_id`` first, the label coded by ``codes`` (M/B by default).

    ``rename`` maps contract column → the hospital's own name; ``extra`` adds
    constant columns (name → value) such as an admission date.
    """
    x, y, names = breast_cancer()
    rename, codes, extra = dict(rename or {}), dict(HOSPITAL_CODES if codes is None else codes), dict(extra or {})
    header = ([RECORD_ID] if record_ids else []) + [rename.get(n, n) for n in names[:count]]
    header += [rename.get(LABEL, LABEL), *extra]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in rows:
            ids = [f"P{i:05d}"] if record_ids else []
            writer.writerow([*ids, *(repr(float(v)) for v in x[i, :count]), codes[LABEL_VALUES[y[i]]],
                             *extra.values()])
    return path


def write_heldout(path: Path, rows: Sequence[int], *, count: int = 30) -> Path:
    """The coordinator's held-out file, in the contract's own names and label values."""
    return write_export(path, rows, count=count, codes={v: v for v in LABEL_VALUES})


def mapping_toml(*, rename: Mapping[str, str] | None = None, codes: Mapping[str, str] | None = None,
                 ignore: Sequence[str] = (RECORD_ID,)) -> str:
    """A site's mapping schema: ``rename`` is contract column → site column (written the other way round)."""
    lines = [f"ignore = {list(ignore)!r}".replace("'", '"'), "", "[rename]"]
    lines += [f'"{site}" = "{target}"' for target, site in (rename or {}).items()]
    lines += ["", "[label-map]"]
    lines += [f'"{code}" = "{value}"' for value, code in (HOSPITAL_CODES if codes is None else codes).items()]
    return "\n".join(lines) + "\n"
