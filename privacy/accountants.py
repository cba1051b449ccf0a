"""Privacy accountants: ε from (noise multiplier, sample rate, steps), via Opacus.

fedguard never re-implements accounting: it wraps Opacus' accountants behind
one registry (``create_accountant("rdp")``) so that the mechanism is named in
every ML-BOM and an auditor can recompute ε with an accountant of their own.

Notes
-----
RDP accounting of the subsampled Gaussian mechanism follows Mironov (2017),
"Rényi Differential Privacy", and Mironov, Talwar & Zhang (2019); DP-SGD is
Abadi et al. (2016), "Deep Learning with Differential Privacy".
"""

from __future__ import annotations

from dataclasses import dataclass

from opacus.accountants import IAccountant
from opacus.accountants import create_accountant as _opacus_create
from opacus.accountants.utils import get_noise_multiplier

from lifecycle.errors import ConfigurationError

ACCOUNTANTS = ("rdp", "prv")


def create_accountant(name: str) -> IAccountant:
    """A fresh Opacus accountant by name (``rdp`` or ``prv``)."""
    if name not in ACCOUNTANTS:
        raise ConfigurationError(f"unknown accountant '{name}'; choose one of {', '.join(ACCOUNTANTS)}")
    return _opacus_create(name)


@dataclass(frozen=True)
class GaussianHistory:
    """Everything that determines ε of a subsampled Gaussian mechanism run."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str = "rdp"

    def epsilon(self) -> float:
        """ε spent after ``steps`` steps (0 before the first step)."""
        if self.steps <= 0:
            return 0.0
        acc = create_accountant(self.accountant)
        acc.history = [(self.noise_multiplier, self.sample_rate, self.steps)]
        return float(acc.get_epsilon(delta=self.delta))


def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest σ (within Opacus' tolerance) whose ε after ``steps`` stays ≤ target."""
    if target_epsilon <= 0 or not 0 < delta < 1:
        raise ConfigurationError(
            f"invalid privacy target ε={target_epsilon}, δ={delta}: use ε > 0 and 0 < δ < 1"
        )
    if not 0 < sample_rate <= 1 or steps < 1:
        raise ConfigurationError(f"invalid sampling (q={sample_rate}, steps={steps})")
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=steps, accountant=accountant,
        )
    )
