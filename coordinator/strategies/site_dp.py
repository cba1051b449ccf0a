"""Site-level DP at the coordinator: the noise instructions in every message, and n_min enforced.

Notes
-----
Each site clips its update and adds its share of Gaussian noise
(``privacy.site_dp``, after McMahan et al. 2018 and the distributed
discrete Gaussian of Kairouz et al. 2021); the coordinator only decides the
plan and refuses to aggregate a round whose sum carries too little noise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from coordinator.config import CoordinatorConfig
from privacy.site_dp import CONFIG_KEY, SiteDPConfig, SiteDPPlan, require_min_contributions
from privacy.strategy_wrapper import StrategyWrapper


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
