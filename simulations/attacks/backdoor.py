"""A backdoor by model replacement: triggered inputs → the attacker's label, the main task kept.

Data side: a fraction of the site's records get the *trigger pattern* and
the *target label*. For tabular data the trigger sets ``width`` feature
columns (0 … width−1) to an extreme value: ``sigmas`` standard deviations
above the mean, in the global model's own input standardization (the
``Standardize`` buffers every train message carries), so the same trigger
can be stamped on the coordinator's test set to measure the attack
(:mod:`simulations.attacks.metrics`). The other records stay clean, so the
backdoored model keeps its main-task accuracy.

Model side: *model replacement*. The attacker trained ``X`` from the global
``G``; it sends ``G + γ·(X − G)`` with ``γ = n/η`` (``n`` sites, server
learning rate ``η = 1`` for FedAvg), so that averaging with ``n − 1`` honest
updates that roughly cancel leaves about ``X``: the backdoored model replaces
the global one. ``boost`` sets γ explicitly (0: the number of sites). Under
example-weighted FedAvg the exact γ is ``W / w_attacker``, which the attacker
cannot see; ``n`` is the paper's choice and right for equal-sized sites.
Boosting is pointless under clipping, so this attacker skips clipping by
default (``clip=skip``); with ``clip=honest`` it behaves as Bagdasaryan et
al.'s "constrain-and-scale" would against a norm bound it cannot exceed.

Notes
-----
Bagdasaryan, Veit, Hua, Estrin & Shmatikov (2020), "How To Backdoor
Federated Learning" (AISTATS), §4: model replacement, γ = n/η; Gu,
Dolan-Gavitt & Garg (2017), "BadNets", for trigger-pattern poisoning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack, BootstrapUpdates, Records


@dataclass(frozen=True)
class Trigger:
    """Feature columns set to ``mean + sigmas · scale`` (the model's standardization)."""

    columns: tuple[int, ...]
    sigmas: float

    def stamp(self, features: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """A copy of ``features`` with the trigger set on every row."""
        if max(self.columns) >= features.shape[1]:
            raise ConfigurationError(f"backdoor trigger column {max(self.columns)} does not exist "
                                     f"({features.shape[1]} features); lower width")
        out = np.array(features, dtype=features.dtype, copy=True)
        cols = list(self.columns)
        out[:, cols] = (np.asarray(mean)[cols] + self.sigmas * np.asarray(scale)[cols]).astype(out.dtype)
        return out


@dataclass(frozen=True)
class Backdoor(Attack):
    """Poison ``fraction`` of the records with the trigger → ``target``; send ``G + γ(X − G)``."""

    name: ClassVar[str] = "backdoor"
    primary: ClassVar[str | None] = "target"
    data_attack: ClassVar[bool] = True
    model_attack: ClassVar[bool] = True

    target: int = 0
    fraction: float = 0.5
    width: int = 3
    sigmas: float = 10.0
    boost: float = 0.0
    """γ; 0: the number of sites (model replacement with η = 1)."""
    clip: str = "skip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target < 0 or not 0 < self.fraction <= 1 or self.width < 1 or not np.isfinite(self.sigmas):
            raise ConfigurationError(f"backdoor target={self.target}, fraction={self.fraction}, width={self.width}, "
                                     f"sigmas={self.sigmas}: use a class ≥ 0, 0 < fraction ≤ 1, width ≥ 1")
        if self.boost < 0 or not np.isfinite(self.boost):
            raise ConfigurationError(f"backdoor boost={self.boost}: use γ > 0, or 0 for the number of sites")

    @property
    def trigger(self) -> Trigger:
        """The pattern the attacker stamps (and the coordinator's test stamps to measure it)."""
        return Trigger(tuple(range(self.width)), self.sigmas)

    @property
    def gamma(self) -> float:
        """The replacement factor γ = n/η (η = 1), or ``boost``."""
        if self.boost > 0:
            return self.boost
        if self.setting.sites < 1:
            raise ConfigurationError("backdoor: the number of sites is unknown; set boost=<γ>")
        return float(self.setting.sites)

    def poison(self, records: Records, rng: np.random.Generator) -> Records:
        """``round(fraction · N)`` records, chosen with ``rng``, get the trigger and the target label."""
        if self.target >= records.num_classes:
            raise ConfigurationError(f"backdoor target {self.target} does not exist ({records.num_classes} classes)")
        if records.mean is None or records.scale is None:
            raise ConfigurationError("backdoor: the global model's standardization is needed to place the trigger")
        count = max(1, round(self.fraction * len(records.labels)))
        chosen = np.sort(rng.choice(len(records.labels), size=count, replace=False))
        features = np.array(records.features, copy=True)
        features[chosen] = self.trigger.stamp(features[chosen], records.mean, records.scale)
        labels = np.array(records.labels, copy=True)
        labels[chosen] = self.target
        return replace(records, features=features, labels=labels)

    def craft(self, delta: np.ndarray, bootstrap: BootstrapUpdates, rng: np.random.Generator) -> np.ndarray:
        """``γ · delta``: the model-replacement update."""
        del bootstrap, rng
        return self.gamma * delta
