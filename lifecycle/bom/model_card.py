"""The CycloneDX model card of a fedguard model, and the lineage facts spelled as properties.

The model card (CycloneDX 1.6 ``modelCard``, derived from Google's Model Card
Toolkit; Mitchell et al., "Model Cards for Model Reporting", FAT* 2019) says
what a reader of any CycloneDX tool needs without knowing fedguard: the task
and architecture, the datasets (each site's data component), the performance
metrics, and the considerations that differential privacy and federated
training bring. The readable ``fedguard:`` properties repeat the main lineage
facts (DP parameters, secure aggregation, watermark) one value per property,
so that they show in tools that list properties; the exact sections stay in
the ``fedguard:lineage:*`` properties that :func:`lifecycle.bom.read_lineage` reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lifecycle.description import ModelSpec

NO_DP = "trained without differential privacy: no bound on what the model reveals about its training records"


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def performance_metrics(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """Numeric metrics as CycloneDX performance metrics; one nested level becomes the ``slice``."""
    entries: list[dict[str, str]] = []
    for name, value in sorted(metrics.items()):
        if _scalar(value):
            entries.append({"type": name, "value": _text(value)})
        elif isinstance(value, Mapping):
            entries += [{"type": name, "value": _text(v), "slice": str(k)}
                        for k, v in sorted(value.items()) if _scalar(v)]
    return entries


def _considerations(training: Mapping[str, Any]) -> dict[str, Any]:
    dp = training.get("dp", {}) or {}
    site_dp = training.get("site_dp", {}) or {}
    tradeoffs = []
    if dp.get("target_epsilon"):
        tradeoffs.append(f"record-level differential privacy (DP-SGD, target ε={dp['target_epsilon']}, "
                         f"δ={dp.get('delta')}) costs accuracy in exchange for a bound on what the model reveals "
                         "about any one training record (Abadi et al., CCS 2016)")
    if site_dp.get("target_epsilon"):
        tradeoffs.append(f"site-level differential privacy (target ε={site_dp['target_epsilon']}) bounds what the "
                         "model reveals about any one site's participation (McMahan et al., ICLR 2018)")
    return {
        "useCases": ["classification of tabular records described by the signed feature schema"],
        "technicalLimitations": [
            ("trained only on the sites listed as datasets; records unlike theirs (other populations, "
             "other measurement conventions) may be classified poorly"),
            "inputs outside the feature schema are refused by fedguard's serving tier",
        ],
        "performanceTradeoffs": tradeoffs or [NO_DP],
        "ethicalConsiderations": [{
            "name": "membership inference against a site's records",
            "mitigationStrategy": "federated training (records never leave their site), secure aggregation "
                                  f"({training.get('secure_aggregation', 'none')}), and the DP bounds above",
        }],
    }


def model_card_section(
    spec: ModelSpec, training: Mapping[str, Any], metrics: Mapping[str, Any], *, datasets: Sequence[str],
) -> dict[str, Any]:
    """The ``modelCard`` object of the model component (CycloneDX 1.6)."""
    return {
        "modelParameters": {
            "approach": {"type": "supervised"},
            "task": "classification",
            "architectureFamily": spec.kind,
            "modelArchitecture": spec.describe(),
            "datasets": [{"ref": ref} for ref in datasets],
            "inputs": [{"format": "image" if spec.kind == "cnn" else "tabular"}],
            "outputs": [{"format": "class label"}],
        },
        "quantitativeAnalysis": {"performanceMetrics": performance_metrics(metrics)},
        "considerations": _considerations(training),
    }


def summary_properties(training: Mapping[str, Any], watermark: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The main training and watermark facts, one ``fedguard:`` property each (absent values left out)."""
    dp = training.get("dp", {}) or {}
    site_dp = training.get("site_dp", {}) or {}
    facts = {
        "fedguard:aggregation": training.get("aggregation"),
        "fedguard:strategy": (training.get("strategy") or {}).get("name"),
        "fedguard:secure-aggregation": training.get("secure_aggregation"),
        "fedguard:dp:kind": dp.get("kind"),
        "fedguard:dp:target-epsilon": dp.get("target_epsilon"),
        "fedguard:dp:delta": dp.get("delta"),
        "fedguard:dp:max-grad-norm": dp.get("max_grad_norm"),
        "fedguard:site-dp:kind": site_dp.get("kind"),
        "fedguard:site-dp:target-epsilon": site_dp.get("target_epsilon"),
        "fedguard:site-dp:delta": site_dp.get("delta"),
        "fedguard:site-dp:noise-multiplier": site_dp.get("noise_multiplier"),
        "fedguard:watermark:scheme": watermark.get("scheme"),
        "fedguard:watermark:commitment": watermark.get("commitment") or None,
        "fedguard:watermark:verified": watermark.get("verified"),
    }
    return [(name, _text(value)) for name, value in facts.items() if value is not None]
