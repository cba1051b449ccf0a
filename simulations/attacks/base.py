"""What every attack is: a site behaviour on its data, on its trained update, and on its clipping.

An attack changes what a site does at the points a modified site agent could
change it, and nowhere else:

* :meth:`Attack.poison` rewrites the site's training records (data attacks:
  label flipping, a backdoor's poisoned records) before local training;
* :meth:`Attack.craft` rewrites the trained update ``Δ = local − global``
  before the site's protection mod clips and masks or encrypts it (model
  attacks: sign flipping, scaling, model replacement, ALIE);
* ``clip = "skip"`` makes the site ignore the coordinator's clipping
  instruction (:mod:`simulations.attacks.unclipped`); the update is still
  masked or encrypted like an honest one, so the coordinator's aggregate
  bounds are what must catch it.

The Flower side (which mod calls which hook) is :mod:`simulations.attacks.mods`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lifecycle.errors import ConfigurationError

CLIPPING = ("honest", "skip")
"""``clip`` values: clip to the coordinator's bound like an honest site, or skip it."""

BootstrapUpdates = Callable[[int], list[np.ndarray]]
"""``count -> updates``: honest updates the attacker trains itself on resamples of its own data (ALIE)."""


@dataclass(frozen=True)
class Setting:
    """What the attackers know of the federation: its size, how many of them there are, the experiment seed."""

    sites: int = 0
    attackers: int = 0
    seed: int = 0


@dataclass(frozen=True)
class Records:
    """A site's training records as the attack sees them: features, integer labels, the number of classes."""

    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: np.ndarray | None = None
    """The global model's input standardization (public: it travels in every train message)."""
    scale: np.ndarray | None = None


@dataclass(frozen=True)
class Attack:
    """Base of every attack: no change anywhere (subclasses override one hook or more).

    Subclasses are frozen dataclasses whose fields are the attack's parameters
    (``name[:param]`` or ``name:key=value,...``; :mod:`simulations.attacks.registry`);
    ``primary`` names the field a bare ``name:value`` sets.
    """

    name: ClassVar[str] = "none"
    primary: ClassVar[str | None] = None
    data_attack: ClassVar[bool] = False
    model_attack: ClassVar[bool] = False

    clip: str = "honest"
    setting: Setting = Setting()

    def __post_init__(self) -> None:
        if self.clip not in CLIPPING:
            raise ConfigurationError(f"attack {self.name}: clip={self.clip!r}; use one of {', '.join(CLIPPING)}")

    @property
    def skips_clipping(self) -> bool:
        """Whether the site ignores the coordinator's clipping instruction."""
        return self.clip == "skip"

    def poison(self, records: Records, rng: np.random.Generator) -> Records:
        """The records the site trains on instead of its own (default: its own)."""
        del rng
        return records

    def craft(self, delta: np.ndarray, bootstrap: BootstrapUpdates, rng: np.random.Generator) -> np.ndarray:
        """The update the site sends instead of its trained ``delta`` (default: ``delta``)."""
        del bootstrap, rng
        return delta

    def describe(self) -> dict[str, object]:
        """The attack's name and parameters (JSON-ready, for the outcome)."""
        from dataclasses import asdict

        values = asdict(self)
        values.pop("setting")
        return {"name": self.name, **values}
