"""Reference statistics of a model's training data: per-feature histograms, never records.

Drift monitoring (``serving.drift``) compares live traffic with the data a
model was trained on. In a federation nobody holds that data, so the
reference is built from aggregates only:

1. the coordinator fixes per-feature **bin edges** from the quantiles of its
   own held-out set (:func:`reference_edges`), and sends them in its reference
   offer, right after the pre-run identity query;
2. each site computes the **counts** of its own records in those bins
   (:func:`lifecycle.bom.reference.histogram`): one integer per bin and feature, nothing else, adds
   its share of noise, and releases them only into a secure sum;
3. the coordinator learns the **noised sum** and adds the predicted-class
   distribution of the final model on its held-out set
   (:class:`lifecycle.bom.reference.ReferenceStats`), which goes, signed with the weights, into the
   ``reference`` section of the ML-BOM.

Why quantile edges of the held-out set: the schema declares no ranges, and the
coordinator's held-out set is the only data it holds (it already fixes the
model's input standardization from it). Quantile edges put roughly the same
mass in every bin, which is what PSI and a binned Kolmogorov–Smirnov statistic
need to be sensitive everywhere; fixed-width edges would waste bins on empty
tails of skewed features. The two outer bins are open (``(-inf, e_1)`` and
``[e_k, inf)``), so live values outside the training range are counted, not
dropped. Edges are fixed *before* any site answers, so one site's data cannot
move them.

Notes
-----
Disclosure. Histogram counts are not covered by the sites' DP-SGD ε
(Abadi et al. 2016 bounds what the *model updates* reveal), so since issue 12
no site sends them in the clear: each site adds its share of a distributed
discrete Gaussian noise (:mod:`privacy.discrete_gaussian`, Kairouz, Liu &
Steinke 2021; Canonne, Kamath & Steinke 2020) to its counts and the noised
vectors are summed by a dedicated secure sum (:mod:`privacy.secure_sum`:
SecAgg+ or CKKS, whichever the run uses), run once after the identity query
(:mod:`federation.reference_share`). The coordinator, and so the BOM, learns
only the noised sum. One record changes one count per feature by one
(add/remove adjacency), so the whole histogram vector has L2 sensitivity
``√F`` for ``F`` features; the sum is ``(ε, δ)``-DP at the run's
``reference-epsilon`` (default 0.5) and ``dp-delta``, charged to every
contributing site's ledger as its own mechanism (kind ``reference``).

Why a small ε suffices, and where it does not: drift thresholds are coarse
(PSI 0.1/0.25, a KS distance of a few percent over a few hundred live
instances). With ``B`` bins per feature and ``N`` records the noise of
standard deviation ``s`` per count shifts the reference's PSI by about
``B²·s²/N²``; at the default ε and ``F = 30`` features ``s ≈ 55`` (σ of the
sum, five sites under SecAgg+), so the reference is accurate to PSI ≈ 0.01
from about 5 000 records on, and noise-dominated for the bundled demo sets
(a few hundred records). Noised counts may be negative: they are clipped at 0
(post-processing) when the reference is built.

A site can decline (node config ``share-reference = false``): it takes no
part in the sum, and the BOM lists the sites included and counts the ones
that declined. Without secure aggregation (``secure-aggregation = "none"``)
or with ``reference-epsilon = 0`` no site is asked: the BOM's ``reference``
section says why it is left out, and serving skips drift for that model.
"""

from __future__ import annotations

import numpy as np

from lifecycle.bom.reference import Edges
from lifecycle.errors import ConfigurationError

DEFAULT_BINS = 10


def reference_edges(features: np.ndarray, bins: int = DEFAULT_BINS) -> Edges:
    """Interior bin edges per feature: the ``1/bins … (bins-1)/bins`` quantiles of ``features``.

    Repeated quantiles (a discrete or constant feature) are merged, so a
    feature may get fewer bins; a constant feature gets one edge (two bins).
    """
    if bins < 2:
        raise ConfigurationError(f"reference histograms need at least 2 bins, not {bins}")
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ConfigurationError("reference edges need a non-empty 2-D array of features")
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1], axis=0).T
    return tuple(tuple(float(e) for e in np.unique(row)) for row in quantiles)
