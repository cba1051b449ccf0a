"""``--canaries N``: plant the one-run audit's canaries in the virtual sites' data (:mod:`privacy.audit.canaries`).

The canaries are drawn from the training split (never the held-out set),
each planted at a random site with probability 1/2 and appended to that
site's CSV, so the site trains on it exactly as on its own records. The
full set (inclusion bits included) goes to ``canaries.json`` beside the
run's data, which the coordinator reads after the last round to score the
canaries on the published model and sign the audit into its ML-BOM
(:mod:`coordinator.privacy_audit`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from privacy.audit.canaries import CanarySet, make_canaries

CANARY_FILE = "canaries.json"
"""The canary set of a run, in the run folder (beside ``data/``)."""

SiteData = list[tuple[NDArray[np.float32], NDArray[np.int64]]]


def canary_path(data_dir: Path) -> Path:
    """Where a run whose sites read ``data_dir`` keeps its canary set."""
    return data_dir.parent / CANARY_FILE


def plant(sites: SiteData, train_x: NDArray[np.float32], train_y: NDArray[np.int64], num_classes: int, m: int,
          seed: int, data_dir: Path) -> SiteData:
    """Each site's data with its planted canaries appended; the set is saved to :func:`canary_path`."""
    canaries: CanarySet = make_canaries(train_x, train_y, num_classes, m, len(sites), seed)
    canaries.save(canary_path(data_dir))
    planted = []
    for site, (x, y) in enumerate(sites):
        cx, cy = canaries.at_site(site)
        planted.append((np.concatenate([x, cx]).astype(np.float32), np.concatenate([y, cy]).astype(np.int64)))
    return planted
