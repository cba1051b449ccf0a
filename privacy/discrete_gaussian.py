"""The distributed discrete Gaussian: integer noise that sites add before a secure sum.

A statistic that DP-SGD does not cover (the sites' reference histograms,
:mod:`federation.reference`) is released as a sum over sites that only a
secure sum (SecAgg+ or CKKS) reveals. The coordinator never sees one site's
vector, so it cannot add the noise itself: each site adds its *share*, an
integer vector of independent discrete Gaussians ``N_Z(0, σ²)``, and the sum
of ``n ≥ n_min`` shares carries noise of variance about ``n·σ²``. Integer
noise keeps the whole pipeline in integers (counts + noise are summed exactly
modulo 2^32 under SecAgg+), so no rounding of a continuous Gaussian, which
Kairouz et al. show degrades the guarantee, is ever needed.

The guarantee of the sum is Kairouz, Liu & Steinke's bound (below): for a
change ``Δ ∈ Z^d`` of one contribution (``‖Δ‖₂`` its L2 norm), the sum of
``n`` shares is ``½ε²``-zCDP with ``ε = ‖Δ‖₂ / (√n·σ) + τ·√d``, ``τ = 10
Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1))``. That is the Rényi curve of a Gaussian
mechanism with noise multiplier ``z = 1/ε``, which is how the privacy ledger
records it (a :class:`GaussianHistory` with ``q = 1``, one step, RDP): both
the coordinator and the site compute the charge with :meth:`DistributedPlan.history`.

What voids the guarantee
------------------------
* Fewer than ``n_min`` shares in the sum. The secure sum refuses to output one
  (SecAgg+ aborts under its threshold ``t ≥ n_min``; CKKS sites refuse to
  decrypt a sum whose contribution counter is below ``n_min``).
* Any accountant but RDP for these charges: zCDP bounds the Rényi curve, not
  the whole privacy-loss distribution that the PRV accountant assumes.
* A predictable noise source: :func:`secure_generator` seeds numpy's PCG64
  with 128 bits from :mod:`secrets` (as :mod:`privacy.site_dp` does); the
  sampler uses floating point (not the exact rational arithmetic of Canonne
  et al.'s Algorithm 3), so its output distribution differs from
  ``N_Z(0, σ²)`` at the level of float64 rounding.

Notes
-----
Canonne, Kamath & Steinke (2020), "The Discrete Gaussian for Differential
Privacy" (NeurIPS): definition, ``½(Δ/σ)²``-zCDP of one discrete Gaussian,
and the sampler (Algorithm 3: discrete Laplace proposals with rejection).
Kairouz, Liu & Steinke (2021), "The Distributed Discrete Gaussian Mechanism
for Federated Learning with Secure Aggregation" (ICML), Theorem 1 and
Proposition 14: the bound on the sum of independent shares used here. zCDP
and its Rényi form: Bun & Steinke (2016); (ε, δ) conversion by the ledger's
RDP accountant (Balle et al. 2020).
"""

from __future__ import annotations

import functools
import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from lifecycle.errors import ConfigurationError
from privacy.accountants import GaussianHistory, calibrate_noise

MIN_SIGMA = 0.5
"""Kairouz et al.'s bound holds for share scales σ ≥ 1/2."""


def secure_generator() -> np.random.Generator:
    """A fresh numpy generator seeded with 128 bits from the OS CSPRNG (:mod:`secrets`)."""
    return np.random.default_rng(secrets.randbits(128))


def sample(sigma: float, size: int, generator: np.random.Generator) -> np.ndarray:
    """``size`` independent draws of the discrete Gaussian ``N_Z(0, σ²)`` (int64).

    Canonne et al.'s Algorithm 3, vectorised: propose ``Y`` from the discrete
    Laplace with scale ``t = ⌊σ⌋ + 1`` (the difference of two geometric
    variables), accept with probability ``exp(−(|Y| − σ²/t)² / (2σ²))``,
    repeat for the rejected ones (acceptance ≥ ~0.5 per round).
    """
    if not (sigma > 0 and math.isfinite(sigma)) or size < 0:
        raise ConfigurationError(f"discrete Gaussian needs σ > 0 and a size ≥ 0, got σ={sigma}, size={size}")
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of each geometric: 1 − e^{−1/t}
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        proposal = generator.geometric(p, pending.size) - generator.geometric(p, pending.size)
        accept = generator.random(pending.size) < np.exp(-((np.abs(proposal) - sigma**2 / t) ** 2) / (2 * sigma**2))
        out[pending[accept]] = proposal[accept]
        pending = pending[~accept]
    return out


def ddg_epsilon(sigma: float, l2: float, dim: int, summands: int) -> float:
    """Kairouz et al.'s ``ε`` (the sum of ``summands`` shares is ``½ε²``-zCDP) for sensitivity ``l2``.

    ``ε = l2 / (√n·σ) + τ·√d`` with ``τ = 10 Σ_{k=1}^{n−1} exp(−2π²σ² k/(k+1))``
    (Proposition 14; its zCDP form is Theorem 1's second bound).
    """
    _check(sigma, l2, dim, summands)
    tau = 10.0 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, summands))
    return l2 / (math.sqrt(summands) * sigma) + tau * math.sqrt(dim)


def _check(sigma: float, l2: float, dim: int, summands: int) -> None:
    if sigma < MIN_SIGMA or summands < 1 or dim < 1 or l2 <= 0:
        raise ConfigurationError(
            f"the distributed discrete Gaussian bound needs σ ≥ {MIN_SIGMA}, n ≥ 1, d ≥ 1 and a positive "
            f"sensitivity; got σ={sigma}, n={summands}, d={dim}, Δ₂={l2}"
        )


def _tau_prefix(sigma: float, summands: int) -> Iterator[float]:
    """``τ`` of :func:`ddg_epsilon` for ``n = 1 … summands``, each sum continued from the previous one."""
    total: float = 0  # sum()'s own start, so each partial sum is the float sum() would give
    yield 10.0 * total
    for k in range(1, summands):
        total += math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1))
        yield 10.0 * total


@dataclass(frozen=True)
class DistributedPlan:
    """Each site's share ``σ`` and what the sum of ``n_min … n_max`` shares is worth.

    Attributes
    ----------
    sigma
        Scale of each site's discrete Gaussian share.
    l2
        L2 sensitivity of one contribution (``√F`` for F per-feature histograms).
    dim
        Length of the summed vector.
    min_contributors, max_contributors
        The fewest shares the secure sum outputs, and the most it may hold.
    delta
        The δ at which the ledger reports ε.
    """

    sigma: float
    l2: float
    dim: int
    min_contributors: int
    max_contributors: int
    delta: float

    def __post_init__(self) -> None:
        if not 1 <= self.min_contributors <= self.max_contributors:
            raise ConfigurationError(
                f"contributors must satisfy 1 ≤ n_min ≤ n_max, got {self.min_contributors}, {self.max_contributors}"
            )
        if not 0 < self.delta < 1:
            raise ConfigurationError(f"invalid δ={self.delta}: use 0 < δ < 1")

    @classmethod
    def calibrate(cls, epsilon: float, delta: float, l2: float, dim: int, min_contributors: int,
                  max_contributors: int) -> DistributedPlan:
        """The smallest share σ (to 0.1 %) whose sum of ``n_min…n_max`` shares spends ≤ ``epsilon``.

        The Gaussian noise multiplier ``z*`` that meets (ε, δ) on one step is
        found with the ledger's own accountant; then σ starts at
        ``z*·l2/√n_min`` and grows until Kairouz et al.'s bound is ``≤ 1/z*``
        for every possible number of shares. The coordinator and every site
        calibrate with the same inputs, so a process searches once per inputs
        (the plan is immutable).
        """
        return _calibrated(epsilon, delta, l2, dim, min_contributors, max_contributors)

    @property
    def zcdp_epsilon(self) -> float:
        """The worst ``ε`` of Kairouz et al.'s bound over ``n_min … n_max`` shares.

        :func:`ddg_epsilon` for each ``n``, with ``τ``'s sum carried from one
        ``n`` to the next (the same terms added in the same order, so the same
        floats) instead of summed afresh: linear in ``n_max``, not quadratic
        (at 1000 sites 0.5 ms instead of 111 ms, and every site evaluates it
        for its calibration, its charge and its ε).
        """
        _check(self.sigma, self.l2, self.dim, self.max_contributors)
        worst = -math.inf
        for n, tau in enumerate(_tau_prefix(self.sigma, self.max_contributors), start=1):
            if n >= self.min_contributors:
                worst = max(worst, self.l2 / (math.sqrt(n) * self.sigma) + tau * math.sqrt(self.dim))
        return worst

    @property
    def noise_multiplier(self) -> float:
        """``z = 1/ε``: the Gaussian mechanism whose Rényi curve bounds the sum's (what the ledger records)."""
        return 1.0 / self.zcdp_epsilon

    @property
    def total_std(self) -> float:
        """Standard deviation of the noise in a sum of ``n_min`` shares (at most; about ``√n_min·σ``)."""
        return math.sqrt(self.min_contributors) * self.sigma

    def history(self) -> GaussianHistory:
        """The ledger's view of this release: one Gaussian step, q = 1, RDP."""
        return GaussianHistory(self.noise_multiplier, 1.0, 1, self.delta, "rdp")

    def epsilon(self) -> float:
        """ε of this release at :attr:`delta` (RDP accountant)."""
        return self.history().epsilon()


@functools.lru_cache(maxsize=64)
def _calibrated(epsilon: float, delta: float, l2: float, dim: int,
                min_contributors: int, max_contributors: int) -> DistributedPlan:
    """:meth:`DistributedPlan.calibrate`'s search, once per inputs in a process."""
    target = 1.0 / calibrate_noise(epsilon, delta, 1.0, 1, "rdp")
    sigma = max(MIN_SIGMA, l2 / (target * math.sqrt(min_contributors)))
    plan = DistributedPlan(sigma, l2, dim, min_contributors, max_contributors, delta)
    while plan.zcdp_epsilon > target:
        plan = DistributedPlan(plan.sigma * 1.001, l2, dim, min_contributors, max_contributors, delta)
    return plan
