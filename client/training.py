"""Local training at a site, with record-level DP-SGD when a privacy target is set."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.config import TrainConfig
from client.proximal import proximal_term
from federation.tabular import TabularData
from privacy.dp_sgd import FUSED, DPPlan, clipping_path, make_private


@dataclass(frozen=True)
class LocalResult:
    """What one round of local training produced (weights stay in the model)."""

    num_examples: int
    train_loss: float
    steps: int
    clipping: str = "none"  # DP-SGD per-example clipping path (privacy.dp_sgd.clipping_path), "none" without DP


class BatchRows(TensorDataset):
    """A ``TensorDataset`` the DataLoader reads a batch at a time: one index per tensor, not a row per example.

    The sampler is untouched (the seeded shuffle, or Opacus' Poisson
    sampler under DP-SGD), so the batches are the same rows in the same
    order, bit for bit; only the per-example ``__getitem__`` calls and the
    collate's stacking go (PyTorch's ``__getitems__`` protocol): 1.7 → 0.5 ms
    of CPU for two epochs of 200 records, about 4 % of a simulated site's CPU
    per round (``benchmarks/simulation.py``). An empty Poisson batch comes out as
    empty tensors of the right shapes, as Opacus' own empty batch does.
    """

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return [tensor[index] for tensor in self.tensors]


def stacked(batch: list[torch.Tensor]) -> list[torch.Tensor]:
    """The collate function for :class:`BatchRows`: its batch is already stacked."""
    return batch


def plan_for(cfg: TrainConfig, data: TabularData) -> DPPlan:
    """The site's DP plan for the whole run (same inputs give the same σ every round)."""
    return DPPlan.for_run(
        target_epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, max_grad_norm=cfg.max_grad_norm,
        num_examples=data.num_examples, batch_size=cfg.batch_size,
        epochs=cfg.total_rounds * cfg.local_epochs,
    )


def train_locally(
    model: nn.Module, data: TabularData, cfg: TrainConfig, plan: DPPlan | None, *, generator: torch.Generator,
    device: torch.device | None = None,
) -> LocalResult:
    """Train ``model`` in place for ``cfg.local_epochs`` epochs; DP-SGD when ``plan`` is set.

    On ``device`` (the CPU by default); the model is back on the CPU when this
    returns, so its weights serialize as they always do. Batches are drawn on
    the CPU (Opacus' Poisson sampler and the seeded ``generator`` live there)
    and moved one at a time. With ``cfg.proximal_mu`` > 0 (FedProx) the
    proximal term's gradient joins every step, outside DP-SGD's clipping and
    noise (:mod:`client.proximal` says why the ε is unchanged).
    """
    device = device or torch.device("cpu")
    model.to(device)
    dataset = BatchRows(torch.from_numpy(data.features), torch.from_numpy(data.labels))
    loader = DataLoader(dataset, batch_size=min(cfg.batch_size, len(dataset)), shuffle=True, generator=generator,
                        collate_fn=stacked)
    optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    with proximal_term(model, optimizer, cfg.proximal_mu):  # on the plain optimiser, before Opacus wraps it
        return _train(model, optimizer, loader, cfg, plan, device, data.num_examples)


def _train(
    model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader[tuple[torch.Tensor, ...]],
    cfg: TrainConfig, plan: DPPlan | None, device: torch.device, num_examples: int,
) -> LocalResult:
    module: nn.Module = model
    clipping = "none"
    if plan is not None:
        module, optimizer, loader, _ = make_private(model, optimizer, loader, plan)
        clipping = clipping_path(optimizer)
    module.train()
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    loss_fn = nn.CrossEntropyLoss()
    total, count, steps = 0.0, 0, 0
    for _ in range(cfg.local_epochs):
        for features, labels in loader:
            if len(labels) == 0 and clipping != FUSED:  # Poisson sampling can draw an empty batch;
                continue  # Opacus' ew mode cannot run one (the fused path takes Opacus' pure-noise step)
            features, labels = features.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(module(features), labels)
            loss.backward()
            optimizer.step()
            if len(labels):
                total += loss.item() * len(labels)
                count += len(labels)
            steps += 1
    model.to("cpu")
    if plan is not None:
        steps = plan.steps_per_epoch * cfg.local_epochs  # every sampled step counts, empty or not
    return LocalResult(num_examples, total / max(count, 1), steps, clipping)
