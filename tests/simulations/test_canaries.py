"""Canary planting for the one-run audit: seeded, about half included, recorded, appended to the sites' data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lifecycle.errors import ConfigurationError
from privacy.audit.canaries import CanarySet, make_canaries
from simulations.canaries import canary_path
from simulations.federation import SimulationConfig, prepare_data
from simulations.membership import member_split


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n).astype(np.int64)


def test_canaries_are_deterministic_mislabelled_and_half_included() -> None:
    x, y = _data()
    a = make_canaries(x, y, 3, 150, 4, seed=5)
    b = make_canaries(x, y, 3, 150, 4, seed=5)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.included, b.included)
    assert not np.array_equal(a.included, make_canaries(x, y, 3, 150, 4, seed=6).included)
    originals = {tuple(row): label for row, label in zip(x.tolist(), y.tolist(), strict=True)}
    assert all(originals[tuple(row)] != label for row, label in zip(a.features.tolist(), a.labels.tolist(),
                                                                     strict=True))
    assert 45 <= a.included.sum() <= 105  # Binomial(150, 1/2): ±5 σ
    assert set(a.sites[a.included]) <= {0, 1, 2, 3} and (a.sites[~a.included] == -1).all()


def test_each_canary_copies_a_distinct_record_and_no_more_than_there_are() -> None:
    x, y = _data(n=30)
    canaries = make_canaries(x, y, 3, 30, 2, seed=1)
    assert len({tuple(row) for row in canaries.features.tolist()}) == 30
    with pytest.raises(ConfigurationError, match="--canaries 31: .* has 30; use at most 30"):
        make_canaries(x, y, 3, 31, 2, seed=1)


def test_canary_file_round_trips_with_its_digest(tmp_path: Path) -> None:
    x, y = _data()
    canaries = make_canaries(x, y, 3, 20, 2, seed=2)
    digest = canaries.save(tmp_path / "c.json")
    loaded, again = CanarySet.load(tmp_path / "c.json")
    assert again == digest and np.array_equal(loaded.features, canaries.features)
    assert np.array_equal(loaded.sites, canaries.sites) and loaded.seed == 2


def test_impossible_canaries_are_refused() -> None:
    x, y = _data()
    with pytest.raises(ConfigurationError):
        make_canaries(x, np.zeros_like(y), 1, 10, 2, seed=0)
    with pytest.raises(ConfigurationError, match="--canaries -1"):
        SimulationConfig(canaries=-1).validate()


def test_prepare_data_plants_the_canaries_at_their_sites(tmp_path: Path) -> None:
    plain = prepare_data(SimulationConfig(sites=3, rounds=1), tmp_path / "plain" / "data")
    audited = prepare_data(SimulationConfig(sites=3, rounds=1, canaries=40), tmp_path / "audited" / "data")
    canaries, _ = CanarySet.load(canary_path(audited.data_dir))
    planted = [int((canaries.sites == s).sum()) for s in range(3)]
    assert [a - p for a, p in zip(audited.site_sizes, plain.site_sizes, strict=True)] == planted
    assert sum(planted) == int(canaries.included.sum())
    assert not canary_path(plain.data_dir).exists()
    features, labels, members = member_split(audited.data_dir)  # the genuine records only
    plain_features, plain_labels, plain_members = member_split(plain.data_dir)
    assert np.array_equal(members, plain_members) and np.allclose(features, plain_features)
