"""Sign flipping: the site sends ``−factor · Δ`` instead of its trained update ``Δ``.

A model-poisoning attack that pushes the global model up the loss the honest
sites descend; with ``factor = 1`` its norm equals an honest update's, so it
passes a per-site norm check and, clipped honestly (the default), the
coordinator's aggregate bounds as well. Robust rules (median, Krum) are the
defence, where the coordinator sees individual updates.

Notes
-----
Damaskinos, El Mhamdi, Guerraoui, Patra & Taziki (2018), "Asynchronous
Byzantine Machine Learning (the case of SGD)"; the "reversed gradient" attack
of Fang, Cao, Jia & Gong (2020), "Local Model Poisoning Attacks to
Byzantine-Robust Federated Learning" (USENIX Security), used as a baseline
against Krum, median and trimmed mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack, BootstrapUpdates


@dataclass(frozen=True)
class SignFlipping(Attack):
    """``Δ → −factor · Δ``."""

    name: ClassVar[str] = "sign-flipping"
    primary: ClassVar[str | None] = "factor"
    model_attack: ClassVar[bool] = True

    factor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.factor) and self.factor > 0):
            raise ConfigurationError(f"sign-flipping factor={self.factor}: use a positive number (1: plain −Δ)")

    def craft(self, delta: np.ndarray, bootstrap: BootstrapUpdates, rng: np.random.Generator) -> np.ndarray:
        """``−factor · delta``."""
        del bootstrap, rng
        return -self.factor * delta
