"""The ML-BOM's ``reference`` section: what a model's training data looked like, as noised histograms.

Serving's drift monitor and extraction guard read it (:func:`bom_reference`)
and bin live traffic the same way (:func:`bin_indices`). How the section is
built — bin edges from the coordinator's held-out set, noised counts summed
under secure aggregation, never one site's counts in the clear — is the
federation's business (:mod:`federation.reference`); this module holds only
the published form, so that a serving process needs no federation code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifecycle.bom.lineage import read_lineage
from lifecycle.errors import ConfigurationError

Edges = tuple[tuple[float, ...], ...]
"""Interior bin edges per feature; feature ``j`` has ``len(edges[j]) + 1`` bins, the outer two open."""


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
