"""Non-IID partitioning: deterministic, disjoint, complete, skewed, and bounded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.errors import ConfigurationError
from simulations.partition import dirichlet_partition


@settings(max_examples=25, deadline=None)
@given(sites=st.integers(1, 8), alpha=st.floats(0.3, 10.0), seed=st.integers(0, 1000))
def test_partition_is_disjoint_complete_and_sized(sites: int, alpha: float, seed: int) -> None:
    labels = np.random.default_rng(seed).integers(0, 2, size=400)
    parts = dirichlet_partition(labels, sites, alpha, seed=seed, min_size=10)
    joined = np.concatenate(parts)
    assert len(parts) == sites
    assert sorted(joined.tolist()) == list(range(400))
    assert min(len(p) for p in parts) >= 10


def test_deterministic_and_skewed() -> None:
    labels = np.repeat([0, 1], 200)
    a = dirichlet_partition(labels, 5, 0.5, seed=7)
    b = dirichlet_partition(labels, 5, 0.5, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    shares = [labels[p].mean() for p in a]
    assert max(shares) - min(shares) > 0.2  # α=0.5 gives visibly different class mixes


def test_too_many_sites() -> None:
    with pytest.raises(ConfigurationError, match="use fewer sites"):
        dirichlet_partition(np.zeros(30, dtype=int), 5, 0.5, seed=0, min_size=10)
