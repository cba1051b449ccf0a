"""Reference statistics: sites release noised counts only into a secure sum; the coordinator signs the sum.

The instrumented tests run the coordinator's real identity and reference
phases against the real site ClientApp over an in-process grid, keep every
message the coordinator receives, and search each one for any site's own
histogram (a whole feature's counts, or the flat vector).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from numpy.lib.stride_tricks import sliding_window_view

from client.app import make_client_app
from coordinator.app import _train_config
from coordinator.config import CoordinatorConfig
from coordinator.ledger import RunLedger, identify_sites
from coordinator.reference import ReferenceCollector
from federation.protocol import REFERENCE_MESSAGE_TYPE as MESSAGE_TYPE
from federation.protocol import decode_edges, encode_edges
from federation.reference import reference_edges
from federation.reference_share import SHARE_KEY, noise_plan
from federation.tabular import load_csv, load_schema, write_csv
from lifecycle.architecture import DataSchema
from lifecycle.artifacts import load_model
from lifecycle.bom.reference import (
    ReferenceNoise,
    ReferenceStats,
    bom_reference,
    flat_histogram,
    histogram,
    omitted_section,
    split_counts,
)
from lifecycle.errors import ConfigurationError
from lifecycle.home import Home
from lifecycle.registry import Registry
from privacy.he import create_federation_keys
from privacy.ledger import SiteLedger, coordinator_ledger
from privacy.secure_sum.coordinator import bounds_for
from simulations.datasets import load_dataset
from simulations.federation import SimulationConfig, _engine_environment, _simulate, prepare_data
from tests.privacy.secagg.harness import LocalGrid


def test_quantile_edges_put_equal_mass_in_each_bin_and_open_outer_bins() -> None:
    values = np.arange(1000, dtype=np.float64).reshape(-1, 1)
    edges = reference_edges(np.hstack([values, np.zeros_like(values)]), bins=4)
    assert len(edges[0]) == 3 and edges[1] == (0.0,)  # a constant feature keeps one edge
    counts = histogram(np.hstack([values, np.zeros_like(values)]), edges)
    assert counts[0] == (250, 250, 250, 250)
    assert histogram(np.array([[-1e9, 5.0], [1e9, -5.0]]), edges) == ((1, 0, 0, 1), (1, 1))


def test_edges_cross_a_config_record_flat_and_noised_sums_are_clipped_at_zero() -> None:
    rng = np.random.default_rng(0)
    held_out, site = rng.normal(size=(50, 3)), rng.normal(size=(30, 3))
    edges = reference_edges(held_out)
    assert decode_edges(ConfigRecord({"features": ["a", "b", "c"], **encode_edges(edges)})) == edges
    flat = flat_histogram(site, edges)
    assert split_counts(flat.tolist(), edges) == histogram(site, edges)
    noised = flat.copy()
    noised[0] = -7
    assert split_counts(noised.tolist(), edges)[0][0] == 0
    with pytest.raises(ConfigurationError, match="expected"):
        split_counts(flat[:-1].tolist(), edges)


def test_stats_round_trip_and_refuse_incoherent_counts() -> None:
    noise = ReferenceNoise("secagg+", 0.5, 1e-5, 30.0, 60.0, 3)
    stats = ReferenceStats(("a",), ((0.0, 1.0),), ((1, 2, 3),), ("no", "yes"), (4, 2), ("s0",), 1, noise)
    assert ReferenceStats.from_dict(stats.to_dict()) == stats
    assert stats.to_dict()["sites_declined"] == 1 and stats.to_dict()["privacy"]["epsilon"] == 0.5
    assert stats.num_records == 6
    assert bom_reference({"fedguard": {"reference": stats.to_dict()}}) == stats
    assert bom_reference({"fedguard": {}}) is None
    assert bom_reference({"fedguard": {"reference": omitted_section("no secure aggregation", 2)}}) is None
    with pytest.raises(ConfigurationError, match="one count per bin"):
        ReferenceStats(("a",), ((0.0,),), ((1, 2, 3),), ("no", "yes"), (4, 2))
    with pytest.raises(ConfigurationError, match="negative"):
        ReferenceStats(("a",), ((0.0,),), ((1, -2),), ("no", "yes"), (4, 2))


# ------------------------------------------------------------------ instrumented exchanges


def _federation(root: Path, sites: int, declining: int | None = None) -> tuple[Path, dict[str, np.ndarray],
                                                                              dict[str, dict[str, object]]]:
    """Deployed-style sites (data-path, schema, own ledger) on 60 breast-cancer rows each."""
    data = load_dataset("breast-cancer")
    order = np.random.default_rng(0).permutation(len(data.labels))[: 60 * sites + 80]
    x, y = data.features[order], data.labels[order]
    coordinator = root / "coordinator"
    write_csv(coordinator / "test.csv", x[-80:], y[-80:], list(data.feature_names), "label")
    (coordinator / "schema.json").write_text(json.dumps(DataSchema(data.feature_names, "label", data.label_names)
                                                        .to_dict()))
    features, configs = {}, {}
    for i in range(sites):
        name = f"hospital-{i}"
        path = root / name / "patients.csv"
        write_csv(path, x[60 * i: 60 * (i + 1)], y[60 * i: 60 * (i + 1)], list(data.feature_names), "label")
        features[name] = load_csv(path, list(data.feature_names), "label", 2).features
        configs[name] = {"data-path": str(path), "site-name": name, "ledger-path": str(root / name / "ledger.db"),
                         "audit-path": str(root / name / "audit.jsonl"),
                         **({SHARE_KEY: False} if i == declining else {})}
    return coordinator, features, configs


def _exchange(root: Path, secure: str, sites: int, declining: int | None = None, saved: Path | None = None,
              **extra: object) -> tuple[
        LocalGrid, ReferenceCollector, RunLedger, dict[str, np.ndarray], dict[str, object]]:
    coordinator, features, configs = _federation(root, sites, declining)
    grid = LocalGrid(make_client_app(), sites)
    for node, name in zip(grid.get_node_ids(), configs, strict=True):
        grid.contexts[node] = Context(run_id=1, node_id=node, node_config=configs[name], state=RecordDict(),
                                      run_config={})
    cfg = CoordinatorConfig.from_mapping({"num-sites": sites, "data-dir": str(coordinator), "dp-epsilon": 0.0,
                                          "secure-aggregation": secure, "round-timeout": 30.0, **extra})
    schema = load_schema(coordinator / "schema.json")
    test = load_csv(coordinator / "test.csv", list(schema.features), schema.target, len(schema.labels))
    run_ledger = RunLedger(coordinator_ledger(Registry.open()), "run-1")
    train_config = _train_config(cfg, schema)
    assert identify_sites(grid, train_config, run_ledger, expected=sites, timeout=30.0) == sites
    reference = ReferenceCollector.from_held_out(test, cfg)
    reference.collect(grid, run_ledger, train_config, saved=saved)
    return grid, reference, run_ledger, features, configs


def _holds(vector: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``needle`` appears in ``vector`` as a contiguous run of equal values."""
    if vector.size < needle.size:
        return False
    return bool((sliding_window_view(vector, needle.size) == needle).all(axis=1).any())


def _received_vectors(grid: LocalGrid) -> list[np.ndarray]:
    """Every array and every numeric list or value of every message the coordinator received."""
    out = []
    for message in grid.received:
        if message.has_error():
            continue
        for record in message.content.array_records.values():
            for array in record.values():
                raw = array.numpy().ravel()
                out += [raw.astype(np.float64)]
                if raw.dtype == np.uint32:
                    out.append(raw.view(np.int32).astype(np.float64))  # as the server would decode it
        for record in [*message.content.config_records.values(), *message.content.metric_records.values()]:
            for value in record.values():
                items = value if isinstance(value, list) else [value]
                numbers = [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if numbers:
                    out.append(np.array(numbers))
    return out


@pytest.mark.parametrize("secure", ["secagg+", "ckks"])
def test_the_coordinator_never_holds_one_sites_counts_only_their_noised_sum(
    fedguard_home: Path, tmp_path: Path, secure: str,
) -> None:
    extra: dict[str, object] = {}
    if secure == "ckks":
        secret, public = create_federation_keys(tmp_path / "keys-sites", tmp_path / "keys-coordinator")
        extra = {"he-public-context": str(public), "sim-he-secret-context": str(secret)}
    grid, reference, run_ledger, features, _ = _exchange(tmp_path, secure, 4, **extra)

    edges = reference.edges
    own = {name: flat_histogram(x, edges) for name, x in features.items()}
    rows = {name: [np.asarray(r, dtype=np.float64) for r in histogram(x, edges) if sum(r) and len(r) > 2]
            for name, x in features.items()}
    reference_replies = [m for m in grid.received if m.metadata.message_type == MESSAGE_TYPE]
    assert len(reference_replies) >= 4 * 2 and not any(m.has_error() for m in reference_replies)
    for vector in _received_vectors(grid):
        for name, counts in own.items():
            assert not _holds(vector, counts.astype(np.float64)), name
            assert not any(_holds(vector, row) for row in rows[name]), name

    # what the coordinator got is the sum of the four histograms, plus noise of the planned size
    assert reference.counts is not None and reference.sites == tuple(sorted(features))
    truth = sum(own.values())
    got = np.concatenate([np.asarray(r) for r in reference.counts])
    noise = reference.noise
    assert noise is not None and noise.secure_sum == secure and noise.epsilon <= 0.5 + 1e-9
    bounds = bounds_for(secure, 4, truth.size)
    plan = noise_plan(reference.request, bounds)
    assert noise.sigma_share == plan.sigma and noise.noise_std == pytest.approx(2 * plan.sigma)
    clipped = np.maximum(truth, 0)
    assert np.all(np.abs(got - clipped) <= 6 * noise.noise_std)
    assert not np.array_equal(got, truth)  # noised (equal with probability < 1e-100)
    residual = got[truth > 6 * noise.noise_std] - truth[truth > 6 * noise.noise_std]
    assert residual.size == 0 or abs(residual.mean()) < 6 * noise.noise_std / np.sqrt(residual.size)

    # every contributing site is charged once, at the coordinator and in its own ledger, as kind "reference"
    charges = run_ledger.ledger.charges(kind="reference")
    assert sorted(c.site for c in charges) == sorted(features)
    assert all(c.noise_multiplier == pytest.approx(plan.noise_multiplier) and c.round == 0 for c in charges)
    for name in features:
        (own_charge,) = SiteLedger.open(tmp_path / name / "ledger.db").charges(name, kind="reference")
        assert own_charge.history().epsilon() == pytest.approx(noise.epsilon)


def test_a_declining_site_is_left_out_and_the_bom_says_so(fedguard_home: Path, tmp_path: Path) -> None:
    grid, reference, run_ledger, _, _ = _exchange(tmp_path, "secagg+", 4, declining=2)
    assert reference.sites == ("hospital-0", "hospital-1", "hospital-3") and reference.declined == ["hospital-2"]
    charges = run_ledger.ledger.charges(kind="reference")
    assert sorted(c.site for c in charges) == ["hospital-0", "hospital-1", "hospital-3"]
    assert SiteLedger.open(tmp_path / "hospital-2" / "ledger.db").charges(kind="reference") == []
    # the decliner sent its "no" and nothing else for the reference
    decliner = next(n for n, c in grid.contexts.items() if c.node_config.get(SHARE_KEY) is False)
    sent = [m for m in grid.received if m.metadata.src_node_id == decliner and m.metadata.message_type == MESSAGE_TYPE]
    assert len(sent) == 1 and sent[0].content["reference"]["accept"] is False
    # the noise is sized for the three contributors: SecAgg+ among 3 releases sums of ≥ t = 2
    plan = noise_plan(reference.request, bounds_for("secagg+", 3, sum(len(e) + 1 for e in reference.edges)))
    assert reference.noise is not None and reference.noise.min_contributors == plan.min_contributors == 2
    schema = load_schema(tmp_path / "coordinator" / "schema.json")
    test = load_csv(tmp_path / "coordinator" / "test.csv", list(schema.features), schema.target, 2)
    section = reference.section(torch.nn.Linear(len(schema.features), 2), schema, test)
    stats = bom_reference({"fedguard": {"reference": section}})
    assert stats is not None and stats.sites == reference.sites and stats.declined == 1
    assert section["privacy"]["epsilon"] == reference.noise.epsilon


def test_without_secure_aggregation_no_site_is_asked_and_the_bom_says_why(fedguard_home: Path, tmp_path: Path) -> None:
    grid, reference, run_ledger, _, _ = _exchange(tmp_path, "none", 3)
    assert not any(m.metadata.message_type == MESSAGE_TYPE for m in grid.received)
    assert reference.counts is None and "secure-aggregation = none" in reference.omitted
    section = reference.section(None, None, None)  # type: ignore[arg-type]  # nothing to evaluate
    assert section["included"] is False and bom_reference({"fedguard": {"reference": section}}) is None
    assert run_ledger.ledger.charges(kind="reference") == []


def test_a_site_refuses_a_second_release_in_one_run(fedguard_home: Path, tmp_path: Path) -> None:
    grid, reference, run_ledger, _, _ = _exchange(tmp_path, "secagg+", 3)
    assert reference.counts is not None
    coordinator = tmp_path / "coordinator"
    cfg = CoordinatorConfig.from_mapping({"num-sites": 3, "data-dir": str(coordinator), "dp-epsilon": 0.0})
    again = ReferenceCollector(reference.request, 30.0)
    again.collect(grid, run_ledger, _train_config(cfg, load_schema(coordinator / "schema.json")))
    assert again.counts is None and "did not complete" in again.omitted
    assert len(run_ledger.ledger.charges(kind="reference")) == 3  # same (run, round, kind): not double counted


def test_a_resumed_run_reuses_the_saved_sum_and_asks_no_site_again(fedguard_home: Path, tmp_path: Path) -> None:
    saved = tmp_path / "reference.json"
    grid, reference, run_ledger, _, _ = _exchange(tmp_path, "secagg+", 3, saved=saved)
    assert reference.counts is not None and saved.exists()
    sent = len(grid.received)
    resumed = ReferenceCollector(reference.request, 30.0)
    resumed.collect(grid, run_ledger, ConfigRecord({}), saved=saved)
    assert len(grid.received) == sent  # no site was asked to release its counts a second time
    assert (resumed.counts, resumed.sites, resumed.noise) == (reference.counts, reference.sites, reference.noise)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.usefixtures("shared_ray")  # one Ray head per test process, not one per run
def test_simulated_run_signs_the_noised_secure_sum_of_the_sites_histograms(fedguard_home: Path, tmp_path: Path) -> None:
    cfg = SimulationConfig(sites=3, rounds=1, watermark="none", secure_agg="secagg+", dp_epsilon=0.0)
    prepared = prepare_data(cfg, tmp_path / "data")
    _engine_environment(Home(fedguard_home).ensure())
    outcome: dict[str, object] = {}
    _simulate(cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"),
              lambda event, payload: None, outcome, cfg, False)

    version = Registry.open().latest_versions()[0]
    _, bom = load_model(version.artifact.model_dir)
    stats = bom_reference(bom)
    assert stats is not None and stats.sites == ("site-0", "site-1", "site-2") and stats.declined == 0
    assert stats.noise is not None and stats.noise.secure_sum == "secagg+" and stats.noise.epsilon <= 0.5
    schema = load_schema(prepared.data_dir / "schema.json")
    test = load_csv(prepared.data_dir / "test.csv", list(schema.features), schema.target, len(schema.labels))
    assert stats.edges == reference_edges(test.features)  # fixed by the coordinator, before any site answered
    own = [flat_histogram(load_csv(prepared.data_dir / f"site-{i}.csv", list(schema.features), schema.target,
                                   len(schema.labels)).features, stats.edges) for i in range(cfg.sites)]
    truth = sum(own)
    got = np.concatenate([np.asarray(r) for r in stats.counts])
    assert np.all(np.abs(got - truth) <= 6 * stats.noise.noise_std) and not np.array_equal(got, truth)
    assert sum(stats.predictions) == test.num_examples and stats.classes == schema.labels
    ledger = coordinator_ledger(Registry.open())
    assert sorted(c.site for c in ledger.charges(kind="reference")) == ["site-0", "site-1", "site-2"]


def test_the_inspection_catches_a_site_histogram_in_any_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search above can fail: clear counts in a config list, an array or a uint32 vector are found."""
    from flwr.app import Array, ArrayRecord
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)
    rng = np.random.default_rng(3)
    edges = reference_edges(rng.normal(size=(40, 3)))
    counts = flat_histogram(rng.normal(size=(25, 3)), edges)
    carriers = [
        RecordDict({"site": ConfigRecord({"reference-counts": counts.tolist()})}),  # the old clear path
        RecordDict({"a": ArrayRecord({"v": Array(np.concatenate([[5, 1], counts, [2]]).astype(np.uint32))})}),
        RecordDict({"a": ArrayRecord({"v": Array(counts.astype(np.float64) + 0.0)})}),
    ]
    grid = LocalGrid.__new__(LocalGrid)
    for content in carriers:
        grid.received = [Message(content, dst_node_id=1, message_type=MESSAGE_TYPE)]
        assert any(_holds(v, counts.astype(np.float64)) for v in _received_vectors(grid)), content.keys()
