"""ALIE, "A Little Is Enough": send ``μ − z·σ`` per coordinate, just inside what robust rules accept.

Each coordinate of the malicious update is the honest mean ``μ_j`` moved by
``z`` honest standard deviations ``σ_j``. With ``n`` sites of which ``f``
attack, the paper's largest undetectable step is ``z_max = Φ⁻¹((n − s)/n)``
with ``s = ⌊n/2 + 1⌋ − f`` (the number of honest sites the attackers need on
their side; Φ the standard normal CDF): enough to bias median, trimmed mean,
Krum and Bulyan while staying inside the spread of honest updates.

Approximation (documented, as the attack's threat model needs it): the paper's
attackers know μ and σ of the honest updates. Under secure aggregation (and
in a fedguard site agent generally) an attacker sees no other site's update,
so it estimates μ and σ from what it can compute itself: its own trained
update plus ``samples`` more honest updates trained from the same global
model on bootstrap resamples of its own data (seeded). These spread less than
updates of other sites on non-IID data, so σ is an underestimate and the
attack is milder than the paper's omniscient one.

Notes
-----
Baruch, Baruch & Goldberg (2019), "A Little Is Enough: Circumventing
Defenses For Distributed Learning" (NeurIPS), §3 and Algorithm 3 (z_max).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar

import numpy as np

from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack, BootstrapUpdates


def z_max(sites: int, attackers: int) -> float:
    """``Φ⁻¹((n − s)/n)`` with ``s = ⌊n/2 + 1⌋ − f`` (Baruch et al. 2019, Algorithm 3)."""
    if sites < 2 or not 1 <= attackers < sites:
        raise ConfigurationError(f"ALIE needs 2 ≤ n and 1 ≤ f < n; got n={sites}, f={attackers}")
    supporters = math.floor(sites / 2 + 1) - attackers
    return NormalDist().inv_cdf(min(max((sites - supporters) / sites, 1e-12), 1 - 1e-12))


@dataclass(frozen=True)
class ALIE(Attack):
    """``Δ → μ − z·σ`` per coordinate; μ, σ from the attacker's own update and ``samples`` bootstrap updates."""

    name: ClassVar[str] = "alie"
    primary: ClassVar[str | None] = "z"
    model_attack: ClassVar[bool] = True

    z: float = 0.0
    """The step in standard deviations; 0: the paper's ``z_max`` for the federation's n and f."""
    samples: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.z < 0 or not math.isfinite(self.z) or self.samples < 1:
            raise ConfigurationError(f"alie z={self.z}, samples={self.samples}: use z ≥ 0 (0: the paper's z_max) "
                                     "and at least 1 bootstrap sample")
        if self.z == 0 and self.setting.sites:
            self.step  # noqa: B018 (refuse an impossible n, f before any site trains)

    @property
    def step(self) -> float:
        """``z``, or ``z_max(n, f)`` when z is 0."""
        return self.z if self.z > 0 else z_max(self.setting.sites, max(1, self.setting.attackers))

    def craft(self, delta: np.ndarray, bootstrap: BootstrapUpdates, rng: np.random.Generator) -> np.ndarray:
        """``mean − step · std`` over ``[delta, *bootstrap(samples)]``, per coordinate."""
        del rng
        updates = np.stack([delta, *bootstrap(self.samples)])
        return np.asarray(updates.mean(axis=0) - self.step * updates.std(axis=0))
