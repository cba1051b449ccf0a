"""The binomial p-value: known answers from scipy, an exact property, edge cases."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest  # type: ignore[import-untyped, unused-ignore]

from lifecycle.errors import ConfigurationError
from watermark import binomial_p_value


def _exact(correct: int, n: int, num_classes: int) -> Fraction:
    chance = Fraction(1, num_classes)
    return sum((comb(n, i) * chance**i * (1 - chance) ** (n - i) for i in range(correct, n + 1)), Fraction(0))


@pytest.mark.parametrize(("correct", "n", "chance"), [(64, 64, 0.5), (52, 64, 0.5), (33, 64, 0.5),
                                                      (10, 20, 0.1), (0, 10, 0.5), (7, 30, 1 / 3)])
def test_matches_scipy(correct: int, n: int, chance: float) -> None:
    ours = binomial_p_value(correct, n, chance)
    assert ours == pytest.approx(binomtest(correct, n, chance, alternative="greater").pvalue, rel=1e-9)
    assert ours == pytest.approx(float(binom.sf(correct - 1, n, chance)), rel=1e-12)


def test_known_values() -> None:
    assert binomial_p_value(64, 64, 0.5) == pytest.approx(2.0**-64, rel=1e-12)
    assert binomial_p_value(0, 64, 0.5) == 1.0
    assert binomial_p_value(51, 64, 0.5) < 1e-6 < binomial_p_value(50, 64, 0.5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 120), num_classes=st.integers(2, 10), data=st.data())
def test_matches_exact_sum(n: int, num_classes: int, data: st.DataObject) -> None:
    correct = data.draw(st.integers(0, n))
    exact = float(_exact(correct, n, num_classes))
    assert binomial_p_value(correct, n, 1 / num_classes) == pytest.approx(exact, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("correct", "n", "chance"), [(5, 4, 0.5), (-1, 4, 0.5), (1, 0, 0.5), (1, 4, 1.0)])
def test_invalid_arguments(correct: int, n: int, chance: float) -> None:
    with pytest.raises(ConfigurationError):
        binomial_p_value(correct, n, chance)
