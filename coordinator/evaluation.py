"""Central evaluation on the coordinator's held-out set (no site data involved)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from federation.tabular import TabularData


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean loss of a model on ``num_examples`` held-out records."""

    accuracy: float
    loss: float
    num_examples: int


def evaluate(model: nn.Module, data: TabularData) -> Evaluation:
    """Accuracy and cross-entropy of ``model`` on ``data``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.features))
        labels = torch.from_numpy(data.labels)
        loss = float(nn.functional.cross_entropy(logits, labels))
        accuracy = float((logits.argmax(1) == labels).float().mean())
    return Evaluation(accuracy, loss, data.num_examples)
