"""Local DP-SGD training takes the fused clipping path on the default MLP and survives empty Poisson batches."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.config import TrainConfig
from client.device import seed_torch
from client.training import BatchRows, plan_for, stacked, train_locally
from federation.tabular import TabularData
from lifecycle.architecture import ModelSpec, build_model
from privacy.dp_sgd import DPPlan, make_private


def _setup(n: int, batch: int, epochs: int) -> tuple[TabularData, TrainConfig]:
    rng = np.random.default_rng(0)
    data = TabularData(rng.normal(size=(n, 5)).astype(np.float32), (np.arange(n) % 2).astype(np.int64), "m", Path("x"))
    cfg = TrainConfig(server_round=1, total_rounds=1, local_epochs=epochs, batch_size=batch, lr=0.1, dp_epsilon=3.0,
                      dp_delta=1e-5, max_grad_norm=1.0, features=tuple("abcde"), target="y",
                      spec=ModelSpec(5, 2, (4,)), seed=0)
    return data, cfg


def test_default_mlp_trains_on_the_fused_path() -> None:
    data, cfg = _setup(40, 8, 2)
    torch.manual_seed(0)
    model = build_model(cfg.spec)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_locally(model, data, cfg, plan_for(cfg, data), generator=torch.Generator().manual_seed(0))
    assert result.clipping == "fused"
    assert result.steps == 2 * math.ceil(40 / 8)
    assert math.isfinite(result.train_loss)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    plain = train_locally(build_model(cfg.spec), data, cfg, None, generator=torch.Generator().manual_seed(0))
    assert plain.clipping == "none"


def test_empty_poisson_batches_take_a_noise_step_and_keep_the_loss_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    data, cfg = _setup(3, 1, 8)  # q = 1/3: about (2/3)^3 ≈ 30% of the 24 Poisson batches are empty
    sizes: list[int] = []

    class CountingLoss(nn.CrossEntropyLoss):
        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            sizes.append(len(labels))
            return super().forward(logits, labels)

    monkeypatch.setattr(nn, "CrossEntropyLoss", CountingLoss)
    torch.manual_seed(1)
    model = build_model(cfg.spec)
    result = train_locally(model, data, cfg, plan_for(cfg, data), generator=torch.Generator().manual_seed(0))
    assert len(sizes) == result.steps == 24  # every Poisson batch, empty or not, took a step
    assert 0 in sizes
    assert math.isfinite(result.train_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _batches(loader: DataLoader[Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(features.clone(), labels.clone()) for features, labels in loader]


@pytest.mark.parametrize("dp", [False, True])
def test_batched_rows_give_the_batches_per_example_reads_give(dp: bool) -> None:
    """Same sampler, same seed: the same rows in the same order, bit for bit, empty Poisson batches included."""
    data, cfg = _setup(37, 8, 1)
    features, labels = torch.from_numpy(data.features), torch.from_numpy(data.labels)

    def loader(dataset: TensorDataset, **kwargs: Any) -> DataLoader[Any]:
        built: DataLoader[Any] = DataLoader(dataset, batch_size=8, shuffle=True,
                                            generator=torch.Generator().manual_seed(3), **kwargs)
        if not dp:
            return built
        plan = DPPlan(3.0, 1e-5, 1.0, 8 / 37, 5, 1.0)
        model = build_model(cfg.spec)
        _, _, private, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), built, plan,
                                        noise_generator=torch.Generator().manual_seed(5))
        private.batch_sampler.generator = torch.Generator().manual_seed(11)  # type: ignore[union-attr]
        return private

    rows = _batches(loader(TensorDataset(features, labels)))
    batched = _batches(loader(BatchRows(features, labels), collate_fn=stacked))
    assert len(rows) == len(batched) > 1
    for (f1, l1), (f2, l2) in zip(rows, batched, strict=True):
        assert torch.equal(f1, f2) and torch.equal(l1, l2) and f1.dtype == f2.dtype and l1.dtype == l2.dtype
    empty = BatchRows(features, labels).__getitems__([])
    assert [tuple(t.shape) for t in empty] == [(0, 5), (0,)]


def test_seeding_the_cpu_generator_alone_gives_torch_manual_seeds_stream() -> None:
    torch.manual_seed(123)
    expected = torch.randn(4)
    seed_torch(123, torch.device("cpu"))
    assert torch.equal(torch.randn(4), expected)
