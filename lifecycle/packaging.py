"""Turn a trained model into a signed, content-addressed, registered artifact.

One function does the whole publication so that every producer (the
coordinator after a run, tests, future import commands) writes the same
layout: weights → ONNX export checked against PyTorch (:mod:`lifecycle.export`)
→ gates → ML-BOM → model card → signature → atomic move into
the store → registry rows and audit events in one transaction → gate
decisions. If anything fails before the registry commit, the staged files are
removed and the registry is unchanged.

Governance is evaluated twice (issue 14): before signing, every stage of the
model's current policy is measured on what the publication knows, and the
summary is written into the ML-BOM so it is signed with the weights; after
registration, the staging and production gates are evaluated again on the
registered version (signature included) and stored as decisions with trigger
``publish``. A gate that fails does not stop the publication: it stops the
promotion.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from lifecycle import logger
from lifecycle.architecture import DataSchema, ModelSpec
from lifecycle.artifacts import CARD_NAME, SIGNATURE_NAME, WEIGHTS_NAME, file_sha256
from lifecycle.audit import actors
from lifecycle.bom import model_component, read_lineage, write_bom
from lifecycle.bom.document import make_bom
from lifecycle.errors import FedguardError
from lifecycle.export import export_checked
from lifecycle.governance.criteria import Facts
from lifecycle.governance.decisions import PRODUCTION, STAGING
from lifecycle.governance.gates import evaluate_stages, site_withdrawals, summarise
from lifecycle.governance.policies import current_policy
from lifecycle.registry import Registry, SiteRecord, VersionRecord
from lifecycle.signing import ensure_signing_key, sign_model


@dataclass(frozen=True)
class Publication:
    """Everything known about a model at publication time."""

    name: str
    model: nn.Module
    spec: ModelSpec
    schema: DataSchema
    run_id: str
    run_config: dict[str, Any]
    rounds: int
    sites: list[SiteRecord]
    training: dict[str, Any]
    watermark: dict[str, Any]
    metrics: dict[str, Any]
    actor: str = str(actors.service("coordinator"))
    mode: str = "simulation"
    reference: dict[str, Any] | None = None
    supersedes: int | None = None
    """The version this one replaces (``fedguard retrain``); its ``training`` names the withdrawals it excludes."""
    excludes_withdrawals: tuple[dict[str, Any], ...] = ()
    held_out: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Feature rows of the held-out set: the ONNX export must reproduce the model's logits on them
    (:func:`lifecycle.export.export_checked`; a fixed probe batch without them)."""


def model_card(bom: dict[str, Any]) -> str:
    """A short human-readable card derived from the BOM (the BOM stays authoritative)."""
    fg = read_lineage(bom)
    training, metrics, mark = fg["training"], fg["metrics"], fg["watermark"]
    lines = [
        f"# Model card: {model_component(bom)['name']}",
        "",
        "Trained with fedguard by federated learning; no raw record left any site.",
        "",
        "## Architecture",
        f"- {ModelSpec.from_dict(fg['architecture']).describe()}, "
        f"{fg['architecture']['in_features']} inputs, {fg['architecture']['num_classes']} classes",
        "",
        "## Training",
        f"- rounds: {training.get('rounds')}, aggregation: {training.get('aggregation')}, "
        f"secure aggregation: {training.get('secure_aggregation')}",
        f"- record-level DP per site: target ε={training.get('dp', {}).get('target_epsilon')}, "
        f"δ={training.get('dp', {}).get('delta')}",
        "",
        "| site | examples | ε spent | data manifest (SHA-256) |",
        "|---|---|---|---|",
    ]
    for site in training.get("sites", []):
        eps = site.get("dp", {}).get("epsilon")
        lines.append(
            f"| {site['site']} | {site['num_examples']} | {eps if eps is None else round(eps, 3)} "
            f"| `{site['data_manifest'][:16]}…` |"
        )
    lines += ["", "## Metrics"] + [f"- {k}: {v}" for k, v in sorted(metrics.items())]
    lines += ["", "## Watermark", f"- scheme: {mark.get('scheme')}, commitment: `{mark.get('commitment')}`", ""]
    onnx = fg.get("serving_format")
    if onnx:
        parity = onnx.get("parity", {})
        lines += ["## Serving format",
                  f"- ONNX opset {onnx.get('opset')} (`{onnx.get('file')}`), ONNX Runtime {onnx.get('onnxruntime')}: "
                  f"max |logit difference| {parity.get('max_abs_diff'):.3g} against PyTorch on "
                  f"{parity.get('rows')} {parity.get('set')} rows (tolerance {parity.get('tolerance')})", ""]
    governance = fg.get("governance")
    if governance:
        lines += ["## Governance at publication", f"- policy version: {governance.get('policy_version') or 'default'}"]
        for stage, gate in governance.get("stages", {}).items():
            failing = ", ".join(f["criterion"] for f in gate.get("failing", [])) or "none"
            lines.append(f"- {stage}: {'passes' if gate.get('passed') else 'fails'} (failing: {failing})")
        lines.append("")
    return "\n".join(lines)


def governance_summary(registry: Registry, pub: Publication) -> dict[str, Any]:
    """The gates of ``pub.name``'s current policy on what ``pub`` will sign (the BOM's governance section)."""
    policy = current_policy(registry, pub.name)
    facts = Facts(metrics=pub.metrics, watermark=pub.watermark, sites=pub.sites, training=pub.training,
                  withdrawals=site_withdrawals(registry, [s.site for s in pub.sites]),
                  sensitive_attribute=policy.sensitive_attribute)
    return summarise(policy, facts)


def publish_model(registry: Registry, pub: Publication) -> VersionRecord:
    """Package, sign, store and register ``pub``; return the new version."""
    from lifecycle.weights import save_weights

    key = ensure_signing_key(registry.home.keys)
    stage = registry.store.stage()
    try:
        model_dir = stage / "model"
        save_weights(pub.model, model_dir / WEIGHTS_NAME)
        exported = export_checked(pub.model, pub.spec.in_features, model_dir, pub.held_out)
        bom = make_bom(
            model_name=pub.name, spec=pub.spec, schema=pub.schema,
            weights_sha256=file_sha256(model_dir / WEIGHTS_NAME),
            training=pub.training, watermark=pub.watermark, metrics=pub.metrics,
            reference=pub.reference, sites=pub.sites, run_id=pub.run_id, rounds=pub.rounds,
            governance=governance_summary(registry, pub), serving_format=exported.to_dict(),
        )
        write_bom(bom, model_dir)
        (model_dir / CARD_NAME).write_text(model_card(bom))
        sign_model(model_dir, stage / SIGNATURE_NAME, key)
        artifact = registry.store.commit(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    version = registry.publish(
        name=pub.name, artifact=artifact, signer_fingerprint=key.fingerprint,
        run_id=pub.run_id, run_config=pub.run_config, rounds=pub.rounds, sites=pub.sites,
        metrics=pub.metrics, watermark=pub.watermark, actor=pub.actor, mode=pub.mode,
        supersedes=pub.supersedes, excludes_withdrawals=pub.excludes_withdrawals,
    )
    try:
        evaluate_stages(registry, version.name, version.version, (STAGING, PRODUCTION), trigger="publish",
                        actor=pub.actor)
    except FedguardError as exc:  # the version is registered; promotion evaluates its gates again
        logger.warning("gates of %s not evaluated at publication: %s", version.ref, exc)
    return version


