"""Partitioners: every record once, seeded, the floor kept, and each one's own skew."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.errors import ConfigurationError
from simulations.data.partitioners import (
    ByColumn,
    Dirichlet,
    Iid,
    QuantitySkew,
    available_partitioners,
    create_partitioner,
    dirichlet_partition,
)


def _covers(parts: tuple[np.ndarray, ...] | list[np.ndarray], total: int) -> bool:
    return sorted(np.concatenate(parts).tolist()) == list(range(total))


@settings(max_examples=25, deadline=None)
@given(sites=st.integers(1, 8), alpha=st.floats(0.3, 10.0), seed=st.integers(0, 1000),
       spec=st.sampled_from(["iid", "dirichlet", "quantity-skew"]))
def test_every_random_partition_is_disjoint_complete_and_sized(sites: int, alpha: float, seed: int,
                                                                spec: str) -> None:
    labels = np.random.default_rng(seed).integers(0, 3, size=400)
    name = spec if spec == "iid" else f"{spec}:{alpha}"
    partition = create_partitioner(name).split(labels, sites, seed=seed, min_size=10)
    assert len(partition.sites) == sites
    assert _covers(partition.sites, 400)
    assert min(partition.sizes) >= 10


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "quantity-skew:0.5"])
def test_same_seed_same_split_other_seed_other_split(spec: str) -> None:
    labels = np.repeat([0, 1, 2], 200)
    first = create_partitioner(spec).split(labels, 6, seed=7)
    again = create_partitioner(spec).split(labels, 6, seed=7)
    other = create_partitioner(spec).split(labels, 6, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first.sites, again.sites, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first.sites, other.sites, strict=True))


def _label_spread(labels: np.ndarray, sites: tuple[np.ndarray, ...]) -> float:
    shares = [labels[s].mean() for s in sites]
    return float(max(shares) - min(shares))


def test_small_alpha_skews_labels_large_alpha_and_iid_do_not() -> None:
    labels = np.repeat([0, 1], 1000)
    skewed = Dirichlet(0.1).split(labels, 10, seed=1).sites
    mild = Dirichlet(100.0).split(labels, 10, seed=1).sites
    iid = Iid().split(labels, 10, seed=1).sites
    assert _label_spread(labels, skewed) > 0.6
    assert _label_spread(labels, mild) < 0.2 and _label_spread(labels, iid) < 0.2
    assert max(len(s) for s in iid) - min(len(s) for s in iid) <= 1


def test_quantity_skew_varies_sizes_but_not_label_mixes() -> None:
    labels = np.repeat([0, 1], 5000)
    skewed = QuantitySkew(0.3).split(labels, 20, seed=3)
    even = QuantitySkew(1000.0).split(labels, 20, seed=3)
    assert np.std(skewed.sizes) > 5 * np.std(even.sizes)
    big = [s for s in skewed.sites if len(s) >= 200]
    assert big and _label_spread(labels, tuple(big)) < 0.15  # labels IID within each site


def test_many_sites_small_alpha_still_gives_every_site_the_floor() -> None:
    """1000 sites with α=0.5: the redraw loop alone never succeeds; the repair keeps the floor and the rest."""
    labels = np.random.default_rng(0).integers(0, 2, size=40_000)
    partition = Dirichlet(0.5).split(labels, 1000, seed=0, min_size=10)
    assert min(partition.sizes) >= 10 and _covers(partition.sites, 40_000)
    assert _label_spread(labels, partition.sites) > 0.8


def test_by_column_gives_one_site_per_value_in_sorted_order() -> None:
    column = np.array(["H2", "H1", "H3"] * 20)
    labels = np.arange(60) % 2
    partitioner = create_partitioner("by-column:hospital")
    assert isinstance(partitioner, ByColumn) and partitioner.sites_for(column) == 3
    partition = partitioner.split(labels, 3, seed=0, column=column)
    assert partition.groups == ("hospital=H1", "hospital=H2", "hospital=H3")
    for group, rows in zip(("H1", "H2", "H3"), partition.sites, strict=True):
        assert set(column[rows].tolist()) == {group} and len(rows) == 20
    with pytest.raises(ConfigurationError, match="gives 3 sites .* pass --sites 3"):
        partitioner.split(labels, 5, seed=0, column=column)
    with pytest.raises(ConfigurationError, match=r"1 value\(s\) have fewer than 10 .*'H9' \(2\)"):
        partitioner.split(np.zeros(62, dtype=int), 4, seed=0, column=np.concatenate([column, ["H9", "H9"]]))


@pytest.mark.parametrize(("spec", "message"), [
    ("fedprox", "unknown; choose one of iid, dirichlet:0.5"),
    ("dirichlet", "needs a parameter, e.g. dirichlet:0.5"),
    ("dirichlet:abc", "'abc' is not a number"),
    ("dirichlet:-1", "α must be a positive number"),
    ("quantity-skew:0", "β must be a positive number"),
    ("iid:3", "takes no parameter"),
    ("by-column:", "needs a parameter"),
])
def test_bad_specs_say_what_to_write(spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        create_partitioner(spec)


def test_empty_spec_is_the_default_dirichlet_with_alpha() -> None:
    partitioner = create_partitioner("", alpha=0.3)
    assert isinstance(partitioner, Dirichlet) and partitioner.spec == "dirichlet:0.3"
    assert "by-column:hospital_id" in available_partitioners()


def test_too_many_sites_for_the_records() -> None:
    with pytest.raises(ConfigurationError, match="use fewer sites"):
        dirichlet_partition(np.zeros(30, dtype=int), 5, 0.5, seed=0, min_size=10)
