"""Central evaluation on the coordinator's held-out set (no site data involved)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from federation.tabular import TabularData
from lifecycle.bom.drift import Baseline, padded_rows
from lifecycle.bom.reference import ReferenceStats, histogram


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


def drift_section(data: TabularData, reference: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``metrics["drift"]``: the largest PSI of ``data`` against the BOM's reference histograms, per feature.

    ``None`` when the run published no reference (``reference["included"]``
    false). The held-out set is binned with the reference's own edges
    (:func:`lifecycle.bom.reference.histogram`) and scored with the PSI the
    serving drift monitor uses (:mod:`lifecycle.bom.drift`), so the
    ``max-drift`` gate reads the number an operator later sees on live traffic.
    """
    if not reference or reference.get("included") is False:
        return None
    stats = ReferenceStats.from_dict(reference)
    live = histogram(data.features, stats.edges)
    ref_counts, mask = padded_rows(stats.counts)
    live_counts, _ = padded_rows(live)
    scores = Baseline(ref_counts, mask).psi(live_counts)
    worst = int(np.argmax(scores))
    return {"statistic": "psi", "max": float(scores[worst]), "feature": stats.features[worst],
            "against": "reference"}
