"""How well a membership score separates members from non-members: ROC, AUC, TPR at a low FPR.

Notes
-----
Carlini, N. et al. "Membership Inference Attacks From First Principles",
IEEE S&P 2022: report the true-positive rate at a low false-positive
rate (0.1 %, 1 %) on a log scale, since an average measure such as AUC or
accuracy hides whether an attack confidently identifies *any* member.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from lifecycle.errors import ConfigurationError


def roc(scores: ArrayLike, members: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """False- and true-positive rates at every threshold (higher score = "member"), from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(members, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ConfigurationError("scores and membership must be two vectors of the same length")
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        raise ConfigurationError("a ROC needs both members and non-members")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / negatives], np.r_[0.0, tp / positives]


def auc(scores: ArrayLike, members: ArrayLike) -> float:
    """Area under the ROC (trapezoids; ties count one half)."""
    fpr, tpr = roc(scores, members)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def tpr_at_fpr(scores: ArrayLike, members: ArrayLike, fpr_max: float) -> float:
    """The highest TPR of a threshold whose FPR is at most ``fpr_max`` (0 when none is that low but the top)."""
    fpr, tpr = roc(scores, members)
    return float(tpr[fpr <= fpr_max].max())


@dataclass(frozen=True)
class AttackReport:
    """An attack's AUC and TPR at 0.1 % and 1 % FPR, on ``members`` vs ``non_members`` records."""

    attack: str
    members: int
    non_members: int
    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def report(attack: str, scores: ArrayLike, members: ArrayLike) -> AttackReport:
    """The :class:`AttackReport` of ``scores`` against the true ``members`` bits."""
    y = np.asarray(members, dtype=bool)
    return AttackReport(attack, int(y.sum()), int((~y).sum()), auc(scores, y), tpr_at_fpr(scores, y, 0.001),
                        tpr_at_fpr(scores, y, 0.01))
