"""The centralised, non-private baseline a federated result is compared with.

Same model, same input scaling, same number of passes over the data, but on
the union of all sites' data and without DP: the gap to it is the price of
federation plus privacy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lifecycle.architecture import ModelSpec, build_model, reference_standardization, set_standardization
from simulations.threads import single_torch_thread


def central_accuracy(
    spec: ModelSpec, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    *, epochs: int, batch_size: int, lr: float, seed: int,
) -> float:
    """Train centrally without DP and return test accuracy (on one torch thread: :mod:`simulations.threads`)."""
    with single_torch_thread():
        return _central_accuracy(spec, train_x, train_y, test_x, test_y, epochs, batch_size, lr, seed)


def _central_accuracy(
    spec: ModelSpec, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    epochs: int, batch_size: int, lr: float, seed: int,
) -> float:
    torch.manual_seed(seed)
    model = build_model(spec)
    reference = torch.from_numpy(test_x)
    set_standardization(model, *reference_standardization(reference))  # as coordinator.app does
    data = TensorDataset(torch.from_numpy(train_x), torch.from_numpy(train_y))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for features, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(torch.from_numpy(test_x)).argmax(1).numpy()
    return float((predictions == test_y).mean())
