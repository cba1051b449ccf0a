"""The ``"he"`` record: what the coordinator asks a site to do in a CKKS round.

Train messages of the homomorphic mode carry a ``ConfigRecord`` named ``"he"``:

=============== ===========================================================
key             meaning
=============== ===========================================================
``stage``       ``"encrypt"`` (train, then encrypt the update) or ``"decrypt"``
``server-round`` the round this concerns
``clip-norm``   C: each update Δ is clipped to ‖Δ‖₂ ≤ C before weighting
``max-weight``  W: a site's weight is num-examples, refused above W (or 1 if uniform)
``weighting``   ``"examples"`` or ``"uniform"``
``min-sites``   the fewest contributions the coordinator will aggregate
``key-id``      fingerprint of the federation key both sides must hold
``backend``     scheme name (``"ckks"``)
``contributors`` decrypt only: how many encrypted payloads were summed
``length``      decrypt only: values in the summed ciphertext
=============== ===========================================================

Notes
-----
Bounding each site's weight and update norm bounds its influence on the
aggregate (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"); it also bounds the CKKS plaintext range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from flwr.app import ConfigRecord

from privacy.he.errors import HEPayloadError

HE_RECORD = "he"
"""Name of the instruction ``ConfigRecord`` in train messages (and of the metadata record in replies)."""
CIPHERTEXT_RECORD = "ciphertext"
"""``ArrayRecord`` of uint8 arrays, one per ciphertext chunk (site → coordinator and back)."""
SUM_RECORD = "sum"
"""``ArrayRecord`` holding the decrypted aggregate payload under key ``"payload"`` (decrypt replies)."""

Stage = Literal["encrypt", "decrypt"]
Weighting = Literal["examples", "uniform"]

_KEYS = {
    "stage": "stage", "server-round": "server_round", "clip-norm": "clip_norm", "max-weight": "max_weight",
    "weighting": "weighting", "min-sites": "min_sites", "key-id": "key_id", "backend": "backend",
    "contributors": "contributors", "length": "length",
}


@dataclass(frozen=True)
class HEInstruction:
    """One stage of a homomorphic round, as sent to a site."""

    stage: Stage
    server_round: int
    clip_norm: float
    max_weight: float
    weighting: Weighting
    min_sites: int
    key_id: str
    backend: str = "ckks"
    contributors: int = 0
    length: int = 0

    def __post_init__(self) -> None:
        if self.stage not in ("encrypt", "decrypt"):
            raise HEPayloadError(f"unknown 'he' stage '{self.stage}'; expected 'encrypt' or 'decrypt'")
        if self.weighting not in ("examples", "uniform"):
            raise HEPayloadError(f"unknown weighting '{self.weighting}'; expected 'examples' or 'uniform'")
        if not self.clip_norm > 0 or not self.max_weight >= 1:
            raise HEPayloadError("clip-norm must be positive and max-weight at least 1")
        if self.min_sites < 1:
            raise HEPayloadError(f"min-sites must be at least 1, got {self.min_sites}")

    def weight(self, num_examples: float) -> float:
        """A site's weight: its example count (refused above ``max_weight``), or 1 under uniform weighting."""
        if self.weighting == "uniform":
            return 1.0
        if not 0 < num_examples <= self.max_weight:
            raise HEPayloadError(f"num-examples {num_examples:g} is outside (0, max-weight = {self.max_weight:g}]; "
                                 "raise max-weight on the coordinator or use uniform weighting")
        return float(num_examples)

    @property
    def bound(self) -> float:
        """Largest magnitude of one value of one site's payload ``[w·Δ, w, 1]``."""
        return (1.0 if self.weighting == "uniform" else self.max_weight) * max(self.clip_norm, 1.0)

    def for_decryption(self, contributors: int, length: int) -> HEInstruction:
        return replace(self, stage="decrypt", contributors=contributors, length=length)

    def to_record(self) -> ConfigRecord:
        values = asdict(self)
        return ConfigRecord({key: values[attr] for key, attr in _KEYS.items()})

    @classmethod
    def from_record(cls, record: ConfigRecord) -> HEInstruction:
        """Parse and validate; raises :class:`HEPayloadError` naming what is missing or wrong."""
        missing = [key for key in _KEYS if key not in record]
        if missing:
            raise HEPayloadError(f"the 'he' record lacks {', '.join(missing)}; "
                                 "the coordinator and this site run different fedguard versions")
        values: dict[str, Any] = {attr: record[key] for key, attr in _KEYS.items()}
        try:
            for attr in ("server_round", "min_sites", "contributors", "length"):
                values[attr] = int(values[attr])
            for attr in ("clip_norm", "max_weight"):
                values[attr] = float(values[attr])
            for attr in ("stage", "weighting", "key_id", "backend"):
                values[attr] = str(values[attr])
        except (TypeError, ValueError) as exc:
            raise HEPayloadError(f"the 'he' record has a malformed value ({exc})") from exc
        return cls(**values)
