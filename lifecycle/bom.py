"""The ML-BOM: what a model is made of, written next to its weights and signed with them.

Shaped as a CycloneDX 1.6 document (``machine-learning-model`` component plus
the main libraries), with a ``fedguard`` section that carries the lineage a
regulator or auditor asks for: architecture and feature schema, sites and the
SHA-256 manifest of each site's data (never the data), rounds, DP parameters
and ε per site, aggregation rule, secure-aggregation mode, watermark scheme and
commitment, metrics, code version and dependency versions, and, where the
coordinator collected them, the ``reference`` statistics of the training data
(summed per-feature histograms; see :mod:`federation.reference`).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from lifecycle.architecture import FeatureSchema, ModelSpec
from lifecycle.errors import StateError

BOM_NAME = "bom.json"
MAIN_DEPENDENCIES = ("torch", "flwr", "opacus", "safetensors", "model-signing", "cryptography", "scikit-learn")


def dependency_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape a model's behaviour."""
    versions: dict[str, str] = {}
    for name in MAIN_DEPENDENCIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def code_version() -> str:
    """fedguard's version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("fedguard")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" if commit else version


def make_bom(
    *,
    model_name: str,
    spec: ModelSpec,
    schema: FeatureSchema,
    weights_sha256: str,
    training: dict[str, Any],
    watermark: dict[str, Any],
    metrics: dict[str, Any],
    now: datetime | None = None,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the ML-BOM document (a plain, JSON-serialisable dict).

    ``reference``, when given, is the training data's summed per-feature
    histograms (:class:`federation.reference.ReferenceStats`), which serving's
    drift monitor compares live traffic with.
    """
    deps = dependency_versions()
    bom: dict[str, Any] = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": (now or datetime.now(UTC)).isoformat(),
            "tools": [{"name": "fedguard", "version": code_version()}],
        },
        "components": [
            {
                "type": "machine-learning-model",
                "name": model_name,
                "hashes": [{"alg": "SHA-256", "content": weights_sha256}],
                "modelCard": {"modelParameters": {"task": "classification", "architectureFamily": spec.kind}},
            },
            *({"type": "library", "name": n, "version": v} for n, v in deps.items()),
        ],
        "fedguard": {
            "architecture": spec.to_dict(),
            "feature_schema": schema.to_dict(),
            "training": training,
            "watermark": watermark,
            "metrics": metrics,
            "code_version": code_version(),
            "dependencies": deps,
        },
    }
    if reference is not None:
        bom["fedguard"]["reference"] = reference
    return bom


def write_bom(bom: dict[str, Any], model_dir: Path) -> Path:
    path = model_dir / BOM_NAME
    path.write_text(json.dumps(bom, indent=2, sort_keys=True) + "\n")
    return path


def read_bom(model_dir: Path) -> dict[str, Any]:
    """Read and sanity-check ``bom.json`` from a model directory."""
    path = model_dir / BOM_NAME
    try:
        bom: dict[str, Any] = json.loads(path.read_text())
        section = bom["fedguard"]
        ModelSpec.from_dict(section["architecture"])
        FeatureSchema.from_dict(section["feature_schema"])
    except FileNotFoundError as exc:
        raise StateError(f"model directory '{model_dir}' has no {BOM_NAME}; it is not a fedguard model") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"'{path}' is not a valid fedguard ML-BOM ({exc}); re-export the model") from exc
    return bom


def bom_spec(bom: dict[str, Any]) -> ModelSpec:
    return ModelSpec.from_dict(bom["fedguard"]["architecture"])


def bom_schema(bom: dict[str, Any]) -> FeatureSchema:
    return FeatureSchema.from_dict(bom["fedguard"]["feature_schema"])
