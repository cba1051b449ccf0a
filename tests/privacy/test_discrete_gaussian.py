"""The distributed discrete Gaussian: the sampler's law, the ε of a sum of shares, its calibration."""

from __future__ import annotations

import math
from dataclasses import replace

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.errors import ConfigurationError
from privacy.accountants import calibrate_noise
from privacy.discrete_gaussian import DistributedPlan, ddg_epsilon, sample


def test_sampler_follows_the_discrete_gaussian_law() -> None:
    sigma, n = 2.5, 400_000
    draws = sample(sigma, n, np.random.default_rng(0))
    assert draws.dtype == np.int64
    support = np.arange(-40, 41)
    pmf = np.exp(-(support**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    observed = np.bincount(draws - support[0], minlength=support.size)[: support.size] / n
    # each frequency within 5 standard errors of the exact probability
    assert np.all(np.abs(observed - pmf) <= 5 * np.sqrt(pmf * (1 - pmf) / n) + 1e-9)
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(n)


def test_a_sum_of_shares_has_the_planned_spread() -> None:
    plan = DistributedPlan.calibrate(0.5, 1e-5, math.sqrt(30), 300, 3, 5)
    rng = np.random.default_rng(1)
    total = sum(sample(plan.sigma, 200_000, rng) for _ in range(5))
    assert total.std() == pytest.approx(math.sqrt(5) * plan.sigma, rel=0.01)
    assert plan.total_std == pytest.approx(math.sqrt(3) * plan.sigma)


def test_epsilon_matches_an_independent_rdp_accountant() -> None:
    """Known answer: the ledger's ε of the release equals dp-accounting's for a Gaussian with z = 1/ε_zCDP."""
    for features, low, high in ((1, 1, 1), (30, 3, 5), (64, 2, 20)):
        plan = DistributedPlan.calibrate(0.5, 1e-5, math.sqrt(features), 10 * features, low, high)
        accountant = rdp_privacy_accountant.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(plan.noise_multiplier))
        assert plan.epsilon() == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-3)
        assert plan.epsilon() <= 0.5


@pytest.mark.parametrize(("sigma", "low", "high"), [(0.5, 1, 1), (0.9, 3, 40), (1.3, 500, 1000), (0.6, 1, 1000)])
def test_the_worst_case_over_shares_is_the_per_n_bound_to_the_last_bit(sigma: float, low: int, high: int) -> None:
    """The linear-time bound over n_min…n_max (τ's sum carried over n) is ``max ddg_epsilon(n)``, exactly."""
    plan = DistributedPlan(sigma, math.sqrt(30), 300, low, high, 1e-5)
    assert plan.zcdp_epsilon == max(ddg_epsilon(sigma, plan.l2, plan.dim, n) for n in range(low, high + 1))


def test_a_calibration_is_searched_once_per_process() -> None:
    first = DistributedPlan.calibrate(0.5, 1e-5, math.sqrt(30), 300, 400, 1000)
    assert DistributedPlan.calibrate(0.5, 1e-5, math.sqrt(30), 300, 400, 1000) is first  # the same frozen plan
    target = 1 / calibrate_noise(0.5, 1e-5, 1.0, 1, "rdp")  # the Gaussian the ledger records
    assert first.zcdp_epsilon <= target < replace(first, sigma=first.sigma / 1.001).zcdp_epsilon  # the smallest σ


def test_one_share_is_a_valid_bound_on_the_exact_discrete_gaussian() -> None:
    """With one summand the bound is the discrete Gaussian's own: never below the tight PLD ε, and close to it."""
    plan = DistributedPlan.calibrate(0.5, 1e-5, 1.0, 10, 1, 1)
    tight = privacy_loss_distribution.from_discrete_gaussian_mechanism(plan.sigma, sensitivity=1)
    exact = tight.get_epsilon_for_delta(1e-5)
    assert exact <= plan.epsilon() <= 1.15 * exact


def test_kairouz_bound_terms() -> None:
    # τ vanishes for σ ≥ 2 (e^{−2π²·4·½} ≈ 7e−18), so ε = Δ₂ / (√n σ)
    assert ddg_epsilon(10.0, math.sqrt(30), 300, 5) == pytest.approx(math.sqrt(30) / (math.sqrt(5) * 10.0))
    # at σ = ½ the τ term is visible: it grows with the number of summands and √d
    tau = 10 * math.exp(-math.pi**2 / 4)  # n = 2: one term, k = 1
    assert ddg_epsilon(0.5, 1.0, 100, 2) == pytest.approx(1.0 / (math.sqrt(2) * 0.5) + tau * 10)
    assert ddg_epsilon(0.5, 1.0, 100, 10) > ddg_epsilon(0.5, 1.0, 100, 2)
    with pytest.raises(ConfigurationError, match="σ ≥ 0.5"):
        ddg_epsilon(0.4, 1.0, 10, 2)


@settings(max_examples=30, deadline=None)
@given(epsilon=st.floats(0.05, 5.0), features=st.integers(1, 100), low=st.integers(1, 10), extra=st.integers(0, 10),
       delta=st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_the_calibrated_share_never_overshoots_and_wastes_little(
    epsilon: float, features: int, low: int, extra: int, delta: float,
) -> None:
    plan = DistributedPlan.calibrate(epsilon, delta, math.sqrt(features), 10 * features, low, low + extra)
    assert plan.epsilon() <= epsilon * (1 + 1e-9)
    assert plan.epsilon() >= 0.85 * epsilon or plan.sigma == 0.5  # σ is at its floor, or the budget is used
    for n in range(low, low + extra + 1):  # every sum the protocol may release is covered
        assert 1 / ddg_epsilon(plan.sigma, math.sqrt(features), 10 * features, n) >= plan.noise_multiplier - 1e-12


def test_invalid_plans_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="n_min"):
        DistributedPlan(3.0, 1.0, 10, 4, 3, 1e-5)
    with pytest.raises(ConfigurationError, match="σ > 0"):
        sample(0.0, 3, np.random.default_rng(0))
