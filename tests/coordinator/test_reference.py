"""Reference statistics: sites send histogram counts, the coordinator sums them into the signed BOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from coordinator.reference import ReferenceCollector
from lifecycle.artifacts import load_model
from lifecycle.errors import ConfigurationError
from lifecycle.home import Home
from federation.reference import (
    COUNTS_KEY,
    ReferenceStats,
    bom_reference,
    decode_edges,
    encode_edges,
    histogram,
    reference_edges,
    site_counts,
)
from lifecycle.registry import Registry
from federation.tabular import load_csv, load_schema
from simulations.federation import SimulationConfig, _engine_environment, _simulate, prepare_data


def test_quantile_edges_put_equal_mass_in_each_bin_and_open_outer_bins() -> None:
    values = np.arange(1000, dtype=np.float64).reshape(-1, 1)
    edges = reference_edges(np.hstack([values, np.zeros_like(values)]), bins=4)
    assert len(edges[0]) == 3 and edges[1] == (0.0,)  # a constant feature keeps one edge
    counts = histogram(np.hstack([values, np.zeros_like(values)]), edges)
    assert counts[0] == (250, 250, 250, 250)
    assert histogram(np.array([[-1e9, 5.0], [1e9, -5.0]]), edges) == ((1, 0, 0, 1), (1, 1))


def test_edges_and_counts_cross_a_config_record_flat() -> None:
    rng = np.random.default_rng(0)
    held_out, site = rng.normal(size=(50, 3)), rng.normal(size=(30, 3))
    edges = reference_edges(held_out)
    record = ConfigRecord({"features": ["a", "b", "c"], **encode_edges(edges)})
    assert decode_edges(record) == edges
    reply = site_counts(record, site)
    collector = ReferenceCollector(edges)
    collector.add(ConfigRecord({"name": "s0", **reply}))
    collector.add(ConfigRecord({"name": "s1", **reply}))
    collector.add(ConfigRecord({"name": "s2"}))  # sent nothing: left out, with a warning
    assert collector.summed() == tuple(tuple(2 * c for c in row) for row in histogram(site, edges))
    assert site_counts(ConfigRecord({"features": ["a"]}), site) == {}
    with pytest.raises(ConfigurationError, match="3 features but the data has 2"):
        site_counts(record, site[:, :2])


def test_malformed_site_counts_are_left_out() -> None:
    collector = ReferenceCollector(((0.0,),))
    collector.add(ConfigRecord({"name": "bad", COUNTS_KEY: [1, 2, 3]}))
    assert collector.per_site == {}


def test_stats_round_trip_and_refuse_incoherent_counts() -> None:
    stats = ReferenceStats(("a",), ((0.0, 1.0),), ((1, 2, 3),), ("no", "yes"), (4, 2), ("s0",))
    assert ReferenceStats.from_dict(stats.to_dict()) == stats
    assert stats.num_records == 6
    assert bom_reference({"fedguard": {"reference": stats.to_dict()}}) == stats
    assert bom_reference({"fedguard": {}}) is None
    with pytest.raises(ConfigurationError, match="one count per bin"):
        ReferenceStats(("a",), ((0.0,),), ((1, 2, 3),), ("no", "yes"), (4, 2))


@pytest.mark.slow
@pytest.mark.integration
def test_simulated_run_signs_the_sum_of_the_sites_own_histograms(fedguard_home: Path, tmp_path: Path) -> None:
    cfg = SimulationConfig(sites=2, rounds=1, watermark="none", secure_agg="none", dp_epsilon=0.0)
    prepared = prepare_data(cfg, tmp_path / "data")
    _engine_environment(Home(fedguard_home).ensure())
    outcome: dict[str, object] = {}
    _simulate(cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"),
              lambda event, payload: None, outcome, cfg, False)

    version = Registry.open().latest_versions()[0]
    _, bom = load_model(version.artifact.model_dir)
    stats = bom_reference(bom)
    assert stats is not None and stats.sites == ("site-0", "site-1")
    schema = load_schema(prepared.data_dir / "schema.json")
    test = load_csv(prepared.data_dir / "test.csv", list(schema.features), schema.target, len(schema.labels))
    assert stats.edges == reference_edges(test.features)  # fixed by the coordinator, before any site answered
    own = [histogram(load_csv(prepared.data_dir / f"site-{i}.csv", list(schema.features), schema.target,
                              len(schema.labels)).features, stats.edges) for i in range(cfg.sites)]
    expected = tuple(tuple(a + b for a, b in zip(r0, r1, strict=True)) for r0, r1 in zip(*own, strict=True))
    assert stats.counts == expected
    assert stats.num_records == sum(prepared.site_sizes)
    assert sum(stats.predictions) == test.num_examples and stats.classes == schema.labels
