"""Known answers for PSI and the binned KS distance, against scipy on the same bins."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy, ks_2samp

from serving.drift.statistics import ks_distance, psi, smoothed_proportions


@pytest.mark.parametrize("seed", range(5))
def test_psi_is_the_symmetrised_kl_divergence_of_the_smoothed_proportions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref, live = rng.integers(0, 50, size=8), rng.integers(0, 50, size=8)
    ref[seed % 8] = 0  # an empty bin: smoothing keeps PSI finite
    mask = np.ones(8, dtype=bool)
    p, q = smoothed_proportions(ref, mask), smoothed_proportions(live, mask)
    assert psi(ref, live)[0] == pytest.approx(entropy(p, q) + entropy(q, p), rel=1e-12)


def test_psi_known_value_and_padding_bins_count_nothing() -> None:
    ref, live = np.array([50, 50]), np.array([90, 10])
    p, q = np.array([50.5, 50.5]) / 101, np.array([90.5, 10.5]) / 101
    expected = float(((q - p) * np.log(q / p)).sum())
    rows = psi(np.array([[50, 50, 0], [25, 25, 50]]), np.array([[90, 10, 0], [25, 25, 50]]),
               np.array([[True, True, False], [True, True, True]]))
    assert rows[0] == pytest.approx(expected) and rows[1] == pytest.approx(0.0)
    assert psi(ref, live)[0] == pytest.approx(expected)
    assert psi(ref, ref)[0] == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_binned_ks_equals_scipy_ks_2samp_on_the_bin_indices(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    ref, live = rng.integers(0, 40, size=10), rng.integers(0, 40, size=10)
    ref_samples, live_samples = np.repeat(np.arange(10), ref), np.repeat(np.arange(10), live)
    expected = ks_2samp(ref_samples, live_samples).statistic
    assert ks_distance(ref, live)[0] == pytest.approx(expected, abs=1e-12)
    padded = ks_distance(np.append(ref, 0), np.append(live, 0), np.append(np.ones(10, bool), False))
    assert padded[0] == pytest.approx(expected, abs=1e-12)


def test_a_shift_scores_high_and_the_same_distribution_low() -> None:
    rng = np.random.default_rng(7)
    edges = np.quantile(rng.normal(size=5000), np.linspace(0, 1, 11)[1:-1])
    ref = np.bincount(np.searchsorted(edges, rng.normal(size=5000), side="right"), minlength=10)
    same = np.bincount(np.searchsorted(edges, rng.normal(size=500), side="right"), minlength=10)
    shifted = np.bincount(np.searchsorted(edges, rng.normal(1.0, 1.0, size=500), side="right"), minlength=10)
    assert psi(ref, same)[0] < 0.1 and ks_distance(ref, same)[0] < 0.1
    assert psi(ref, shifted)[0] > 0.25 and ks_distance(ref, shifted)[0] > 0.3
