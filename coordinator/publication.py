"""After the last round: watermark, package, sign, register, and check it all.

The coordinator publishes nothing it has not verified: the watermark must be
detected on the final weights and the signature must verify from the stored
artifact before the outcome is reported as a success.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coordinator.config import CoordinatorConfig
from coordinator.evaluation import evaluate
from coordinator.strategy import SiteLedger
from lifecycle.architecture import ModelSpec
from lifecycle.home import Home
from lifecycle.packaging import Publication, publish_model
from lifecycle.registry import Registry, SiteRecord
from lifecycle.signing import verify_model
from lifecycle.tabular import DataSchema, TabularData
from watermark import create_scheme
from watermark.secret import commitment, save_secret, secret_path


@dataclass(frozen=True)
class WatermarkOutcome:
    scheme: str
    commitment: str
    verified: bool
    trigger_accuracy: float
    p_value: float
    accuracy_before: float
    accuracy_after: float

    @property
    def accuracy_cost(self) -> float:
        return self.accuracy_before - self.accuracy_after

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme, "commitment": self.commitment, "verified": self.verified,
            "trigger_accuracy": self.trigger_accuracy, "p_value": self.p_value,
            "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
            "accuracy_cost": self.accuracy_cost,
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
    return marked, WatermarkOutcome(
        scheme.name, digest, verification.verified, verification.trigger_accuracy,
        verification.p_value, before, evaluate(marked, test).accuracy,
    )


def _site_records(sites: dict[str, SiteLedger]) -> list[SiteRecord]:
    return [
        SiteRecord(s.name, s.num_examples, s.manifest, s.dp.get("epsilon"), s.dp.get("delta"), s.rounds)
        for s in sorted(sites.values(), key=lambda s: s.name)
    ]


def training_section(cfg: CoordinatorConfig, sites: dict[str, SiteLedger], rounds: int) -> dict[str, Any]:
    """The BOM's training section: rules, DP targets, and per-site lineage."""
    return {
        "rounds": rounds,
        "aggregation": cfg.aggregation,
        "secure_aggregation": cfg.secure_aggregation,
        "local_epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "dp": {
            "kind": "record-level DP-SGD (Opacus)" if cfg.dp_epsilon > 0 else "none",
            "target_epsilon": cfg.dp_epsilon or None, "delta": cfg.dp_delta,
            "max_grad_norm": cfg.max_grad_norm,
        },
        "sites": [
            {"site": s.name, "num_examples": s.num_examples, "data_manifest": s.manifest,
             "rounds": s.rounds, "dp": dict(s.dp), "secure_rng": s.secure_rng}
            for s in sorted(sites.values(), key=lambda s: s.name)
        ],
    }


def publish_run(
    *, registry: Registry, model: nn.Module, spec: ModelSpec, schema: DataSchema, cfg: CoordinatorConfig,
    sites: dict[str, SiteLedger], rounds: int, run_id: str, metrics: dict[str, Any], mark: WatermarkOutcome,
) -> dict[str, Any]:
    """Register the model and return the outcome (paths, checks) for the caller."""
    version = publish_model(
        registry,
        Publication(
            name=cfg.model_name, model=model, spec=spec, schema=schema.feature_schema, run_id=run_id,
            run_config=cfg.as_dict(), rounds=rounds, sites=_site_records(sites),
            training=training_section(cfg, sites, rounds), watermark=mark.to_dict(), metrics=metrics,
        ),
    )
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
