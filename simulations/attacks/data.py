"""A site's file as an attacker rewrites it: the poisoned copy, and bootstrap resamples of it.

A data attack changes what the site trains on, nothing else: the site's
agent reads another CSV (its node config's ``data-path`` pointed at the
poisoned copy, its name kept), validates it against the same schema and
trains on it exactly as an honest site would. The copies live beside the
site's file under ``attacks/``; their content depends only on the site's
file, the attack, its seed and the global model's standardization, so
concurrent writers (Ray actors) write the same bytes, atomically.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from federation.tabular import read_csv_rows
from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack, Records


class SiteFile:
    """The rows of a site's CSV and the model's columns in it."""

    def __init__(self, path: Path, features: Sequence[str], target: str) -> None:
        self.path = path
        self.header, rows = read_csv_rows(path)
        missing = [name for name in [*features, target] if name not in self.header]
        if missing:
            raise ConfigurationError(f"'{path}' lacks columns {missing[:3]}; an attack rewrites only the "
                                     "federation's own columns")
        self.rows = [list(row) for _, row in rows]
        self.feature_columns = [self.header.index(name) for name in features]
        self.label_column = self.header.index(target)

    def records(self, num_classes: int, mean: np.ndarray | None, scale: np.ndarray | None) -> Records:
        """The model's features and integer labels (simulation files: numeric cells)."""
        try:
            features = np.array([[float(row[c]) for c in self.feature_columns] for row in self.rows], dtype=np.float32)
            labels = np.array([int(float(row[self.label_column])) for row in self.rows], dtype=np.int64)
        except ValueError:
            raise ConfigurationError(f"'{self.path}': attacks rewrite numeric site files (as simulations write "
                                     "them); map categorical columns first") from None
        return Records(features, labels, num_classes, mean, scale)

    def write(self, path: Path, records: Records, order: Sequence[int] | None = None) -> Path:
        """``records`` in the site's layout at ``path`` (rows picked by ``order``), written atomically."""
        rows = []
        for i in (range(len(self.rows)) if order is None else order):
            row = list(self.rows[i])
            for j, column in enumerate(self.feature_columns):
                row[column] = repr(float(records.features[i, j]))
            row[self.label_column] = str(int(records.labels[i]))
            rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with scratch.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(self.header)
            writer.writerows(rows)
        os.replace(scratch, path)
        return path


def attack_folder(site_path: Path) -> Path:
    """Where an attacker keeps its rewritten copies of ``site_path``."""
    return site_path.parent / "attacks"


def poisoned_copy(site: SiteFile, attack: Attack, records: Records, rng: np.random.Generator) -> tuple[Path, Records]:
    """The site's file after :meth:`Attack.poison` (rewritten every round: the same bytes for the same seed)."""
    poisoned = attack.poison(records, rng)
    return site.write(attack_folder(site.path) / f"{site.path.stem}-{attack.name}.csv", poisoned), poisoned


def bootstrap_copy(site: SiteFile, records: Records, rng: np.random.Generator, tag: str) -> Path:
    """A resample with replacement of the site's records, as many as it has (seeded by ``rng``)."""
    order = rng.integers(0, len(records.labels), size=len(records.labels))
    return site.write(attack_folder(site.path) / f"{site.path.stem}-bootstrap-{tag}.csv", records, order.tolist())
