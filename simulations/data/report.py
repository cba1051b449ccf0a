"""What a partition looks like: each site's size and label counts, and a few numbers that sum it up.

Saved as ``partition.json`` in a simulation's run folder (and printed by
``fedguard data partition --json``), so a result can be read against the
split that produced it. ``label_skew`` is the mean total-variation distance
between a site's label distribution and the pooled one: 0 for identical
mixes, towards 1 as sites hold classes the pool barely has. It is a plain
summary chosen here to compare splits (Li et al. 2022 describe skew by the
partition's parameters instead); the per-site counts are all in the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulations.data.partitioners import Partition, site_label_counts


@dataclass(frozen=True)
class PartitionReport:
    """Per-site label counts (sites × classes) with the names needed to read them."""

    source: str
    spec: str
    seed: int
    label_names: tuple[str, ...]
    counts: np.ndarray
    groups: tuple[str, ...] = ()
    test_records: int = 0

    @classmethod
    def of(cls, source: str, partition: Partition, labels: np.ndarray, label_names: tuple[str, ...], *,
           seed: int, test_records: int = 0) -> PartitionReport:
        counts = site_label_counts(labels, partition.sites, len(label_names))
        return cls(source, partition.spec, seed, label_names, counts, partition.groups, test_records)

    @property
    def sizes(self) -> np.ndarray:
        return np.asarray(self.counts.sum(axis=1), dtype=np.int64)

    def site_name(self, site: int) -> str:
        return f"site-{site}"

    def summary(self) -> dict[str, Any]:
        """Sites, records, size statistics and label skew."""
        sizes = self.sizes
        total = int(sizes.sum())
        pooled = self.counts.sum(axis=0) / max(total, 1)
        mixes = self.counts / np.maximum(sizes, 1)[:, None]
        skew = float(0.5 * np.abs(mixes - pooled).sum(axis=1).mean()) if len(sizes) else 0.0
        return {"sites": len(sizes), "records": total, "test_records": self.test_records,
                "size_min": int(sizes.min()), "size_median": float(np.median(sizes)), "size_max": int(sizes.max()),
                "size_mean": float(sizes.mean()), "size_std": float(sizes.std()), "label_skew": round(skew, 4)}

    def to_dict(self) -> dict[str, Any]:
        sites = [{"site": self.site_name(i), **({"group": self.groups[i]} if self.groups else {}),
                  "size": int(row.sum()), "labels": dict(zip(self.label_names, (int(c) for c in row), strict=True))}
                 for i, row in enumerate(self.counts)]
        return {"source": self.source, "partition": self.spec, "seed": self.seed, "labels": list(self.label_names),
                "summary": self.summary(), "sites": sites}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PartitionReport:
        """The report :meth:`to_dict` wrote (``partition.json``)."""
        names = tuple(str(n) for n in raw["labels"])
        counts = np.array([[int(site["labels"][n]) for n in names] for site in raw["sites"]], dtype=np.int64)
        groups = tuple(str(site["group"]) for site in raw["sites"] if "group" in site)
        return cls(str(raw["source"]), str(raw["partition"]), int(raw["seed"]), names,
                   counts.reshape(len(raw["sites"]), len(names)), groups,
                   int(raw["summary"].get("test_records", 0)))

    @classmethod
    def load(cls, path: Path) -> PartitionReport:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path
