"""Membership inference on a simulated run's published model: its training records against the held-out set.

The members are the genuine records of every virtual site (the canaries a
run planted are left out: they are the one-run audit's, not this
attack's); the non-members are the coordinator's held-out ``test.csv``,
which no site trained on. Both are read from the run's own ``data/``
folder, so the attack sees exactly the records the run used.

Notes
-----
Loss threshold: Yeom et al., CSF 2018 (score ``-loss``); reported as AUC
and TPR at 0.1 % and 1 % FPR, as Carlini et al. (IEEE S&P 2022) ask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from privacy.audit.canaries import CanarySet
from privacy.audit.metrics import AttackReport, report, roc
from privacy.audit.mia import loss_scores
from simulations.canaries import canary_path


def _read(path: Path) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def member_split(data_dir: Path) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.bool_]]:
    """Features, labels and membership of every genuine site record (members) and held-out record (not)."""
    planted = CanarySet.load(canary_path(data_dir))[0] if canary_path(data_dir).exists() else None
    xs, ys = [], []
    for site, path in enumerate(sorted(data_dir.glob("site-*.csv"), key=lambda p: int(p.stem.split("-")[1]))):
        x, y = _read(path)
        extra = int((planted.sites == site).sum()) if planted is not None else 0  # appended at the end
        xs.append(x[: len(y) - extra])
        ys.append(y[: len(y) - extra])
    test_x, test_y = _read(data_dir / "test.csv")
    members = np.r_[np.ones(sum(len(y) for y in ys), dtype=bool), np.zeros(len(test_y), dtype=bool)]
    return np.concatenate([*xs, test_x]), np.concatenate([*ys, test_y]), members


def loss_attack(model_dir: Path, data_dir: Path) -> AttackReport:
    """Yeom et al.'s loss threshold on the published model in ``model_dir`` (signature verified by the caller)."""
    import torch

    from lifecycle.artifacts import load_model

    model, _ = load_model(model_dir)
    features, labels, members = member_split(data_dir)
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(torch.from_numpy(features)), torch.from_numpy(labels),
                                                   reduction="none")
    return report("loss-threshold", loss_scores(losses.numpy()), members)


def membership_section(model_dir: Path, data_dir: Path, *, points: int = 101) -> dict[str, Any]:
    """The loss-threshold attack on a run's model as an outcome section: AUC, TPRs and its ROC curve.

    The ROC is thinned to about ``points`` points (kept in order, the ends
    included) so that an experiment's records stay small.
    """
    import torch

    from lifecycle.artifacts import load_model

    model, _ = load_model(model_dir)
    features, labels, members = member_split(data_dir)
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(torch.from_numpy(features)), torch.from_numpy(labels),
                                                   reduction="none")
    scores = loss_scores(losses.numpy())
    fpr, tpr = roc(scores, members)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return {**report("loss-threshold", scores, members).to_dict(),
            "roc": {"fpr": [float(v) for v in fpr[keep]], "tpr": [float(v) for v in tpr[keep]]}}

