"""Canaries for the one-run audit: mislabelled copies of training records, each planted with probability 1/2.

A canary is a training record whose label is changed to another class. Its
unchanged original stays in the data, so a model that saw the canary is
torn between both labels (its loss on the canary label is moderate), while
one that did not is confident in the original label (its loss is high):
the gap is what a membership guess reads, and all of it must stay within
what (ε, δ)-DP allows.

Notes
-----
Steinke, Nasr & Jagielski 2023 (arXiv:2305.08846), black-box auditing
with input-space canaries (mislabelled examples, each included
independently with probability 1/2, scored by their loss on the final
model). Each canary copies a distinct record: at most as many canaries as
training records. Records reused with jittered features were tried and
dropped: on breast-cancer (455 training records), 1000 such canaries put
about 500 conflicting labels into the sites' data, held-out accuracy
collapsed, and the coordinator's aggregate guard stopped the run, with or
without DP.

The file written by :meth:`CanarySet.save` is JSON (never pickle): what the
coordinator needs to score and audit the canaries of a simulated run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from lifecycle.errors import ConfigurationError, StateError
from privacy.audit.one_run import included_bits


@dataclass(frozen=True)
class CanarySet:
    """``m`` canaries: features, their (changed) labels, the secret inclusion bits and the site of each planted one.

    ``sites[i]`` is the site index canary ``i`` was planted at, -1 when it was left out.
    """

    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    included: NDArray[np.bool_]
    sites: NDArray[np.int64]
    seed: int

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def at_site(self, site: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """The canaries planted at ``site``: features and labels, in canary order."""
        mask = self.sites == site
        return self.features[mask], self.labels[mask]

    def save(self, path: Path) -> str:
        """Write the set as JSON; returns its SHA-256 (recorded with the audit)."""
        text = json.dumps({"seed": self.seed, "features": self.features.tolist(), "labels": self.labels.tolist(),
                           "included": self.included.astype(int).tolist(), "sites": self.sites.tolist()})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def load(cls, path: Path) -> tuple[CanarySet, str]:
        """Read a set written by :meth:`save`, with its SHA-256.

        Raises
        ------
        StateError
            The file is missing or malformed.
        """
        try:
            text = path.read_text(encoding="utf-8")
            raw = json.loads(text)
            canaries = cls(np.asarray(raw["features"], dtype=np.float32), np.asarray(raw["labels"], dtype=np.int64),
                           np.asarray(raw["included"], dtype=bool), np.asarray(raw["sites"], dtype=np.int64),
                           int(raw["seed"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"the canary file {path} is missing or damaged ({exc}); re-run the audited "
                             "simulation") from None
        return canaries, hashlib.sha256(text.encode()).hexdigest()


def make_canaries(features: NDArray[np.float32], labels: NDArray[np.int64], num_classes: int, m: int,
                  num_sites: int, seed: int) -> CanarySet:
    """Draw ``m`` canaries from training records (seeded), plant each at a uniform site with probability 1/2.

    Raises
    ------
    ConfigurationError
        Fewer than 2 classes (no other label to change to), ``m`` outside 1 to the number of training
        records, or no site.
    """
    if num_classes < 2 or num_sites < 1:
        raise ConfigurationError(f"canaries need at least 2 classes and a site (got {num_classes} classes, "
                                 f"{num_sites} sites)")
    if not 1 <= m <= labels.size:
        raise ConfigurationError(f"--canaries {m}: each canary is a mislabelled copy of a distinct training record "
                                 f"and this split has {labels.size}; use at most {labels.size} (m = 1000 needs a "
                                 "dataset with more records, e.g. --dataset digits)")
    rng = np.random.default_rng([seed, 0xCA7A])
    rows = rng.choice(labels.size, size=m, replace=False)
    chosen = features[rows].astype(np.float32)
    shifted = (labels[rows] + rng.integers(1, num_classes, size=m)) % num_classes  # always a different class
    included = included_bits(m, seed)
    sites = np.where(included, rng.integers(0, num_sites, size=m), -1)
    return CanarySet(chosen, shifted.astype(np.int64), included, sites.astype(np.int64), seed)
