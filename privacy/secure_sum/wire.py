"""The ``"secure-sum"`` record every message of the exchange carries, and the SecAgg+ integer encoding.

Notes
-----
The SecAgg+ parameters follow Bell et al. (2020) through
:meth:`privacy.secagg.SecAggConfig.recommended`; the encoding is Bonawitz et
al.'s (2017) ``Z_{2^32}`` with scale 1, so integer inputs are summed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from lifecycle.errors import TrainingError
from privacy.secagg.config import MODULUS, SecAggConfig

RECORD = "secure-sum"
"""Name of the ConfigRecord that says which mechanism and stage a message belongs to."""

MECHANISMS = ("secagg+", "ckks")
MASKED_KEY = "masked"
"""Name of the ArrayRecord (and its one array) of a SecAgg+ masked-input reply."""


class SecureSumError(TrainingError):
    """A secure sum could not produce a sum of enough contributions (nothing was released by it)."""


@dataclass(frozen=True)
class Bounds:
    """What a secure sum promises its contributors before they send anything.

    Attributes
    ----------
    mechanism
        ``"secagg+"`` or ``"ckks"``.
    stage
        The protocol stage of the message.
    length
        Length of each contribution.
    min_contributors
        The fewest contributions a released sum holds (SecAgg+: its threshold t; CKKS: every site asked).
    max_contributors
        The most it may hold (the sites asked).
    """

    mechanism: str
    stage: str
    length: int
    min_contributors: int
    max_contributors: int

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise SecureSumError(f"unknown secure-sum mechanism '{self.mechanism}'; expected one of {MECHANISMS}")
        if self.length < 1 or not 1 <= self.min_contributors <= self.max_contributors:
            raise SecureSumError(
                f"malformed secure-sum bounds: length {self.length}, contributors "
                f"{self.min_contributors}…{self.max_contributors}"
            )

    def at(self, stage: str) -> Bounds:
        return replace(self, stage=stage)

    def to_record(self, **extra: str | int) -> ConfigRecord:
        return ConfigRecord({"mechanism": self.mechanism, "stage": self.stage, "length": self.length,
                             "min-contributors": self.min_contributors,
                             "max-contributors": self.max_contributors, **extra})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> Bounds:
        try:
            return cls(str(record["mechanism"]), str(record["stage"]), int(record["length"]),  # type: ignore[arg-type]
                       int(record["min-contributors"]), int(record["max-contributors"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as exc:
            raise SecureSumError(f"the '{RECORD}' record is malformed ({exc}); coordinator and site differ") from None


def integer_config(num_sites: int) -> SecAggConfig:
    """SecAgg+ for ``num_sites`` integer vectors: scale 1, the widest bound ``B`` the 2^32 headroom allows.

    ``B = ⌊((2^32 − 2)/n − 1)/2⌋`` keeps ``n·(2B + 1) < 2^32`` (the headroom
    rule of :class:`SecAggConfig`; ``B = max_weight·max(clip_norm, 1)`` with
    ``clip_norm = 1``): about 4·10⁸ per coordinate for 5 sites.
    """
    bound = float(int(((MODULUS - 2) / num_sites - 1) / 2))
    base = SecAggConfig.recommended(num_sites, 1.0, 1.0)
    return replace(base, max_weight=bound, scale=1.0, weighting="uniform").validate()


def masked_record(vector: np.ndarray) -> ArrayRecord:
    """The ArrayRecord a site's masked-input reply carries."""
    return ArrayRecord({MASKED_KEY: Array(vector)})
