"""Scaling (boosting): the site sends ``λ · Δ``, so that its update dominates the average.

A model-poisoning attack: with FedAvg over ``n`` sites, one site boosting by
``λ ≈ n`` moves the global model as far as all the others together. Clipped
honestly its effect is capped at the clipping bound, so by default this
attacker skips clipping (``clip=skip``): without secure aggregation the
coordinator's per-update norm check then rejects it; under SecAgg+ or CKKS the
coordinator's aggregate bounds (``coordinator.strategies.aggregate_bounds``)
see the sum grow beyond what clipped sites can produce.

Notes
-----
Bhagoji, Chakraborty, Mittal & Calo (2019), "Analyzing Federated Learning
through an Adversarial Lens" (ICML): explicit boosting of the malicious
update by the inverse of its aggregation weight; Bagdasaryan et al. (2020)
use the same boosting for model replacement (:mod:`simulations.attacks.backdoor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack, BootstrapUpdates


@dataclass(frozen=True)
class Scaling(Attack):
    """``Δ → λ · Δ`` (``factor`` = λ)."""

    name: ClassVar[str] = "scaling"
    primary: ClassVar[str | None] = "factor"
    model_attack: ClassVar[bool] = True

    factor: float = 10.0
    clip: str = "skip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.factor) and self.factor > 0):
            raise ConfigurationError(f"scaling factor={self.factor}: use a positive number (λ > 1 boosts)")

    def craft(self, delta: np.ndarray, bootstrap: BootstrapUpdates, rng: np.random.Generator) -> np.ndarray:
        """``factor · delta``."""
        del bootstrap, rng
        return self.factor * delta
