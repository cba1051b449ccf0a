"""A real Flower simulation in CKKS mode: the model is FedAvg's, and the server never sees a clear update."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from privacy.he import CKKSStrategy, ckks_mod
from privacy.updates import flatten

pytestmark = [pytest.mark.integration]

SITES, ROUNDS = 3, 2
SIZES = (40, 9)


def initial() -> ArrayRecord:
    rng = np.random.default_rng(0)
    return ArrayRecord({f"w{i}": Array(rng.normal(size=(n,)).astype(np.float32)) for i, n in enumerate(SIZES)})


def delta_of(partition: int, server_round: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 * partition + server_round)
    return [(0.05 * rng.normal(size=(n,))).astype(np.float32) for n in SIZES]


def examples_of(partition: int) -> int:
    return 20 + 15 * partition


client_app = ClientApp()


@client_app.train(mods=[ckks_mod])
def train(msg: Message, context: Context) -> Message:
    partition = int(context.node_config["partition-id"])
    server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
    arrays = msg.content.array_records["arrays"]
    local = {k: Array(arrays[k].numpy() + d)
             for k, d in zip(arrays.keys(), delta_of(partition, server_round), strict=True)}
    return Message(RecordDict({
        "arrays": ArrayRecord(local),
        "metrics": MetricRecord({"num-examples": examples_of(partition), "train-loss": 0.1 * partition}),
        "site": ConfigRecord({"name": f"site-{partition}"}),
    }), reply_to=msg)


class RecordingGrid:
    """Every reply the ServerApp receives passes through here."""

    def __init__(self, grid: Grid) -> None:
        self._grid, self.received = grid, []  # type: list[Message]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def expected_model() -> np.ndarray:
    vector, _ = flatten(initial())
    weights = np.array([examples_of(p) for p in range(SITES)], dtype=np.float64)
    for server_round in range(1, ROUNDS + 1):
        deltas = [np.concatenate(delta_of(p, server_round)).astype(np.float64) for p in range(SITES)]
        vector = vector + np.sum([w * d for w, d in zip(weights, deltas, strict=True)], axis=0) / weights.sum()
    return vector


def test_ckks_federation_matches_plain_fedavg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             shared_ray: str) -> None:
    from privacy.he import create_federation_keys
    from tests.ray_cluster import run_simulation_on_test_ray

    ray_tmp = Path(tempfile.gettempdir()) / "fedguard-ray"
    ray_tmp.mkdir(exist_ok=True)
    monkeypatch.setenv("RAY_TMPDIR", os.environ.get("RAY_TMPDIR", str(ray_tmp)))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    secret, public = create_federation_keys(tmp_path / "sites", tmp_path / "coordinator")
    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        recording = RecordingGrid(grid)
        inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=SITES, min_available_nodes=SITES)
        strategy = CKKSStrategy(inner, public, min_sites=SITES, clip_norm=10.0, max_weight=1000.0,
                                on_replies=lambda r, replies: outcome.setdefault("rounds", []).append(len(replies)))
        result = strategy.start(grid=recording, initial_arrays=initial(), num_rounds=ROUNDS,  # type: ignore[arg-type]
                                timeout=120, train_config=ConfigRecord({"he-secret-context": str(secret)}))
        outcome.update(arrays=result.arrays, received=recording.received)

    run_simulation_on_test_ray(tmp_path / "home", server_app=server_app, client_app=client_app,
                               num_supernodes=SITES)
    assert outcome.get("rounds") == [SITES] * ROUNDS, "a round did not aggregate every site"
    final, _ = flatten(outcome["arrays"])
    assert np.allclose(final, expected_model(), rtol=1e-6, atol=1e-6)
    received: list[Message] = outcome["received"]
    assert len(received) == ROUNDS * (SITES + 1) and not any(m.has_error() for m in received)
    for message in received:
        records = message.content.array_records
        assert "arrays" not in records
        assert set(records) in ({"ciphertext"}, {"sum"})
        if "ciphertext" in records:
            assert all(records["ciphertext"][k].dtype == "uint8" for k in records["ciphertext"].keys())
