"""Assemble the round's strategy: aggregation rule, protection, site-level DP, lineage.

The layers, outermost first::

    TrackedStrategy          lineage from every reply; an empty round is an error
      SiteDPStrategy         (site-level DP) puts the noise instructions in each message
        SecAggPlusStrategy   (secagg+) or CKKSStrategy (ckks): the coordinator sees only the sum
          FedAvg | median | trimmed-mean | krum

Robust rules need individual updates, so they are refused under secure
aggregation; under secure aggregation the clipping bound is enforced inside
every site's mod, and the configuration is refused if it cannot be.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp.strategy import Strategy

from coordinator.config import CoordinatorConfig
from coordinator.strategy import RoundReport, TrackedStrategy, create_aggregation
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


def build_strategy(
    cfg: CoordinatorConfig, *, on_round: Callable[[RoundReport], None], num_params: int, site_dp: Callable[[Strategy], Strategy] | None = None, noise_std: float = 0.0,
) -> TrackedStrategy:
    """The strategy for ``cfg`` (see the module docstring)."""
    sites = cfg.required_sites  # CoordinatorConfig.validate refused impossible combinations
    inner = create_aggregation(cfg.aggregation, sites=sites)
    weighting = "uniform" if cfg.site_epsilon > 0 else "examples"
    max_weight = 1.0 if weighting == "uniform" else cfg.max_weight
    bound = protection_bound(cfg, noise_std, num_params)
    if cfg.secure_aggregation == "secagg+":
        inner = SecAggPlusStrategy(
            inner, SecAggConfig.recommended(sites, bound, max_weight, weighting=weighting),
            timeout=cfg.round_timeout,
        )
    elif cfg.secure_aggregation == "ckks":
        inner = CKKSStrategy(
            inner, Path(cfg.he_public_context), min_sites=max(2, math.ceil(2 * sites / 3)), clip_norm=bound,
            max_weight=max_weight, weighting=weighting, timeout=cfg.round_timeout,
        )
    if site_dp is not None:
        inner = site_dp(inner)
    return TrackedStrategy(inner, on_round=on_round)
