"""Drift statistics on binned distributions: PSI and the Kolmogorov–Smirnov distance.

Both compare a reference histogram (the training data's, summed over sites:
:mod:`federation.reference`) with a live one over the *same* bins, one row per
feature. They are vectorised over rows so a monitor scores every feature of a
model in one pass; rows may have fewer bins than the widest, marked by
``mask`` (padding bins count nothing and contribute nothing).

Notes
-----
PSI (population stability index) is the symmetrised Kullback–Leibler
divergence ``Σ (q - p) ln(q / p)`` between the reference proportions ``p`` and
the live ones ``q`` (Yurdakul, "Statistical Properties of Population Stability
Index", 2018; Siddiqi, "Credit Risk Scorecards", 2006, for the usual reading:
< 0.1 stable, 0.1–0.25 moderate, > 0.25 significant shift). An empty bin
would make it infinite, so both histograms get a pseudo-count of
``smoothing`` per bin (additive smoothing) before the proportions are taken.

The KS distance is ``max |F_ref - F_live|`` over the bin edges. The reference
exists only as bin counts (no raw record ever left a site), so the exact
two-sample KS statistic cannot be computed; on the bins it is exact for the
data coarsened to bin indices (what :func:`scipy.stats.ks_2samp` returns on
the bin indices) and a lower bound of the exact statistic, so it can miss a
shift that stays inside one bin but never reports one that is not there.
Keeping the live window as counts too makes its memory independent of
traffic and keeps raw inputs out of the server's memory. Univariate tests per
feature, as here, are what Rabanser et al. ("Failing Loudly", NeurIPS 2019)
found to work as well as multivariate ones for detecting dataset shift.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_SMOOTHING = 0.5


def smoothed_proportions(counts: np.ndarray, mask: np.ndarray, smoothing: float = DEFAULT_SMOOTHING) -> np.ndarray:
    """Row-wise proportions of ``counts + smoothing`` over the bins ``mask`` marks; 0 elsewhere."""
    padded = (np.asarray(counts, dtype=np.float64) + smoothing) * mask
    proportions: np.ndarray = padded / padded.sum(axis=-1, keepdims=True)
    return proportions


def padded_rows(rows: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of different lengths (a histogram per feature) as one zero-padded array and its ``mask``."""
    width = max((len(r) for r in rows), default=0)
    values = np.zeros((len(rows), width), dtype=np.float64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for j, row in enumerate(rows):
        values[j, : len(row)] = row
        mask[j, : len(row)] = True
    return values, mask


def psi(
    reference: np.ndarray, live: np.ndarray, mask: np.ndarray | None = None, smoothing: float = DEFAULT_SMOOTHING
) -> np.ndarray:
    """PSI per row of two count arrays of the same shape (see the module notes)."""
    return Baseline(reference, mask, smoothing).psi(live)


def ks_distance(reference: np.ndarray, live: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Largest gap between the two empirical CDFs per row, over the bin edges (unsmoothed)."""
    return Baseline(reference, mask).ks(live)


class Baseline:
    """A reference histogram prepared once, to score many live ones against it (``psi``, ``ks``).

    A drift monitor scores its window every ~1% of it against the same
    reference: the reference's proportions and CDF are computed here once.
    """

    def __init__(
        self, reference: np.ndarray, mask: np.ndarray | None = None, smoothing: float = DEFAULT_SMOOTHING
    ) -> None:
        ref = np.atleast_2d(np.asarray(reference, dtype=np.float64))
        self.valid = np.ones(ref.shape, dtype=bool) if mask is None else np.atleast_2d(mask).astype(bool)
        self.smoothing = smoothing
        self.p = np.where(self.valid, smoothed_proportions(ref, self.valid, smoothing), 1.0)
        masked = ref * self.valid
        self.f_ref = np.cumsum(masked, axis=-1) / np.maximum(masked.sum(axis=-1, keepdims=True), 1.0)

    def psi(self, live: np.ndarray) -> np.ndarray:
        """PSI per row of ``live`` against the reference."""
        q = smoothed_proportions(np.atleast_2d(live), self.valid, self.smoothing)
        q = np.where(self.valid, q, 1.0)  # padding: (1 - 1) ln 1 = 0
        result: np.ndarray = ((q - self.p) * np.log(q / self.p)).sum(axis=-1)
        return result

    def ks(self, live: np.ndarray) -> np.ndarray:
        """KS distance per row of ``live`` from the reference."""
        cur = np.atleast_2d(np.asarray(live, dtype=np.float64)) * self.valid
        f_cur = np.cumsum(cur, axis=-1) / np.maximum(cur.sum(axis=-1, keepdims=True), 1.0)
        result: np.ndarray = np.abs(self.f_ref - f_cur).max(axis=-1)
        return result
