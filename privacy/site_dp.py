"""Site-level DP (DP-FedAvg) with distributed Gaussian noise, as a Flower client mod.

Record-level DP-SGD (:mod:`privacy.dp_sgd`) protects one *record* of a site;
site-level DP protects a site's *whole dataset*: whether a site took part at
all changes the distribution of each released global model by at most
(ε, δ). Each sampled site

1. computes its update Δ = local − global (:func:`privacy.updates.model_delta`),
2. clips it to L2 norm ≤ C, so one site moves the sum of updates by ≤ C,
3. adds its *share* of Gaussian noise, N(0, (σC)² / n_min) per coordinate,

and the coordinator averages the updates with uniform weights (w = 1). If at
least n_min sites contribute, the sum carries Gaussian noise of standard
deviation ≥ σC (variances add), which is exactly the central mechanism of
DP-FedAvg: the aggregate is (ε, δ)-DP at site level with σ calibrated by the
accountant for q = sampled / total sites and T rounds.

The noise has to be distributed because under secure aggregation
(``secagg+``, ``ckks``) the coordinator only ever sees the sum and cannot add
noise itself. Without secure aggregation the same mod still adds the noise at
the site, but then the coordinator sees each site's individually noised
update, which carries only σ/√n_min of noise on its own: the site-level
guarantee against the *coordinator* is then that of noise multiplier σ/√n_min.

What voids the guarantee
------------------------
* Fewer than n_min contributions in a round (dropouts): the sum carries less
  than σC. The coordinator must refuse to aggregate such a round
  (:func:`require_min_contributions`).
* Weighting updates by example counts (FedAvg's default): a site's weight then
  multiplies its sensitivity. Aggregate with w = 1 under site-level DP.
* Clipping the *noised* update again (e.g. a secure-aggregation mod that
  re-clips the reply to C): a data-dependent rescaling of each site's noise
  share reduces the guarantee to that of the individual shares (σ/√n_min).
  Clip before the noise, once (this mod does), and only quantize afterwards.
* Changing σ, C, n_min or the sampling between rounds of one run, or sampling
  sites in a way that is not random and secret (amplification by sampling is
  then void; account with q = 1).
* A predictable noise source: this mod draws from a generator seeded with 128
  bits from :mod:`secrets` (the OS CSPRNG) per message. numpy's PCG64 is not a
  cryptographic generator; the seed is unpredictable, the stream is not proven
  indistinguishable from Gaussian noise to a computationally bounded adversary.

Notes
-----
McMahan, Ramage, Talwar & Zhang (2018), "Learning Differentially Private
Recurrent Language Models" (DP-FedAvg, site/user-level DP with per-site
clipping and Gaussian noise on the average); Geyer, Klein & Nabi (2017),
"Differentially Private Federated Learning: A Client Level Perspective";
distributed noise under secure aggregation: Truex et al. (2019), "A Hybrid
Approach to Privacy-Preserving Federated Learning", and Kairouz, Liu &
Steinke (2021), "The Distributed Discrete Gaussian Mechanism for Federated
Learning with Secure Aggregation" (which also treats the effect of
quantization that this continuous-noise design ignores). Accounting is the
subsampled Gaussian RDP of Mironov, Talwar & Zhang (2019).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from lifecycle.errors import ConfigurationError, TrainingError
from privacy.accountants import ACCOUNTANTS, GaussianHistory, calibrate_noise, epsilon_series
from privacy.records import config_record
from privacy.updates import UpdateError, clip, flatten, model_delta, unflatten

logger = logging.getLogger("fedguard.privacy")

CONFIG_KEY = "site-dp"
"""Name of the ConfigRecord carrying site-level DP instructions in a train message."""

SITE_RECORD = "site"
"""Name of the reply's ConfigRecord to which the mod adds the parameters it applied."""

SITE_FIELDS_PREFIX = "site-dp-"
"""Prefix of the applied parameters in the reply's ``"site"`` record (``site-dp-noise-multiplier``, …)."""

Mod = Callable[[Message, Context, ClientAppCallable], Message]


class SiteDPError(TrainingError):
    """A round cannot keep its site-level DP guarantee (e.g. too few contributions)."""


@dataclass(frozen=True)
class SiteDPConfig:
    """The site-level DP target of a run, fixed before the first round.

    Attributes
    ----------
    target_epsilon, delta
        The site-level (ε, δ) the final model must meet.
    clip_norm
        C, the L2 bound on each site's update.
    rounds
        T, the planned number of rounds (each is one subsampled Gaussian step).
    sites_per_round, total_sites
        Sampling: q = sites_per_round / total_sites.
    min_sites
        n_min, the fewest contributions the coordinator will aggregate; each
        site adds N(0, (σC)²/n_min) so n_min survivors carry σC together.
    accountant
        ``"rdp"`` or ``"prv"``.
    """

    target_epsilon: float
    delta: float
    clip_norm: float
    rounds: int
    sites_per_round: int
    total_sites: int
    min_sites: int
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.clip_norm <= 0 or not math.isfinite(self.clip_norm):
            raise ConfigurationError(f"site-level clip norm must be positive, got {self.clip_norm}")
        if self.rounds < 1:
            raise ConfigurationError(f"site-level DP needs at least one round, got {self.rounds}")
        if not 1 <= self.sites_per_round <= self.total_sites:
            raise ConfigurationError(
                f"sites per round ({self.sites_per_round}) must be between 1 and the number of sites "
                f"({self.total_sites})"
            )
        if not 1 <= self.min_sites <= self.sites_per_round:
            raise ConfigurationError(
                f"min sites ({self.min_sites}) must be between 1 and the sites per round "
                f"({self.sites_per_round}); a round with fewer contributions is refused"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigurationError(f"unknown accountant '{self.accountant}'; choose one of {', '.join(ACCOUNTANTS)}")

    @property
    def sample_rate(self) -> float:
        """The sampling rate q = sites sampled per round / total sites.

        Notes
        -----
        The accountant assumes Poisson sampling (each site independently with
        probability q), as in McMahan et al. (2018). Sampling a fixed number
        of sites per round is accounted with the same q, a standard
        approximation; with q = 1 (every site every round) it is exact.
        """
        return self.sites_per_round / self.total_sites


@dataclass(frozen=True)
class SiteDPPlan:
    """A calibrated site-level DP plan: the config and its noise multiplier σ."""

    config: SiteDPConfig
    noise_multiplier: float

    @classmethod
    def calibrate(cls, config: SiteDPConfig) -> SiteDPPlan:
        return cls(config, calibrate_site_noise(config))

    @property
    def noise_std(self) -> float:
        """Per-site noise standard deviation σC/√n_min."""
        return site_noise_std(self.noise_multiplier, self.config.clip_norm, self.config.min_sites)

    def history(self, rounds: int) -> GaussianHistory:
        """The accountant's history after ``rounds`` aggregated rounds."""
        c = self.config
        return GaussianHistory(self.noise_multiplier, c.sample_rate, rounds, c.delta, c.accountant)

    def epsilon_series(self) -> list[float]:
        """Site-level ε after each planned round."""
        c = self.config
        return epsilon_series(self.noise_multiplier, c.sample_rate, 1, c.rounds, c.delta, c.accountant)

    def to_record(self, frozen_keys: Sequence[str] = ()) -> ConfigRecord:
        """The ``"site-dp"`` ConfigRecord the coordinator puts in every train message.

        ``frozen_keys`` names arrays sites must not change (buffers such as the
        standardization layer's); the mod returns them equal to the global
        model so they need no noise.
        """
        c = self.config
        return ConfigRecord(
            {
                "clip-norm": float(c.clip_norm), "noise-std": float(self.noise_std),
                "noise-multiplier": float(self.noise_multiplier), "min-sites": int(c.min_sites),
                "sample-rate": float(c.sample_rate), "delta": float(c.delta), "accountant": c.accountant,
                "target-epsilon": float(c.target_epsilon), "rounds": int(c.rounds),
                "frozen-keys": [str(k) for k in frozen_keys],
            }
        )


def calibrate_site_noise(config: SiteDPConfig) -> float:
    """σ such that T rounds of the subsampled Gaussian (q, σ) spend ≤ the target site-level ε.

    Notes
    -----
    One round is one step of the subsampled Gaussian mechanism on the sum of
    clipped updates (sensitivity C, noise σC), so the accountant sees
    ``steps = rounds`` at ``q = config.sample_rate`` (McMahan et al. 2018, §3).
    """
    return calibrate_noise(config.target_epsilon, config.delta, config.sample_rate, config.rounds,
                           config.accountant)


def site_noise_std(noise_multiplier: float, clip_norm: float, min_sites: int) -> float:
    """Per-site standard deviation σ·C/√n_min of the distributed Gaussian noise.

    The sum of n ≥ n_min independent shares has standard deviation
    σC·√(n/n_min) ≥ σC. Fewer survivors than n_min weaken the guarantee; the
    coordinator must refuse such a round (:func:`require_min_contributions`).
    """
    if noise_multiplier < 0 or clip_norm <= 0 or min_sites < 1:
        raise ConfigurationError(
            f"invalid site noise parameters σ={noise_multiplier}, C={clip_norm}, n_min={min_sites}"
        )
    return noise_multiplier * clip_norm / math.sqrt(min_sites)


def add_site_noise(delta_clipped: np.ndarray, std: float, generator: np.random.Generator) -> np.ndarray:
    """``delta_clipped + N(0, std²·I)``, drawn from ``generator`` (inject it; see :func:`secure_generator`)."""
    if std < 0 or not math.isfinite(std):
        raise ConfigurationError(f"noise standard deviation must be finite and ≥ 0, got {std}")
    return delta_clipped + generator.normal(0.0, std, size=delta_clipped.shape)


def secure_generator() -> np.random.Generator:
    """A fresh numpy generator seeded with 128 bits from the OS CSPRNG (:mod:`secrets`)."""
    return np.random.default_rng(secrets.randbits(128))


def noised_norm_bound(clip_norm: float, noise_std: float, dim: int, tail: float = 10.0) -> float:
    """An L2 bound a noised update exceeds with probability ≤ exp(−tail²/2): C + std·(√d + tail).

    For a secure-aggregation mod that must bound the *noised* reply: re-clip
    to this (not to C), so that the rescaling that would void the noise
    (see the module docstring) happens with negligible probability (add it
    to δ: e^-50 ≈ 2e-22 at the default tail).

    Notes
    -----
    ‖z‖ is 1-Lipschitz in a standard Gaussian z, so P(‖z‖ ≥ E‖z‖ + t) ≤
    exp(−t²/2) (Gaussian concentration, e.g. Boucheron, Lugosi & Massart
    2013, Thm. 5.6), and E‖z‖ ≤ √d.
    """
    return clip_norm + noise_std * (math.sqrt(dim) + tail)


def noised_coordinate_bound(clip_norm: float, noise_std: float, tail: float = 10.0) -> float:
    """A bound on |each coordinate| of a noised update for quantization: C + tail·std.

    Exceeded with probability ≤ 2d·exp(−tail²/2) over d coordinates (union bound).
    """
    return clip_norm + tail * noise_std


def require_min_contributions(received: int, min_sites: int) -> None:
    """Coordinator side: refuse to aggregate a round with fewer than n_min noise shares.

    Raises
    ------
    SiteDPError
        ``received < min_sites``: the sum would carry less noise than σC.
    """
    if received < min_sites:
        raise SiteDPError(
            f"only {received} site(s) contributed but site-level DP needs at least {min_sites} "
            "noise shares per round; the round was not aggregated (raise min-sites' margin or "
            "sample more sites per round)"
        )


def _number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"the 'site-dp' field '{key}' is {value!r}, not a number")
    return float(value)


def _optional_number(record: Mapping[str, Any], key: str) -> float | None:
    return None if record.get(key) is None else _number(record, key)


def planned_rounds(record: Mapping[str, Any]) -> int:
    """The planned number of rounds T a ``"site-dp"`` instruction record declares (0 when it declares none)."""
    value = record.get("rounds", 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class SiteDPInstructions:
    """What a site reads from the ``"site-dp"`` ConfigRecord."""

    clip_norm: float
    noise_std: float
    noise_multiplier: float | None = None
    min_sites: int | None = None
    sample_rate: float | None = None
    delta: float | None = None
    accountant: str = "rdp"
    frozen_keys: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: Mapping[str, Any], prefix: str = "") -> SiteDPInstructions:
        """Parse and check (``prefix``: the keys' prefix); refuses a noise level below what the declared σ needs."""
        if f"{prefix}clip-norm" not in record or f"{prefix}noise-std" not in record:
            raise ConfigurationError(f"the 'site-dp' record needs '{prefix}clip-norm' and '{prefix}noise-std'")
        min_sites = _optional_number(record, f"{prefix}min-sites")
        frozen = record.get(f"{prefix}frozen-keys", [])
        accountant = record.get(f"{prefix}accountant", "rdp")
        found = cls(
            clip_norm=_number(record, f"{prefix}clip-norm"),
            noise_std=_number(record, f"{prefix}noise-std"),
            noise_multiplier=_optional_number(record, f"{prefix}noise-multiplier"),
            min_sites=None if min_sites is None else int(min_sites),
            sample_rate=_optional_number(record, f"{prefix}sample-rate"),
            delta=_optional_number(record, f"{prefix}delta"),
            accountant=str(accountant),
            frozen_keys=tuple(str(k) for k in frozen) if isinstance(frozen, list) else (),
        )
        if found.clip_norm <= 0 or not math.isfinite(found.clip_norm):
            raise ConfigurationError(f"site-dp clip-norm must be positive, got {found.clip_norm}")
        if found.noise_std < 0 or not math.isfinite(found.noise_std):
            raise ConfigurationError(f"site-dp noise-std must be finite and ≥ 0, got {found.noise_std}")
        if found.noise_multiplier is not None and found.min_sites is not None:
            needed = site_noise_std(found.noise_multiplier, found.clip_norm, found.min_sites)
            if found.noise_std < needed * (1 - 1e-9):
                raise ConfigurationError(
                    f"site-dp noise-std {found.noise_std:g} is below σC/√n_min = {needed:g} for the "
                    "declared σ, C and n_min; the site refuses to under-noise its update"
                )
        return found

    @classmethod
    def from_site_fields(cls, fields: Mapping[str, Any]) -> SiteDPInstructions | None:
        """What :meth:`site_fields` added to a reply's ``"site"`` record, read back; None without them."""
        if f"{SITE_FIELDS_PREFIX}noise-std" not in fields:
            return None
        return cls.from_record(fields, SITE_FIELDS_PREFIX)

    def site_fields(self) -> dict[str, float | int | str | bool]:
        """The parameters applied, as added to the reply's ``"site"`` record."""
        p = SITE_FIELDS_PREFIX
        fields: dict[str, float | int | str | bool] = {
            f"{p}clip-norm": self.clip_norm, f"{p}noise-std": self.noise_std,
            f"{p}accountant": self.accountant, f"{p}secure-seed": True,
        }
        for key, value in (("noise-multiplier", self.noise_multiplier), ("min-sites", self.min_sites),
                           ("sample-rate", self.sample_rate), ("delta", self.delta)):
            if value is not None:
                fields[f"{p}{key}"] = value
        return fields


def privatize(
    reply: ArrayRecord, global_: ArrayRecord, instructions: SiteDPInstructions, generator: np.random.Generator
) -> ArrayRecord:
    """``global + clip(reply − global, C) + noise`` over the trainable arrays, same keys and shapes.

    Arrays named in ``frozen_keys`` and non-floating arrays are returned equal
    to the global model (constant, so they need no noise).
    """
    delta = model_delta(reply, global_)
    global_vec, layout = flatten(global_)
    mask = np.ones(layout.size, dtype=bool)
    offset = 0
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes, strict=True):
        count = int(np.prod(shape))
        if key in instructions.frozen_keys or not np.issubdtype(np.dtype(dtype), np.floating):
            mask[offset:offset + count] = False
        offset += count
    clipped, _ = clip(delta[mask], instructions.clip_norm)
    noised = np.zeros(layout.size)
    noised[mask] = add_site_noise(clipped, instructions.noise_std, generator)
    return unflatten(global_vec + noised, layout)


def _single_arrays(msg: Message) -> tuple[str, ArrayRecord]:
    records = [(key, record) for key, record in msg.content.items() if isinstance(record, ArrayRecord)]
    if len(records) != 1:
        raise UpdateError(f"site_dp_mod expects exactly one ArrayRecord, found {len(records)}")
    return records[0]


def _refuse(msg: Message, reason: str) -> Message:
    logger.error("site_dp_mod refused the round: %s", reason)
    return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=reason), reply_to=msg)


def make_site_dp_mod(generator_factory: Callable[[], np.random.Generator] = secure_generator) -> Mod:
    """A site-level DP client mod drawing noise from ``generator_factory()`` (tests inject a seeded one)."""

    def site_dp_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Clip the reply's update to C and add this site's share of noise (see the module docstring).

        Acts on train messages carrying a ``"site-dp"`` ConfigRecord; passes
        everything else through. On any inconsistency it replies with an
        error and releases nothing.
        """
        record = config_record(msg.content, CONFIG_KEY)
        if msg.metadata.message_type != MessageType.TRAIN or record is None:
            return call_next(msg, context)
        try:
            instructions = SiteDPInstructions.from_record(record)
            _, global_arrays = _single_arrays(msg)
        except (ConfigurationError, UpdateError) as exc:
            return _refuse(msg, str(exc))
        global_copy = ArrayRecord({k: global_arrays[k] for k in global_arrays.keys()})
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            key, local = _single_arrays(reply)
            private = privatize(local, global_copy, instructions, generator_factory())
        except (ConfigurationError, UpdateError) as exc:
            return _refuse(msg, str(exc))
        reply.content[key] = private
        site = config_record(reply.content, SITE_RECORD)
        if site is not None:
            for name, value in instructions.site_fields().items():
                site[name] = value
        return reply

    return site_dp_mod


site_dp_mod: Mod = make_site_dp_mod()
"""The default site-level DP mod: ``@app.train(mods=[secure_mod, ledger_mod, site_dp_mod])``."""
