"""Accountants: a published known answer, agreement with Google's dp-accounting, composition."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp

from lifecycle.errors import ConfigurationError
from privacy.accountants import (
    OPACUS_DEFAULT_ORDERS,
    GaussianHistory,
    calibrate_noise,
    compose,
    create_accountant,
    epsilon_series,
    naive_epsilon_sum,
)

# Abadi et al. (2016), "Deep Learning with Differential Privacy", §3.1: with
# q = 0.01 (lot 600 of MNIST's 60 000), σ = 4, δ = 1e-5 and T = 10 000 steps
# (100 epochs) the moments accountant gives ε ≈ 1.26 (strong composition: 9.34).
ABADI = {"q": 0.01, "sigma": 4.0, "steps": 10_000, "delta": 1e-5, "epsilon": 1.26}


def test_abadi_moments_accountant_value_is_reproduced() -> None:
    """Opacus' RDP of the subsampled Gaussian, converted as the moments accountant did
    (ε = min over integer orders ≤ 32 of RDP(α) + log(1/δ)/(α − 1)), gives the published 1.26."""
    orders = np.arange(2, 34, dtype=float)
    rdp = compute_rdp(q=ABADI["q"], noise_multiplier=ABADI["sigma"], steps=ABADI["steps"], orders=orders)
    classic = float(np.min(rdp + np.log(1 / ABADI["delta"]) / (orders - 1)))
    assert classic == pytest.approx(ABADI["epsilon"], abs=0.005)


def test_our_accountants_are_at_most_the_published_value() -> None:
    """fedguard's ε (tighter RDP conversion, PRV) may only improve on the 2016 bound, and not absurdly."""
    history = dict(noise_multiplier=ABADI["sigma"], sample_rate=ABADI["q"], steps=ABADI["steps"],
                   delta=ABADI["delta"])
    rdp = GaussianHistory(**history, accountant="rdp").epsilon()  # type: ignore[arg-type]
    prv = GaussianHistory(**history, accountant="prv").epsilon()  # type: ignore[arg-type]
    assert 0.75 * ABADI["epsilon"] < prv <= rdp <= ABADI["epsilon"]


# ε from 0.05 to 27. Left out: (q=0.1, σ=0.8, 3000 steps), ε ≈ 90, where dp-accounting drops the
# small orders whose series fails to converge and reports 108 (a looser bound, not a disagreement).
GRID = [(q, sigma, steps) for q in (0.001, 0.01, 0.1) for sigma in (0.8, 1.5, 4.0) for steps in (100, 3000)
        if (q, sigma, steps) != (0.1, 0.8, 3000)]


def _dp_accounting(q: float, sigma: float, steps: int, delta: float, kind: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    acc = dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()
    return float(acc.compose(event).get_epsilon(delta))


@pytest.mark.parametrize(("q", "sigma", "steps"), GRID)
def test_rdp_matches_dp_accounting_within_2_percent(q: float, sigma: float, steps: int) -> None:
    ours = GaussianHistory(sigma, q, steps, 1e-5, "rdp").epsilon()
    assert ours == pytest.approx(_dp_accounting(q, sigma, steps, 1e-5, "rdp"), rel=0.02)


@pytest.mark.parametrize(("q", "sigma", "steps"), [g for g in GRID if g[1] >= 1.5])
def test_prv_matches_dp_accounting_pld_within_2_percent(q: float, sigma: float, steps: int) -> None:
    """PRV (Opacus) against PLD (Google): two numerical accountants of the exact privacy-loss distribution.

    Within 2%, or Opacus' PRV error bound (``eps_error`` = 0.01, absolute) where ε is small.
    """
    ours = GaussianHistory(sigma, q, steps, 1e-5, "prv").epsilon()
    theirs = _dp_accounting(q, sigma, steps, 1e-5, "pld")
    assert ours == pytest.approx(theirs, rel=0.02, abs=0.011)


def test_heterogeneous_composition_matches_dp_accounting() -> None:
    histories = [GaussianHistory(1.0, 0.1, 50, 1e-5), GaussianHistory(2.0, 0.05, 400, 1e-5),
                 GaussianHistory(1.0, 0.1, 25, 1e-5)]
    acc = dp_accounting.rdp.RdpAccountant()
    for h in histories:
        acc.compose(dp_accounting.PoissonSampledDpEvent(
            h.sample_rate, dp_accounting.GaussianDpEvent(h.noise_multiplier)), h.steps)
    assert compose(histories, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=0.02)


def test_compose_merges_exactly_and_beats_the_naive_sum() -> None:
    one = GaussianHistory(1.2, 0.02, 300, 1e-5)
    split = [GaussianHistory(1.2, 0.02, 100, 1e-5)] * 3
    assert compose(split, 1e-5) == pytest.approx(one.epsilon(), rel=1e-9)
    naive, naive_delta = naive_epsilon_sum(split)
    assert compose(split, 1e-5) < naive and naive_delta == pytest.approx(3e-5)
    assert compose([], 1e-5) == 0.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_series_is_per_round_and_ends_at_the_total(accountant: str) -> None:
    series = epsilon_series(1.1, 0.05, 20, 4, 1e-5, accountant)
    assert len(series) == 4 and series == sorted(series) and series[0] > 0
    total = GaussianHistory(1.1, 0.05, 80, 1e-5, accountant).epsilon()
    assert series[-1] == pytest.approx(total, rel=0.02 if accountant == "prv" else 1e-9)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        create_accountant("moments")
    with pytest.raises(ConfigurationError):
        compose([GaussianHistory(1.0, 0.1, 1, 1e-5)], delta=0)
    with pytest.raises(ConfigurationError):
        epsilon_series(1.0, 0.1, 1, -1, 1e-5)


@settings(max_examples=4, deadline=None)
@given(eps=st.floats(0.5, 10.0), q=st.floats(0.1, 1.0), steps=st.integers(1, 100))
def test_calibrated_sigma_never_overshoots(eps: float, q: float, steps: int) -> None:
    sigma = calibrate_noise(eps, 1e-5, q, steps)
    assert GaussianHistory(sigma, q, steps, 1e-5).epsilon() <= eps * 1.0001


def test_a_registered_accountant_is_created_by_name_and_composes() -> None:
    from opacus.accountants import RDPAccountant

    from privacy import accountants

    accountants.register_accountant("rdp-copy", RDPAccountant)
    try:
        assert "rdp-copy" in accountants.ACCOUNTANTS
        assert isinstance(create_accountant("rdp-copy"), RDPAccountant)
        history = [GaussianHistory(1.1, 0.05, 40, 1e-5)]
        assert compose(history, 1e-5, "rdp-copy") == pytest.approx(compose(history, 1e-5, "rdp"), rel=0.05)
        with pytest.raises(ConfigurationError, match="already registered"):
            accountants.register_accountant("rdp", RDPAccountant)
    finally:
        accountants._FACTORIES.pop("rdp-copy", None)


def test_written_out_orders_are_opacus_defaults() -> None:
    """The orders copied so that importing the module spares Opacus' import are exactly Opacus' defaults."""
    from opacus.accountants import RDPAccountant

    assert list(OPACUS_DEFAULT_ORDERS) == list(RDPAccountant.DEFAULT_ALPHAS)


def test_rdp_composition_in_a_fresh_process_needs_no_torch_and_gives_opacus_value() -> None:
    """``fedguard privacy ledger`` composes ε with Opacus' RDP analysis loaded on its own (no torch start-up)."""
    import json
    import subprocess
    import sys

    from opacus.accountants import RDPAccountant

    from privacy.accountants import RDP_ORDERS

    code = ("import json, sys; from privacy.accountants import GaussianHistory, compose; "
            "e = compose([GaussianHistory(1.1, 0.02, 300, 1e-5), GaussianHistory(0.9, 0.05, 40, 1e-5)], 1e-5); "
            "print(json.dumps({'epsilon': e, 'loaded': sorted({'torch', 'opacus'} & set(sys.modules))}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    assert out["loaded"] == []
    accountant = RDPAccountant()
    accountant.history = [(0.9, 0.05, 40), (1.1, 0.02, 300)]
    assert out["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5, alphas=list(RDP_ORDERS)), rel=1e-9)


def test_a_repeated_calibration_returns_the_same_sigma_without_a_second_search() -> None:
    from privacy.accountants import _calibrated

    first = calibrate_noise(3.0, 1e-5, 1 / 7, 42)
    searches = _calibrated.cache_info().misses
    assert calibrate_noise(3, 1e-5, 1 / 7, 42) == first  # an int ε is the same request
    assert _calibrated.cache_info().misses == searches
    assert GaussianHistory(first, 1 / 7, 42, 1e-5).epsilon() <= 3.0 * 1.0001
    with pytest.raises(ConfigurationError):  # the checks still run on every call
        calibrate_noise(3.0, 0.0, 1 / 7, 42)
