"""Local DP-SGD training takes the fused clipping path on the default MLP and survives empty Poisson batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.config import TrainConfig
from client.training import plan_for, train_locally
from federation.tabular import TabularData
from lifecycle.architecture import ModelSpec, build_model


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
