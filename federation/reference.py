"""Reference statistics of a model's training data: per-feature histograms, never records.

Drift monitoring (``serving.drift``) compares live traffic with the data a
model was trained on. In a federation nobody holds that data, so the
reference is built from aggregates only:

1. the coordinator fixes per-feature **bin edges** from the quantiles of its
   own held-out set (:func:`reference_edges`), and sends them in its reference
   offer, right after the pre-run identity query;
2. each site computes the **counts** of its own records in those bins
   (:func:`histogram`): one integer per bin and feature, nothing else, adds
   its share of noise, and releases them only into a secure sum;
3. the coordinator learns the **noised sum** and adds the predicted-class
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifecycle.bom import read_lineage
from lifecycle.errors import ConfigurationError

DEFAULT_BINS = 10
EDGES_KEY = "reference-edges"
LENGTHS_KEY = "reference-edge-counts"

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
    index: np.ndarray = (x[:, :, None] >= padded[None, :, :]).sum(axis=2)
    return index


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


def flat_histogram(values: np.ndarray, edges: Edges) -> np.ndarray:
    """:func:`histogram` as one int64 vector (feature after feature): what a site puts into the secure sum."""
    return np.fromiter((c for row in histogram(values, edges) for c in row), dtype=np.int64)


def num_bins(edges: Edges) -> int:
    """Length of the flat histogram vector over ``edges``."""
    return sum(len(row) + 1 for row in edges)


def split_counts(flat: Sequence[int], edges: Edges) -> tuple[tuple[int, ...], ...]:
    """Per-feature counts from a flat vector; a noised count below 0 becomes 0 (post-processing).

    Raises
    ------
    ConfigurationError
        The vector does not have one count per bin.
    """
    lengths = [len(row) + 1 for row in edges]
    if len(flat) != sum(lengths):
        raise ConfigurationError(f"expected {sum(lengths)} reference counts, got {len(flat)}")
    out, start = [], 0
    for n in lengths:
        out.append(tuple(max(0, int(c)) for c in flat[start : start + n]))
        start += n
    return tuple(out)


@dataclass(frozen=True)
class ReferenceNoise:
    """How the reference's counts were protected: the secure sum and the distributed noise.

    Attributes
    ----------
    secure_sum
        ``"secagg+"`` or ``"ckks"``: the only way the sites' counts left them.
    epsilon, delta
        The (ε, δ) charged to each contributing site's ledger (kind ``reference``, RDP).
    sigma_share
        Scale of each site's discrete Gaussian share, per count.
    noise_std
        Standard deviation of the noise in the sum, per count (``√n·σ`` for the ``n`` shares it holds).
    min_contributors
        The fewest shares any sum the protocol releases holds (each share is sized for it).
    """

    secure_sum: str
    epsilon: float
    delta: float
    sigma_share: float
    noise_std: float
    min_contributors: int

    def to_dict(self) -> dict[str, Any]:
        return {"secure_sum": self.secure_sum, "mechanism": "distributed discrete Gaussian", "epsilon": self.epsilon,
                "delta": self.delta, "sigma_share": self.sigma_share, "noise_std": self.noise_std,
                "min_contributors": self.min_contributors}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceNoise:
        return cls(str(data["secure_sum"]), float(data["epsilon"]), float(data["delta"]),
                   float(data["sigma_share"]), float(data["noise_std"]), int(data["min_contributors"]))


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
        Records per feature and bin, summed over ``sites`` (noised, clipped at 0, when ``noise`` is set).
    classes
        Class names (or indices as strings) of ``predictions``.
    predictions
        Predicted-class counts of the published model on the coordinator's held-out set.
    sites
        Sites whose counts are included.
    declined
        Sites that declined to share theirs (node config ``share-reference = false``, or their budget).
    noise
        The protection of ``counts`` (``None``: exact counts, e.g. a reference built from one's own data).
    """

    features: tuple[str, ...]
    edges: Edges
    counts: tuple[tuple[int, ...], ...]
    classes: tuple[str, ...]
    predictions: tuple[int, ...]
    sites: tuple[str, ...] = ()
    declined: int = 0
    noise: ReferenceNoise | None = None

    def __post_init__(self) -> None:
        if len(self.features) != len(self.edges) or len(self.counts) != len(self.edges):
            raise ConfigurationError("reference statistics need edges and counts for every feature")
        if any(len(c) != len(e) + 1 for c, e in zip(self.counts, self.edges, strict=True)):
            raise ConfigurationError("reference counts need one count per bin (edges + 1)")
        if any(c < 0 for row in self.counts for c in row):
            raise ConfigurationError("reference counts cannot be negative (clip noised counts at 0)")
        if len(self.classes) != len(self.predictions):
            raise ConfigurationError("reference predictions need one count per class")

    @property
    def num_records(self) -> int:
        """Records counted (every feature's histogram sums to it; an estimate when noised)."""
        return sum(self.counts[0]) if self.counts else 0

    def to_dict(self) -> dict[str, Any]:
        kind = "per-feature histograms summed over sites; predicted classes on the held-out set"
        return {
            "included": True,
            "kind": kind if self.noise is None else kind.replace("summed", "noised and securely summed"),
            "features": list(self.features),
            "edges": [list(e) for e in self.edges],
            "counts": [list(c) for c in self.counts],
            "num_records": self.num_records,
            "classes": list(self.classes),
            "predictions": list(self.predictions),
            "sites": list(self.sites),
            "sites_declined": self.declined,
            **({"privacy": self.noise.to_dict()} if self.noise is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceStats:
        return cls(
            features=tuple(str(f) for f in data["features"]),
            edges=tuple(tuple(float(e) for e in row) for row in data["edges"]),
            counts=tuple(tuple(max(0, int(c)) for c in row) for row in data["counts"]),
            classes=tuple(str(c) for c in data["classes"]),
            predictions=tuple(int(c) for c in data["predictions"]),
            sites=tuple(str(s) for s in data.get("sites", ())),
            declined=int(data.get("sites_declined", 0)),
            noise=ReferenceNoise.from_dict(data["privacy"]) if data.get("privacy") else None,
        )


def omitted_section(reason: str, declined: int = 0) -> dict[str, Any]:
    """The BOM's ``reference`` section of a model published without one, saying why."""
    return {"included": False, "reason": reason, "sites_declined": declined}


def bom_reference(bom: Mapping[str, Any]) -> ReferenceStats | None:
    """The reference statistics signed into ``bom``, or ``None`` for a model published without.

    Raises
    ------
    ConfigurationError
        The section exists but is malformed.
    """
    try:
        section = read_lineage(bom).get("reference")
        if not section or section.get("included") is False:
            return None
        return ReferenceStats.from_dict(section)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"the BOM's reference section is malformed ({exc}); re-publish the model") from exc
