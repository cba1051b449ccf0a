"""What honest clipped sites imply for the sum the coordinator unmasks: the arithmetic of the aggregate guard.

Under secure aggregation the coordinator never sees one site's update, only
``S = Σ wᵢΔᵢ`` and ``W = Σ wᵢ`` over the ``n`` sites that were summed. Honest
sites clip ``‖Δᵢ‖₂ ≤ C`` inside their protection mod and weigh at most
``max_weight`` each, so whatever their data:

* ``0 < W ≤ n · max_weight``;
* ``‖S‖₂ ≤ Σ wᵢ‖Δᵢ‖₂ ≤ W · C`` (triangle inequality);
* ``|S_j| ≤ ‖S‖₂ ≤ W · C`` for every coordinate ``j``.

Under site-level DP each site adds ``N(0, std²)`` per trainable coordinate
after clipping (``privacy.site_dp``, weights 1), so the sum carries
``N(0, n·std²)``: its L2 norm exceeds ``√n·std·(√d + t)`` with probability
at most ``exp(−t²/2)`` (Gaussian concentration; ``privacy.site_dp.noised_norm_bound``),
and a coordinate exceeds ``√n·std·√(t² + 2 ln 2d)`` with at most that
probability over all ``d`` coordinates together (union bound). At ``t = 10``
an honest round is rejected with probability below ``2·e⁻⁵⁰ ≈ 4e-22``.

The aggregate reaches the guard as the new global model
``g' = g + S / W`` stored in float32, so ``S`` is rebuilt as ``(g' − g)·W``;
the slack per coordinate covers that storage (two float32 roundings of
``g'``, and one at each site) and the fixed-point or CKKS decoding error of
the sum (``resolution`` per site). Everything else an honest site can do
stays inside the bounds; the property test in
``tests/coordinator/test_aggregate_guard.py`` checks it over seeds.

Notes
-----
Clipping each contribution is what bounds its influence on FedAvg (McMahan et
al. 2018, "Learning Differentially Private Recurrent Language Models"). These
checks only see the sum: a site that stays inside the honest bound (an update
of norm C crafted to do harm) passes them; closing that gap needs per-site
proofs that each masked input is bounded (Bell et al. 2023, "ACORN: Input
Validation for Secure Aggregation"). See docs/secure-aggregation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lifecycle.errors import ConfigurationError

STORAGE_EPS = 2.0**-22
"""Relative float32 error allowed per coordinate: two roundings of 2⁻²⁴ each, doubled for margin."""


@dataclass(frozen=True)
class Violation:
    """Which bound an aggregate broke, by how much (no values of the update itself)."""

    bound: str  # "total-weight", "finite", "l2-norm", "coordinate", "accuracy", "retry-failed"
    measured: float
    limit: float
    detail: str = ""

    def describe(self) -> str:
        if self.bound == "retry-failed":
            return f"the retry could not be aggregated: {self.detail}"
        what = {
            "total-weight": "total weight Σw", "finite": "non-finite values in the aggregate",
            "l2-norm": "L2 norm of the aggregate update ‖Σ wΔ‖", "coordinate": "largest coordinate |Σ wΔ_j|",
            "accuracy": "held-out accuracy drop",
        }[self.bound]
        return f"{what} {self.measured:.6g} > {self.limit:.6g}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class AggregateBounds:
    """The bounds that ``n`` honest clipped sites imply for their unmasked sum (module docstring).

    Parameters
    ----------
    clip_norm : float
        C, the L2 bound of each honest site's update before any site-level noise
        (``clip-norm``; ``site-clip`` under site-level DP).
    max_weight : float
        The largest weight one site may carry (1 under uniform weighting).
    noise_std : float
        Standard deviation of each site's site-level DP noise per coordinate (0: none).
    noise_dim : int
        How many coordinates carry that noise (the model's trainable parameters).
    resolution : float
        Largest decoding error one site's payload adds to a coordinate of the sum
        (``1 / (2·scale)`` for SecAgg+'s fixed point).
    tail : float
        t of the Gaussian tail bounds: an honest round is rejected with probability ≤ 2·exp(−t²/2).
    """

    clip_norm: float
    max_weight: float
    noise_std: float = 0.0
    noise_dim: int = 0
    resolution: float = 0.0
    tail: float = 10.0

    def __post_init__(self) -> None:
        values = (self.clip_norm, self.max_weight, self.noise_std, self.resolution, self.tail)
        if not all(math.isfinite(v) for v in values) or self.clip_norm <= 0 or self.max_weight <= 0:
            raise ConfigurationError("aggregate bounds need a positive finite clipping bound and max weight")
        if self.noise_std < 0 or self.resolution < 0 or self.tail <= 0 or self.noise_dim < 0:
            raise ConfigurationError("aggregate bounds: noise, resolution, tail and dimension must not be negative")

    def noise_norm(self, sites: int) -> float:
        """High-probability bound on ‖Σ noise‖₂ of ``sites`` noised contributions."""
        if self.noise_std == 0 or self.noise_dim == 0:
            return 0.0
        return math.sqrt(sites) * self.noise_std * (math.sqrt(self.noise_dim) + self.tail)

    def noise_coordinate(self, sites: int) -> float:
        """High-probability bound on max_j |Σ noise_j| over the noised coordinates."""
        if self.noise_std == 0 or self.noise_dim == 0:
            return 0.0
        return math.sqrt(sites) * self.noise_std * math.sqrt(self.tail**2 + 2 * math.log(2 * self.noise_dim))

    def check(self, global_vector: np.ndarray, new_vector: np.ndarray, total_weight: float,
              sites: int) -> Violation | None:
        """The first bound that ``g' = new_vector`` (from ``g``, ``W``, ``n``) breaks, or None.

        ``global_vector`` and ``new_vector`` are the flattened models (float64
        copies of the float32 arrays) before and after the round.
        """
        if sites < 1:
            return Violation("total-weight", float(total_weight), 0.0, "no site was summed")
        weight_limit = sites * self.max_weight + sites * self.resolution
        if not (math.isfinite(total_weight) and 0 < total_weight <= weight_limit * (1 + 1e-9)):
            return Violation("total-weight", float(total_weight), weight_limit, f"{sites} site(s) summed")
        if not np.all(np.isfinite(new_vector)):
            return Violation("finite", math.inf, 0.0)
        update_sum = (new_vector - global_vector) * total_weight
        slack = sites * self.resolution + total_weight * STORAGE_EPS * (np.abs(new_vector) + np.abs(global_vector))
        signal, summed = total_weight * self.clip_norm, f"{sites} site(s), Σw = {total_weight:g}"
        norm = float(np.sqrt(np.einsum("i,i->", update_sum, update_sum)))
        norm_limit = signal + self.noise_norm(sites)
        measured = norm - float(np.sqrt(np.einsum("i,i->", slack, slack)))
        if measured > norm_limit * (1 + 1e-9):
            return Violation("l2-norm", measured, norm_limit, summed)
        excess = np.abs(update_sum) - slack
        largest = float(excess.max()) if excess.size else 0.0
        coordinate_limit = signal + self.noise_coordinate(sites)
        if largest > coordinate_limit * (1 + 1e-9):
            return Violation("coordinate", largest, coordinate_limit, summed)
        return None
