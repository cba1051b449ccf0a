"""Assemble the round's strategy: aggregation rule, protection, site-level DP, lineage.

The layers, outermost first::

    TrackedStrategy            lineage and ledger charges from every reply; an empty round is an error
      SiteDPStrategy           (site-level DP) puts the noise instructions in each message
        SecAggPlusStrategy     (secagg+) or CKKSStrategy (ckks): the coordinator sees only the sum
          AdmissionStrategy    leaves out sites the privacy ledger projects over their cap
            FedAvg | median | trimmed-mean | krum

Robust rules need individual updates, so they are refused under secure
aggregation; under secure aggregation the clipping bound is enforced inside
every site's mod, and the configuration is refused if it cannot be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator.config import CoordinatorConfig
from coordinator.ledger import AdmissionStrategy, RunLedger
from coordinator.strategy import (
    RoundReport,
    TrackedStrategy,
    create_aggregation,
)
from privacy.he import CKKSStrategy
from privacy.secagg.config import SecAggConfig
from privacy.secagg.strategy import SecAggPlusStrategy
from privacy.site_dp import (
    CONFIG_KEY,
    SiteDPConfig,
    SiteDPPlan,
    require_min_contributions,
)
from privacy.strategy_wrapper import StrategyWrapper


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


class SiteDPStrategy(StrategyWrapper):
    """Puts the ``"site-dp"`` instructions in every train message; refuses rounds below n_min.

    Each site clips its update to C and adds N(0, (σC)²/n_min) (``privacy.site_dp``);
    the sum of n_min or more contributions then carries at least σC of noise,
    so a round with fewer contributions must not be aggregated.
    """

    def __init__(self, inner: Strategy, plan: SiteDPPlan, frozen_keys: Sequence[str]) -> None:
        super().__init__(inner)
        self.plan = plan
        self.frozen_keys = list(frozen_keys)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.content[CONFIG_KEY] = self.plan.to_record(self.frozen_keys)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        require_min_contributions(sum(not m.has_error() for m in replies), self.plan.config.min_sites)
        return self.inner.aggregate_train(server_round, replies)



def site_dp_plan(cfg: CoordinatorConfig) -> SiteDPPlan | None:
    """The calibrated site-level plan (every site every round: q = 1), or None when off."""
    if cfg.site_epsilon <= 0:
        return None
    sites = cfg.required_sites
    return SiteDPPlan.calibrate(SiteDPConfig(
        target_epsilon=cfg.site_epsilon, delta=cfg.site_delta, clip_norm=cfg.site_clip,
        rounds=cfg.num_server_rounds, sites_per_round=sites, total_sites=sites, min_sites=sites,
    ))


def build_strategy(
    cfg: CoordinatorConfig, *, on_round: Callable[[RoundReport], None], num_params: int,
    run_ledger: RunLedger, frozen_keys: Sequence[str] = (),
) -> TrackedStrategy:
    """The strategy for ``cfg`` (see the module docstring)."""
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
    return TrackedStrategy(inner, on_round=on_round, on_aggregated=run_ledger.record_round)
