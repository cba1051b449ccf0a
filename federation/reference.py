"""Reference statistics of a model's training data: per-feature histograms, never records.

Drift monitoring (``serving.drift``) compares live traffic with the data a
model was trained on. In a federation nobody holds that data, so the
reference is built from aggregates only:

1. the coordinator fixes per-feature **bin edges** from the quantiles of its
   own held-out set (:func:`reference_edges`), and sends them with the
   pre-run identity query;
2. each site answers with the **counts** of its own records in those bins
   (:func:`site_counts`): one integer per bin and feature, nothing else;
3. the coordinator **sums** the sites' counts and adds the predicted-class
   distribution of the final model on its held-out set
   (:class:`ReferenceStats`), which goes, signed with the weights, into the
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
(Abadi et al. 2016 bounds what the *model updates* reveal). The coordinator
learns each site's per-feature marginal histogram over about ten coarse bins,
in clear; the BOM (and so anyone who may read the model) only holds the sum
over all sites. One record changes exactly one count per feature by one, so
the sum is a low-sensitivity aggregate, but the counts carry no noise: a site
with very few records in a tail bin is visible to the coordinator. fedguard
chooses exact counts because drift thresholds (PSI, KS) on a few hundred live
instances are far coarser than a ±1 count, and because noise calibrated for
ε-DP on marginals (the Laplace mechanism, Dwork et al. 2006, sensitivity 1 per
feature histogram, so ``F`` for all features by composition) would consume
budget that the ledger reserves for training. A deployment that must bound
this disclosure should leave the reference out rather than pretend: the
coordinator then publishes no ``reference`` section and serving skips drift
for that model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifecycle.bom import read_lineage
from lifecycle.errors import ConfigurationError

DEFAULT_BINS = 10
EDGES_KEY = "reference-edges"
LENGTHS_KEY = "reference-edge-counts"
COUNTS_KEY = "reference-counts"

Edges = tuple[tuple[float, ...], ...]


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


def padded_edges(edges: Edges) -> np.ndarray:
    """``edges`` as one ``F × max_edges`` array padded with ``+inf`` (vectorised binning)."""
    width = max(len(e) for e in edges)
    out = np.full((len(edges), width), np.inf)
    for j, row in enumerate(edges):
        out[j, : len(row)] = row
    return out


def bin_indices(values: np.ndarray, padded: np.ndarray) -> np.ndarray:
    """Bin of every value (``n × F`` ints): the number of the feature's edges ``<=`` the value."""
    x = np.asarray(values, dtype=np.float64)
    return (x[:, :, None] >= padded[None, :, :]).sum(axis=2)


def histogram(values: np.ndarray, edges: Edges) -> tuple[tuple[int, ...], ...]:
    """Counts of ``values`` (``n × F``) per feature and bin (``len(edges[j]) + 1`` bins each)."""
    index = bin_indices(values, padded_edges(edges))
    return tuple(
        tuple(int(c) for c in np.bincount(index[:, j], minlength=len(row) + 1)[: len(row) + 1])
        for j, row in enumerate(edges)
    )


def encode_edges(edges: Edges) -> dict[str, list[float] | list[int]]:
    """Flat lists for a Flower ``ConfigRecord`` (it holds no nested lists)."""
    return {EDGES_KEY: [e for row in edges for e in row], LENGTHS_KEY: [len(row) for row in edges]}


def decode_edges(record: Mapping[str, Any]) -> Edges | None:
    """The edges :func:`encode_edges` wrote into ``record``, or ``None`` if it holds none."""
    if EDGES_KEY not in record or LENGTHS_KEY not in record:
        return None
    flat = [float(e) for e in record[EDGES_KEY]]
    lengths = [int(n) for n in record[LENGTHS_KEY]]
    if sum(lengths) != len(flat) or any(n < 1 for n in lengths):
        raise ConfigurationError("the reference edges in the query are malformed; coordinator and site differ")
    out, start = [], 0
    for n in lengths:
        out.append(tuple(flat[start : start + n]))
        start += n
    return tuple(out)


def site_counts(record: Mapping[str, Any], features: np.ndarray) -> dict[str, list[int]]:
    """What a site adds to its identity reply: its flattened counts over the query's edges.

    Empty when the query carries no edges (an older coordinator, or a run
    without reference statistics). Only counts leave the site.

    Raises
    ------
    ConfigurationError
        The edges do not match the number of features.
    """
    edges = decode_edges(record)
    if edges is None:
        return {}
    if len(edges) != features.shape[1]:
        raise ConfigurationError(
            f"the query has reference edges for {len(edges)} features but the data has {features.shape[1]}"
        )
    return {COUNTS_KEY: [c for row in histogram(features, edges) for c in row]}


def split_counts(flat: Sequence[int], edges: Edges) -> tuple[tuple[int, ...], ...]:
    """Per-feature counts from a site's flat list.

    Raises
    ------
    ConfigurationError
        The list does not have one count per bin.
    """
    lengths = [len(row) + 1 for row in edges]
    if len(flat) != sum(lengths) or any(int(c) < 0 for c in flat):
        raise ConfigurationError(f"expected {sum(lengths)} non-negative reference counts, got {len(flat)}")
    out, start = [], 0
    for n in lengths:
        out.append(tuple(int(c) for c in flat[start : start + n]))
        start += n
    return tuple(out)


@dataclass(frozen=True)
class ReferenceStats:
    """The BOM's ``reference`` section: summed histograms and the predicted-class distribution.

    Attributes
    ----------
    features
        Feature names, in the schema's order.
    edges
        Interior edges per feature; feature ``j`` has ``len(edges[j]) + 1`` bins.
    counts
        Records per feature and bin, summed over ``sites``.
    classes
        Class names (or indices as strings) of ``predictions``.
    predictions
        Predicted-class counts of the published model on the coordinator's held-out set.
    sites
        Sites whose counts are included.
    """

    features: tuple[str, ...]
    edges: Edges
    counts: tuple[tuple[int, ...], ...]
    classes: tuple[str, ...]
    predictions: tuple[int, ...]
    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.features) != len(self.edges) or len(self.counts) != len(self.edges):
            raise ConfigurationError("reference statistics need edges and counts for every feature")
        if any(len(c) != len(e) + 1 for c, e in zip(self.counts, self.edges, strict=True)):
            raise ConfigurationError("reference counts need one count per bin (edges + 1)")
        if len(self.classes) != len(self.predictions):
            raise ConfigurationError("reference predictions need one count per class")

    @property
    def num_records(self) -> int:
        """Records counted (every feature's histogram sums to it)."""
        return sum(self.counts[0]) if self.counts else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "per-feature histograms summed over sites; predicted classes on the held-out set",
            "features": list(self.features),
            "edges": [list(e) for e in self.edges],
            "counts": [list(c) for c in self.counts],
            "num_records": self.num_records,
            "classes": list(self.classes),
            "predictions": list(self.predictions),
            "sites": list(self.sites),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceStats:
        return cls(
            features=tuple(str(f) for f in data["features"]),
            edges=tuple(tuple(float(e) for e in row) for row in data["edges"]),
            counts=tuple(tuple(int(c) for c in row) for row in data["counts"]),
            classes=tuple(str(c) for c in data["classes"]),
            predictions=tuple(int(c) for c in data["predictions"]),
            sites=tuple(str(s) for s in data.get("sites", ())),
        )


def bom_reference(bom: Mapping[str, Any]) -> ReferenceStats | None:
    """The reference statistics signed into ``bom``, or ``None`` for a model published without.

    Raises
    ------
    ConfigurationError
        The section exists but is malformed.
    """
    try:
        section = read_lineage(bom).get("reference")
        if not section:
            return None
        return ReferenceStats.from_dict(section)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"the BOM's reference section is malformed ({exc}); re-publish the model") from exc
