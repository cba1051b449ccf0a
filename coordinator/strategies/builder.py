"""Assemble the round's strategy: every layer, in one place, in one order.

The layers, outermost first::

    RoundOffset                (resumed runs) every layer inside sees true round numbers
     ServerOptimizerStrategy   (fedadam, fedyogi, fedavgm) a server step on each *accepted* aggregate
      AggregateGuardStrategy   the round's sum must fit the honest bounds and keep held-out accuracy;
                               else retried once (fresh masks, same sites), then skipped; repeats stop the run
        UpdateValidationStrategy malformed replies become audited rejections before anything counts them
          TrackedStrategy        lineage and ledger charges from every valid reply; an empty round is an error
            SiteDPStrategy       (site-level DP) puts the noise instructions in each message; n_min enforced
              SecAggPlusStrategy (secagg+) or CKKSStrategy (ckks): the coordinator sees only the sum
                AdmissionStrategy leaves out sites the privacy ledger projects over their cap
                  FedAvg | median | trimmed-mean | krum   (``coordinator.strategies.aggregation``)

Robust rules need individual updates, so they are refused under secure
aggregation; under secure aggregation the clipping bound is enforced inside
every site's mod, and the configuration is refused if it cannot be. What the
coordinator can check of a site that skips its mod is the sum: the guard
sits outside everything, so that its retry runs the whole stack again (the
retry's replies are validated, tracked and charged like the first
attempt's), and it reads what the secure layer summed (``contributors``,
``total_weight``) to check the bounds of
:mod:`coordinator.strategies.aggregate_bounds`. The server optimiser sits
outside the guard, so the guard judges what the sites sent and the
optimiser never steps on a rejected sum
(:mod:`coordinator.strategies.server_optimizer` says why).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from coordinator.config import CoordinatorConfig
from coordinator.ledger import RunLedger
from coordinator.strategies.admission import AdmissionStrategy
from coordinator.strategies.aggregate_bounds import AggregateBounds
from coordinator.strategies.aggregate_guard import (
    AggregateGuardStrategy,
    Attempt,
    GuardEvent,
    SecureSum,
    ledger_round,
)
from coordinator.strategies.aggregation import create_aggregation
from coordinator.strategies.round_offset import RoundOffset
from coordinator.strategies.server_optimizer import ServerOptimizerStrategy, create_server_optimizer
from coordinator.strategies.site_dp import SiteDPStrategy
from coordinator.strategies.tracked import RoundReport, TrackedStrategy
from coordinator.strategies.validation import Rejection, UpdateValidationStrategy, UpdateValidator
from privacy.he import CKKSStrategy
from privacy.secagg.config import SecAggConfig
from privacy.secagg.strategy import SecAggPlusStrategy

CKKS_RESOLUTION = 1e-5
"""Decoding error allowed per site and coordinate of a CKKS sum (measured ~3e-8 at scale 2⁴⁰: DESIGN §10)."""


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
    guard: AggregateGuardStrategy


def build_strategy(
    cfg: CoordinatorConfig, *, on_round: Callable[[RoundReport], None], num_params: int,
    run_ledger: RunLedger, frozen_keys: Sequence[str] = (), completed_rounds: int = 0,
    on_reject: Callable[[Rejection], None] | None = None,
    accuracy: Callable[[ArrayRecord], float] | None = None, on_guard: Callable[[GuardEvent], None] | None = None,
) -> StrategyStack:
    """The strategy for ``cfg`` (see the module docstring); ``completed_rounds`` > 0 resumes after them.

    ``accuracy`` evaluates a candidate global model on the coordinator's
    held-out set (the guard's accuracy check; None disables it, and so does
    site-level DP), ``on_guard`` receives every aggregate the guard rejects.
    """
    sites = cfg.required_sites  # CoordinatorConfig.validate refused impossible combinations
    plan = run_ledger.site_plan
    uniform = plan is not None  # under site-level DP every site weighs 1: sensitivity is C
    max_weight = 1.0 if uniform else cfg.max_weight
    bound = protection_bound(cfg, plan.noise_std if plan is not None else 0.0, num_params)
    inner: Strategy = AdmissionStrategy(create_aggregation(cfg.aggregation, sites=sites), run_ledger)
    secure: SecAggPlusStrategy | CKKSStrategy | None = None
    resolution = CKKS_RESOLUTION
    if cfg.secure_aggregation == "secagg+":
        secagg = SecAggConfig.recommended(sites, bound, max_weight, weighting="uniform" if uniform else "examples")
        secure = SecAggPlusStrategy(inner, secagg, timeout=cfg.round_timeout, keys_ahead=cfg.secagg_keys_ahead)
        resolution = 0.5 / secagg.effective_scale  # round(x·scale): half a step per site and coordinate
    elif cfg.secure_aggregation == "ckks":
        secure = CKKSStrategy(
            inner, Path(cfg.he_public_context), min_sites=max(2, math.ceil(2 * sites / 3)), clip_norm=bound,
            max_weight=max_weight, weighting="uniform" if uniform else "examples", timeout=cfg.round_timeout,
        )
    inner = secure if secure is not None else inner
    if plan is not None:
        inner = SiteDPStrategy(inner, plan, frozen_keys)
    attempt = Attempt()
    tracked = TrackedStrategy(
        inner, on_round=on_round, identities=run_ledger,
        on_aggregated=lambda r, replies: run_ledger.record_round(ledger_round(r, attempt), replies))
    validated = UpdateValidationStrategy(tracked, UpdateValidator(cfg.secure_aggregation, bound, cfg.max_weight),
                                         on_reject=on_reject)
    bounds = None if secure is None else AggregateBounds(
        cfg.site_clip if plan is not None else cfg.clip_norm, max_weight,
        noise_std=plan.noise_std if plan is not None else 0.0, noise_dim=num_params, resolution=resolution,
    )
    summed: SecureSum | None = secure
    # Under site-level DP the noise alone moves held-out accuracy by tens of points a round at small n
    # (measured: 0.614 → 0.395, 3 sites, site ε = 5), and each retry is one more charged release: the
    # accuracy check would reject honest rounds, so only the noise-aware bounds apply there.
    guard = AggregateGuardStrategy(
        validated, bounds=bounds, secure_sum=summed, accuracy=accuracy if plan is None else None,
        max_accuracy_drop=cfg.max_accuracy_drop,
        max_rejected_rounds=cfg.max_rejected_rounds, timeout=cfg.round_timeout, attempt=attempt,
        on_event=on_guard, on_discard=tracked.discard,
    )
    optimizer = create_server_optimizer(cfg.strategy, cfg.server_lr)
    stepped: Strategy = guard if optimizer is None else ServerOptimizerStrategy(guard, optimizer)
    outer: Strategy = RoundOffset(stepped, completed_rounds) if completed_rounds else stepped
    return StrategyStack(outer, validated, tracked, guard)
