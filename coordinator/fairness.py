"""Fairness of the published model on the coordinator's held-out set, for the promotion gates.

When the model's policy names a ``sensitive-attribute`` that is a feature of
the held-out set, the coordinator measures the final model's demographic-parity
and equalized-odds differences between the attribute's groups
(``metrics["fairness"]``, signed into the ML-BOM; the gates
``max-demographic-parity-difference`` and ``max-equalized-odds-difference``
read it). Only the coordinator's own held-out set is used: no site sends a
record or a per-group count for it (DESIGN.md §5).

Notes
-----
Demographic parity difference: the largest gap in selection rate
``P(ŷ = 1 | group)`` between groups; equalized-odds difference: the larger of
the largest gaps in true-positive and in false-positive rate between groups
(Hardt, Price & Srebro, "Equality of Opportunity in Supervised Learning",
NeurIPS 2016). Both are computed by fairlearn (``fairlearn.metrics``, Bird et
al. 2020), 0 meaning parity. For more than two classes each class is scored
one-vs-rest (ŷ = c against ŷ ≠ c) and the maximum over classes is reported;
for two classes both one-vs-rest scores equal the usual binary one. A
continuous attribute (more than :data:`MAX_CATEGORIES` distinct values) is
split at its held-out median into two groups (``<= median`` and ``> median``);
``grouping`` says which was done.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from federation.tabular import TabularData
from lifecycle.architecture import DataSchema

MAX_CATEGORIES = 10
"""An attribute with at most this many distinct held-out values is grouped by value, else split at its median."""


def groups_of(values: np.ndarray) -> tuple[np.ndarray, str]:
    """The group of every record and how the groups were formed (``grouping``)."""
    distinct = np.unique(values)
    if len(distinct) <= MAX_CATEGORIES:
        return np.array([f"{v:g}" for v in values]), f"by value ({len(distinct)} groups)"
    median = float(np.median(values))
    return np.where(values <= median, "<= median", "> median"), f"split at the held-out median {median:g}"


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def fairness_gaps(labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray,
                  num_classes: int) -> tuple[float | None, float | None]:
    """Demographic-parity and equalized-odds differences, the maximum over classes one-vs-rest.

    ``None`` for a difference that is undefined for every class (e.g. no
    group holds both outcomes).
    """
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    parity: list[float] = []
    odds: list[float] = []
    for c in range(num_classes):
        truth, chosen = (labels == c).astype(int), (predictions == c).astype(int)
        dp = _finite(demographic_parity_difference(truth, chosen, sensitive_features=groups))
        eo = _finite(equalized_odds_difference(truth, chosen, sensitive_features=groups))
        parity += [dp] if dp is not None else []
        odds += [eo] if eo is not None else []
    return (max(parity) if parity else None), (max(odds) if odds else None)


def fairness_section(model: nn.Module, test: TabularData, schema: DataSchema,
                     attribute: str | None) -> dict[str, Any] | None:
    """``metrics["fairness"]`` of ``model`` on the held-out set, or ``None`` when ``attribute`` is not a feature."""
    if attribute is None or attribute not in schema.features:
        return None
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(test.features)).argmax(dim=1).numpy()
    groups, grouping = groups_of(test.features[:, schema.features.index(attribute)])
    parity, odds = fairness_gaps(test.labels, predicted, groups, len(schema.labels))
    return {"attribute": attribute, "grouping": grouping, "demographic_parity_difference": parity,
            "equalized_odds_difference": odds, "examples": test.num_examples}
