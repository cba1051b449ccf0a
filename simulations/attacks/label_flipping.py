"""Label flipping: the site trains on wrong labels (a data-poisoning attack).

Without parameters every label ``y`` becomes ``C − 1 − y`` (``C`` classes;
for two classes, the labels swap). With ``source`` (and ``target``, default
``C − 1 − source``) only the records of class ``source`` are relabelled to
``target``: the targeted variant.

Notes
-----
Tolmie, Stolz, Heer, Engel & Aly (2020), "Data Poisoning Attacks Against
Federated Learning Systems" (ESORICS 2020): label flipping by a fraction of
the participants, source class → target class; Biggio, Nelson & Laskov
(2012) for label-flipping poisoning in general. The update is then an honest
update on poisoned data: it is clipped like any other unless ``clip=skip``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from lifecycle.errors import ConfigurationError
from simulations.attacks.base import Attack, Records


@dataclass(frozen=True)
class LabelFlipping(Attack):
    """``y → C − 1 − y`` for every record, or ``source → target`` only."""

    name: ClassVar[str] = "label-flipping"
    primary: ClassVar[str | None] = "source"
    data_attack: ClassVar[bool] = True

    source: int = -1
    """The class to relabel; −1: every class."""
    target: int = -1
    """What ``source`` becomes; −1: ``C − 1 − source``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source < -1 or self.target < -1 or (self.source == -1 and self.target != -1):
            raise ConfigurationError(f"label-flipping source={self.source}, target={self.target}: use class "
                                     "indices ≥ 0 (target needs a source), or neither for y → C−1−y")

    def mapping(self, num_classes: int) -> np.ndarray:
        """``mapping[y]``: the label a record of class ``y`` is trained with."""
        for value in (self.source, self.target):
            if value >= num_classes:
                raise ConfigurationError(f"label-flipping: class {value} does not exist ({num_classes} classes)")
        if self.source == -1:
            return np.arange(num_classes)[::-1].copy()
        table = np.arange(num_classes)
        table[self.source] = self.target if self.target != -1 else num_classes - 1 - self.source
        return table

    def poison(self, records: Records, rng: np.random.Generator) -> Records:
        """Every record relabelled through :meth:`mapping` (no randomness)."""
        del rng
        return replace(records, labels=self.mapping(records.num_classes)[records.labels])
