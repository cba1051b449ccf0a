"""Assemble the round's strategy: every layer, in one place, in one order.

The layers, outermost first::

    RoundOffset                (resumed runs) every layer inside sees true round numbers
      UpdateValidationStrategy malformed replies become audited rejections before anything counts them
        TrackedStrategy        lineage and ledger charges from every valid reply; an empty round is an error
          SiteDPStrategy       (site-level DP) puts the noise instructions in each message; n_min enforced
            SecAggPlusStrategy (secagg+) or CKKSStrategy (ckks): the coordinator sees only the sum
              AdmissionStrategy leaves out sites the privacy ledger projects over their cap
                FedAvg | median | trimmed-mean | krum   (``coordinator.strategies.aggregation``)

Robust rules need individual updates, so they are refused under secure
aggregation; under secure aggregation the clipping bound is enforced inside
every site's mod, and the configuration is refused if it cannot be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.serverapp.strategy import Strategy

from coordinator.config import CoordinatorConfig
from coordinator.ledger import RunLedger
from coordinator.strategies.admission import AdmissionStrategy
from coordinator.strategies.aggregation import create_aggregation
from coordinator.strategies.round_offset import RoundOffset
from coordinator.strategies.site_dp import SiteDPStrategy
from coordinator.strategies.tracked import RoundReport, TrackedStrategy
from coordinator.strategies.validation import Rejection, UpdateValidationStrategy, UpdateValidator
from privacy.he import CKKSStrategy
from privacy.secagg.config import SecAggConfig
from privacy.secagg.strategy import SecAggPlusStrategy


def protection_bound(cfg: CoordinatorConfig, noise_std: float, num_params: int) -> float:
    """The update norm the secure mechanism clips to.

    Without site-level DP it is ``clip-norm``. With it, the update is already
    clipped to ``site-clip`` and carries Gaussian noise, and the secure mod
    must not clip again (that would reshape the noise the guarantee relies
    on): the bound is ``site-clip + std·(√d + 10)``, which a Gaussian vector
    exceeds with negligible probability (Laurent & Massart 2000).
    """
    if cfg.site_epsilon <= 0:
        return cfg.clip_norm
    return cfg.site_clip + noise_std * (math.sqrt(num_params) + 10.0)


@dataclass(frozen=True)
class StrategyStack:
    """The assembled layers: ``outer`` runs the rounds; the others are kept for what they record."""

    outer: Strategy
    validated: UpdateValidationStrategy
    tracked: TrackedStrategy


def build_strategy(
    cfg: CoordinatorConfig, *, on_round: Callable[[RoundReport], None], num_params: int,
    run_ledger: RunLedger, frozen_keys: Sequence[str] = (), completed_rounds: int = 0,
    on_reject: Callable[[Rejection], None] | None = None,
) -> StrategyStack:
    """The strategy for ``cfg`` (see the module docstring); ``completed_rounds`` > 0 resumes after them."""
    sites = cfg.required_sites  # CoordinatorConfig.validate refused impossible combinations
    plan = run_ledger.site_plan
    uniform = plan is not None  # under site-level DP every site weighs 1: sensitivity is C
    max_weight = 1.0 if uniform else cfg.max_weight
    bound = protection_bound(cfg, plan.noise_std if plan is not None else 0.0, num_params)
    inner: Strategy = AdmissionStrategy(create_aggregation(cfg.aggregation, sites=sites), run_ledger)
    if cfg.secure_aggregation == "secagg+":
        inner = SecAggPlusStrategy(
            inner, SecAggConfig.recommended(sites, bound, max_weight, weighting="uniform" if uniform else "examples"),
            timeout=cfg.round_timeout,
        )
    elif cfg.secure_aggregation == "ckks":
        inner = CKKSStrategy(
            inner, Path(cfg.he_public_context), min_sites=max(2, math.ceil(2 * sites / 3)), clip_norm=bound,
            max_weight=max_weight, weighting="uniform" if uniform else "examples", timeout=cfg.round_timeout,
        )
    if plan is not None:
        inner = SiteDPStrategy(inner, plan, frozen_keys)
    tracked = TrackedStrategy(inner, on_round=on_round, on_aggregated=run_ledger.record_round, identities=run_ledger)
    validated = UpdateValidationStrategy(tracked, UpdateValidator(cfg.secure_aggregation, bound, cfg.max_weight),
                                         on_reject=on_reject)
    outer: Strategy = RoundOffset(validated, completed_rounds) if completed_rounds else validated
    return StrategyStack(outer, validated, tracked)
