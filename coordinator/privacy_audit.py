"""The one-run privacy audit of a simulated run, at publication: its result is signed into the ML-BOM's metrics.

When the run config names a canary set (``sim-canaries``, written by
``fedguard simulate --canaries N``), the coordinator scores every canary on
the model it is about to publish, guesses membership with abstention and
bounds ε from below (:mod:`privacy.audit.one_run`), against the largest
record-level ε any site reported for this run (each canary is protected by
its own site's ε, so the model as a whole is max-ε DP in each canary).
The section becomes ``metrics.privacy_audit``, which the registry stores
and the BOM signs with the weights: the promotion gate
``privacy-audit-passed`` then reads a number bound to this very model by
its signature, as DESIGN §6 requires, not an attestation about a model
like it.

Notes
-----
Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023: black-box audit, canaries scored by their loss on the final
model (lower loss = guessed in).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coordinator import logger
from coordinator.config import CoordinatorConfig
from coordinator.strategies.tracked import SiteLedger
from privacy.audit import CONFIDENCE, audit
from privacy.audit.canaries import CanarySet


def canary_losses(model: nn.Module, canaries: CanarySet) -> np.ndarray:
    """Each canary's cross-entropy on its (changed) label under ``model``."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(canaries.features))
        losses = nn.functional.cross_entropy(logits, torch.from_numpy(canaries.labels), reduction="none")
    return losses.numpy().astype(float)


def claimed_epsilon(sites: Mapping[str, SiteLedger]) -> float | None:
    """The largest record-level ε a site reported for the run; ``None`` when a site trained without DP."""
    values = [site.dp.get("epsilon") for site in sites.values()]
    if not values or any(v is None for v in values):
        return None
    return max(float(v) for v in values if v is not None)


def audit_section(model: nn.Module, canaries: CanarySet, digest: str, epsilon: float | None,
                  delta: float) -> dict[str, Any]:
    """``metrics.privacy_audit`` for ``model``: the audit's numbers, the canary file's SHA-256, the confidence."""
    result = audit(-canary_losses(model, canaries), canaries.included, epsilon=epsilon, delta=delta,
                   confidence=CONFIDENCE)
    return {**result.to_dict(), "canary_set_sha256": digest, "seed": canaries.seed}


def privacy_audit_metrics(cfg: CoordinatorConfig, model: nn.Module,
                          sites: Mapping[str, SiteLedger]) -> dict[str, Any]:
    """``{"privacy_audit": ...}`` when the run planted canaries, else ``{}`` (merged into the published metrics)."""
    if not cfg.sim_canaries:
        return {}
    canaries, digest = CanarySet.load(Path(cfg.sim_canaries))
    section = audit_section(model, canaries, digest, claimed_epsilon(sites), cfg.dp_delta)
    log = logger.info if section["passed"] else logger.error
    log("privacy audit: ε̂ = %.3f against ε = %s (%d/%d guesses right, %d canaries)",
        section["epsilon_lower_bound"], section["epsilon"], section["correct"], section["guesses"],
        section["canaries"])
    return {"privacy_audit": section}
