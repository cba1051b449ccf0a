"""A small breast-cancer model trained centrally, and its watermarked copy.

Session-scoped: under ``pytest -n auto`` each worker trains once (~0.2 s).
Torch runs on one thread here (restored afterwards): these tensors are tiny,
and several xdist workers each spinning several threads on a small machine
made setups ten times slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from sklearn.datasets import load_breast_cancer  # type: ignore[import-untyped, unused-ignore]
from sklearn.model_selection import train_test_split  # type: ignore[import-untyped, unused-ignore]
from torch import nn

from lifecycle.architecture import ModelSpec, build_model, set_standardization
from simulations.threads import single_torch_thread
from watermark import EmbedReport, WatermarkSecret, create_scheme
from watermark.schemes.trigger_set import TriggerSetScheme

SPEC = ModelSpec(in_features=30, num_classes=2, hidden=(32,))


@dataclass(frozen=True)
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_torch_thread():
        yield


def train_model(data: Data, seed: int, steps: int = 200) -> nn.Sequential:
    """Full-batch Adam on raw features, standardization fixed from the training split."""
    torch.manual_seed(seed)
    model = build_model(SPEC)
    set_standardization(model, data.x_train.mean(dim=0), data.x_train.std(dim=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.autograd.backward(nn.functional.cross_entropy(model(data.x_train), data.y_train))
        optimizer.step()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="session")
def data() -> Data:
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return Data(
        torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train),
        torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test),
    )


@pytest.fixture(scope="session")
def aggregate(data: Data) -> nn.Sequential:
    """Stands in for the model the last federated round produced."""
    with single_torch_thread():
        return train_model(data, seed=0)


@pytest.fixture(scope="session")
def scheme() -> TriggerSetScheme:
    created = create_scheme("trigger-set")
    assert isinstance(created, TriggerSetScheme)
    return created


@pytest.fixture(scope="session")
def secret(scheme: TriggerSetScheme, aggregate: nn.Sequential) -> WatermarkSecret:
    return scheme.generate(aggregate, SPEC, generator=torch.Generator().manual_seed(1234))


@pytest.fixture(scope="session")
def embedded(scheme: TriggerSetScheme, aggregate: nn.Sequential, secret: WatermarkSecret) -> EmbedReport:
    with single_torch_thread():
        return scheme.embed(aggregate, secret, generator=torch.Generator().manual_seed(7))
