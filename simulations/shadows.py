"""LiRA on a simulated run: K shadow federations, each the same simulation on a random half of the records.

The records are the target run's own: its genuine site records (members)
and its held-out set (non-members), in :func:`simulations.membership.member_split`'s
order. Shadow ``k`` trains, with the target's configuration (sites, rounds,
DP settings; its own seed, no canaries, no watermark), on the records its
mask selects; the masks put every record IN exactly half of the shadows,
so each record has Gaussian fits on both sides even for a few shadows.
Every shadow is a full federation published as ``<name>-shadow`` (its
lineage is in the registry like any model's; it is never a candidate
for promotion).

Notes
-----
Carlini, N. et al. "Membership Inference Attacks From First Principles",
IEEE S&P 2022: shadow models on random halves of the population,
per-example Gaussians of the logit-scaled confidence, with one global
variance when shadows are few. Scores: :mod:`privacy.audit.mia`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from lifecycle.errors import ConfigurationError
from privacy.audit.metrics import AttackReport, report
from privacy.audit.mia import lira_offline, lira_online, logit_confidence
from simulations.membership import member_split

if TYPE_CHECKING:
    from coordinator.app import Observer
    from simulations.federation import SimulationConfig


def shadow_masks(records: int, shadows: int, seed: int) -> NDArray[np.bool_]:
    """``shadows × records`` inclusion: each record IN for exactly ``shadows // 2`` shadows (a seeded choice).

    Raises
    ------
    ConfigurationError
        Fewer than 2 shadows, or an odd number (a record must be IN and OUT equally often).
    """
    if shadows < 2 or shadows % 2:
        raise ConfigurationError(f"--shadows {shadows}: LiRA needs an even number of shadow federations, at least 2")
    rng = np.random.default_rng([seed, 0x5AD0])
    order = np.argsort(rng.random((shadows, records)), axis=0)
    return order < shadows // 2


def true_label_confidence(model_dir: Path, features: NDArray[np.float32], labels: NDArray[np.int64]
                          ) -> NDArray[np.float64]:
    """LiRA's φ of each record under the published model in ``model_dir``: logit of its own label's probability."""
    import torch

    from lifecycle.artifacts import load_model

    model, _ = load_model(model_dir)
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(features)).double(), dim=1)
    return logit_confidence(probabilities[torch.arange(len(labels)), torch.from_numpy(labels)].numpy())


def lira_attack(target: dict[str, Any], cfg: SimulationConfig, shadows: int, observer: Observer, *,
                announce: Callable[[str], None] = lambda line: None, verbose: bool = False) -> list[AttackReport]:
    """Online and offline LiRA against the target run's outcome (``artifact``, ``run_dir``), after ``shadows`` runs.

    ``announce`` receives one line before each shadow federation starts.
    """
    from simulations.federation import run

    features, labels, members = member_split(Path(target["run_dir"]) / "data")
    masks = shadow_masks(len(labels), shadows, cfg.seed)
    phi = np.empty(masks.shape)
    base = replace(cfg, canaries=0, watermark="none", model_name=f"{cfg.model_name or cfg.dataset}-shadow")
    for k, mask in enumerate(masks):
        announce(f"shadow federation {k + 1}/{shadows}: {int(mask.sum())} of {mask.size} records")
        outcome = run(replace(base, seed=cfg.seed + 1 + k), observer, verbose=verbose,
                      train=(features[mask], labels[mask]))
        phi[k] = true_label_confidence(Path(outcome["artifact"]), features, labels)
    target_phi = true_label_confidence(Path(target["artifact"]), features, labels)
    return [report("lira-online", lira_online(target_phi, phi, masks), members),
            report("lira-offline", lira_offline(target_phi, phi, masks), members)]
