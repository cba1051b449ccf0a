"""One real Flower simulation: SecAgg+ mod at the sites, SecAggPlusStrategy(FedAvg) at the coordinator.

Also the instrumentation check (d): every message the coordinator process receives is recorded, and
none of its arrays equals or approximates any site's clear update; the final model is the plaintext
FedAvg of those clear updates within quantization error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from privacy.secagg import SecAggConfig
from tests.privacy.secagg.apps import SHAPES, initial_arrays, make_client_app, make_server_app

pytestmark = [pytest.mark.integration]


def test_secaggplus_in_a_flower_simulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, shared_ray: str
) -> None:
    from tests.ray_cluster import run_simulation_on_test_ray

    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    ray_tmp = tempfile.mkdtemp(prefix="fgr", dir="/tmp")  # AF_UNIX socket paths must stay under 107 bytes
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    clear = tmp_path / "clear"
    clear.mkdir()
    config = SecAggConfig(num_sites=5, threshold=3, num_neighbours=4, clip_norm=10.0, max_weight=40.0)
    outcome: dict = {}
    run_simulation_on_test_ray(
        tmp_path / "home", server_app=make_server_app(config, num_rounds=2, outcome=outcome),
        client_app=make_client_app(str(clear)), num_supernodes=5,
    )
    assert "result" in outcome, "the ServerApp did not finish"
    records = [json.loads(p.read_text()) for p in sorted(clear.glob("*.json"))]
    assert len(records) == 10
    # (d) nothing the coordinator received is (close to) a clear update
    clear_vectors = [np.concatenate([np.ravel(r["update"][k]) for k in SHAPES]) for r in records]
    received_arrays = [
        a.numpy() for message in outcome["received"] if not message.has_error()
        for record in message.content.array_records.values() for a in record.values()
    ]
    assert received_arrays and all(a.dtype == np.uint32 for a in received_arrays)
    for array in received_arrays:
        as_float = array.view(np.int32).astype(np.float64)
        for update in clear_vectors:
            for scale in (1.0, config.effective_scale):
                candidate = as_float[: update.size] / scale
                assert not np.allclose(candidate, update, atol=1e-3)
                assert abs(np.corrcoef(candidate, update)[0, 1]) < 0.4
    # the final model is plaintext FedAvg of the clear updates, round by round
    expected = initial_arrays()
    vector = np.concatenate([expected[k].numpy().ravel() for k in SHAPES]).astype(np.float64)
    for round_ in (1, 2):
        batch = [r for r in records if r["round"] == round_]
        weights = np.array([r["examples"] for r in batch], dtype=np.float64)
        deltas = [np.concatenate([np.ravel(r["update"][k]) for k in SHAPES]) for r in batch]
        vector = vector + sum(w * d for w, d in zip(weights, deltas, strict=True)) / weights.sum()
    result = outcome["result"].arrays
    got = np.concatenate([result[k].numpy().ravel() for k in SHAPES]).astype(np.float64)
    assert np.max(np.abs(got - vector)) < 1e-4
    assert [len(names) for _, names in outcome["sites"]] == [5, 5]
    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
