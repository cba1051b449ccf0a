"""After the last round: watermark, package, export to ONNX, sign, register, and check it all.

The coordinator publishes nothing it has not verified: the watermark must be
detected on the final weights, the ONNX export must give the model's logits
on the held-out set (:mod:`lifecycle.export`), and the signature must verify
from the stored artifact before the outcome is reported as a success. The lineage it
registers and signs names each site by its enrolled identity (the keys of
``TrackedStrategy.sites``, bound by ``coordinator.identity``), never by a
name a site reported about itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from coordinator import logger
from coordinator.config import CoordinatorConfig
from coordinator.evaluation import drift_section, evaluate
from coordinator.fairness import fairness_section
from coordinator.strategies.server_optimizer import describe_strategy
from coordinator.strategies.tracked import SiteLedger
from federation.protocol import bom_dp
from federation.tabular import TabularData
from lifecycle.architecture import DataSchema, ModelSpec
from lifecycle.governance.policies import current_policy
from lifecycle.home import Home
from lifecycle.packaging import Publication, publish_model
from lifecycle.registry import Registry, SiteRecord, VersionRecord
from lifecycle.signing import verify_model
from privacy.site_dp import SiteDPPlan
from watermark import create_scheme
from watermark.secret import commitment, save_secret, secret_path

COST_BOUND = 0.01
"""Held-out accuracy the watermark may cost (one point) before the publication flags it (issue 16)."""


@dataclass(frozen=True)
class WatermarkOutcome:
    """What embedding and verifying the watermark gave: the scheme, its commitment and its cost in accuracy."""

    scheme: str
    commitment: str
    verified: bool
    trigger_accuracy: float
    p_value: float
    accuracy_before: float
    accuracy_after: float
    held_out: int = 0  # records the accuracies were measured on (one record is 1/held_out of accuracy)

    @property
    def accuracy_cost(self) -> float:
        return self.accuracy_before - self.accuracy_after

    @property
    def cost_statement(self) -> str:
        """What the watermark cost, in words, for the BOM and the run's output (issue 16: say it plainly)."""
        if self.scheme == "none":
            return "no watermark embedded"
        points = 100 * self.accuracy_cost
        within = "within" if points <= 100 * COST_BOUND else "ABOVE"
        return (f"embedding the {self.scheme} watermark changed held-out accuracy from {self.accuracy_before:.4f} "
                f"to {self.accuracy_after:.4f} ({points:+.2f} points on {self.held_out} records), {within} the "
                f"{100 * COST_BOUND:.0f}-point bound")

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme, "commitment": self.commitment, "verified": self.verified,
            "trigger_accuracy": self.trigger_accuracy, "p_value": self.p_value,
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "accuracy_cost": self.accuracy_cost, "held_out_records": self.held_out,
            "cost_within_bound": self.accuracy_cost <= COST_BOUND, "cost_statement": self.cost_statement,
        }


def embed_watermark(
    model: nn.Module, spec: ModelSpec, cfg: CoordinatorConfig, home: Home, test: TabularData
) -> tuple[nn.Module, WatermarkOutcome]:
    """Embed the configured watermark without site data, store its secret, and verify it.

    Returns the watermarked model (a new module; ``model`` is left as the aggregate).

    ``watermark = "none"`` publishes an unmarked model (benchmarks, research);
    the outcome then says ``verified: false`` and the BOM records no scheme.
    """
    if cfg.watermark == "none":
        accuracy = evaluate(model, test).accuracy
        return model, WatermarkOutcome("none", "", False, 0.0, 1.0, accuracy, accuracy)
    scheme = create_scheme(cfg.watermark)
    generator = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    before = evaluate(model, test).accuracy
    secret = scheme.generate(model, spec, generator=generator)
    marked = scheme.embed(model, secret, generator=generator).model
    verification = scheme.verify(marked, secret)  # raises WatermarkError if not detected
    digest = save_secret(secret, secret_path(home.keys, commitment(secret)))
    outcome = WatermarkOutcome(
        scheme.name, digest, verification.verified, verification.trigger_accuracy,
        verification.p_value, before, evaluate(marked, test).accuracy, len(test.labels),
    )
    if outcome.accuracy_cost > COST_BOUND:
        logger.warning("%s", outcome.cost_statement)
    else:
        logger.info("%s", outcome.cost_statement)
    return marked, outcome


def _site_records(sites: dict[str, SiteLedger]) -> list[SiteRecord]:
    return [
        SiteRecord(s.name, s.num_examples, s.manifest, s.dp.get("epsilon"), s.dp.get("delta"), s.rounds)
        for s in sorted(sites.values(), key=lambda s: s.name)
    ]


def site_level_epsilon(plan: SiteDPPlan | None, rounds: int) -> float | None:
    """Site-level ε after ``rounds`` aggregated rounds of ``plan`` (None without site-level DP)."""
    return plan.history(rounds).epsilon() if plan is not None else None


def _site_level(plan: SiteDPPlan | None, site: SiteLedger) -> dict[str, Any]:
    """Everything that determines one site's site-level ε, beside the ε itself."""
    if plan is None:
        return {}
    c = plan.config
    return {
        "epsilon": site_level_epsilon(plan, site.rounds), "noise_multiplier": plan.noise_multiplier,
        "sample_rate": c.sample_rate, "steps": site.rounds, "delta": c.delta, "accountant": c.accountant,
        "clip_norm": c.clip_norm, "min_sites": c.min_sites, "noise_std": plan.noise_std,
    }


def _record_level(site: SiteLedger) -> dict[str, Any]:
    """The site's DP-SGD parameters under the BOM's names (what determines its record-level ε)."""
    return bom_dp(site.dp)


def training_section(
    cfg: CoordinatorConfig, sites: dict[str, SiteLedger], rounds: int, *,
    site_plan: SiteDPPlan | None = None, ledger: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The BOM's training section: rules, DP targets, and per-site lineage with both ε kinds."""
    return {
        "rounds": rounds,
        "aggregation": cfg.aggregation,
        "strategy": describe_strategy(cfg.strategy, cfg.proximal_mu, cfg.server_lr),
        "secure_aggregation": cfg.secure_aggregation,
        "local_epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "dp": {
            "kind": "record-level DP-SGD (Opacus)" if cfg.dp_epsilon > 0 else "none",
            "target_epsilon": cfg.dp_epsilon or None, "delta": cfg.dp_delta,
            "max_grad_norm": cfg.max_grad_norm,
        },
        "site_dp": {
            "kind": "site-level DP-FedAvg, distributed Gaussian noise" if site_plan else "none",
            "target_epsilon": cfg.site_epsilon or None, "delta": cfg.site_delta if site_plan else None,
            "clip_norm": cfg.site_clip if site_plan else None,
            "noise_multiplier": site_plan.noise_multiplier if site_plan else None,
        },
        "sites": [
            {"site": s.name, "num_examples": s.num_examples, "data_manifest": s.manifest,
             "rounds": s.rounds, "dp": _record_level(s), "site_dp": _site_level(site_plan, s),
             "ledger": (ledger or {}).get(s.name, {}), "secure_rng": s.secure_rng}
            for s in sorted(sites.values(), key=lambda s: s.name)
        ],
    }


def publish_run(
    *, registry: Registry, model: nn.Module, spec: ModelSpec, schema: DataSchema, cfg: CoordinatorConfig,
    sites: dict[str, SiteLedger], rounds: int, run_id: str, metrics: dict[str, Any], mark: WatermarkOutcome,
    site_plan: SiteDPPlan | None = None, ledger: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None, extra_training: dict[str, Any] | None = None,
    held_out: np.ndarray | None = None,
) -> dict[str, Any]:
    """Register the model and return the outcome (paths, checks) for the caller.

    ``held_out`` are the held-out set's feature rows: the model's ONNX export
    must give PyTorch's logits on them (:func:`lifecycle.export.export_checked`),
    or nothing is published.

    ``reference`` (summed site histograms, :mod:`coordinator.reference`) goes
    into the BOM, signed with the weights. ``extra_training`` adds keys to the
    BOM's training section (e.g. the rounds' dropouts in a deployment).
    """
    excluded = tuple(w.to_dict() for w in cfg.withdrawals)
    version = publish_model(
        registry,
        Publication(
            name=cfg.model_name, model=model, spec=spec, schema=schema, run_id=run_id,
            run_config=cfg.as_dict(), rounds=rounds, sites=_site_records(sites),
            training={**training_section(cfg, sites, rounds, site_plan=site_plan, ledger=ledger),
                      **({"excludes_withdrawals": list(excluded)} if excluded else {}),
                      **(extra_training or {})},
            watermark=mark.to_dict(), metrics=metrics, reference=reference,
            mode="deployment" if cfg.run_id else "simulation",  # only `fedguard run` sets a run-id
            supersedes=cfg.supersedes or None, excludes_withdrawals=excluded, held_out=held_out,
        ),
    )
    return published_outcome(registry, version)


def gate_metrics(
    registry: Registry, cfg: CoordinatorConfig, model: nn.Module, test: TabularData, schema: DataSchema,
    reference: dict[str, Any] | None,
) -> dict[str, Any]:
    """The metrics the promotion gates read beside accuracy: ``fairness`` and ``drift``, where measurable.

    Fairness needs the model's policy to name a ``sensitive-attribute`` that
    is a feature of the held-out set (:mod:`coordinator.fairness`); drift
    needs the reference statistics published with the model
    (:func:`coordinator.evaluation.drift_section`). A gate whose measurement
    is absent fails and says why, so nothing here is guessed.
    """
    metrics: dict[str, Any] = {}
    attribute = current_policy(registry, cfg.model_name).sensitive_attribute
    fairness = fairness_section(model, test, schema, attribute)
    if fairness is not None:
        metrics["fairness"] = fairness
    elif attribute is not None:
        logger.warning("the policy's sensitive-attribute '%s' is not a feature of the held-out set (%s): "
                       "fairness is not measured", attribute, ", ".join(schema.features))
    drift = drift_section(test, reference)
    if drift is not None:
        metrics["drift"] = drift
    return metrics


def published_outcome(registry: Registry, version: VersionRecord) -> dict[str, Any]:
    """The outcome's model part for a registered ``version``, after verifying its signature from the store."""
    public_key = registry.public_key_path()
    verify_model(version.artifact.model_dir, version.artifact.signature_path, public_key)
    return {
        "model": version.name,
        "version": version.version,
        "artifact": str(version.artifact.model_dir),
        "signature_path": str(version.artifact.signature_path),
        "public_key": str(public_key),
        "signature": {"verified": True, "signer": version.signer_fingerprint},
    }
