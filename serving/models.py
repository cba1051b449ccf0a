"""The models a server holds: verified first, then loaded, then checked per request.

Serving loads a model only after its signature verifies against the trusted
public key (DESIGN.md §5), and only then rebuilds it from ``bom.json`` and
``weights.safetensors`` (never pickle). The feature schema comes from the same
signed BOM, so the checks a request must pass are exactly those the model's
publisher signed. Everything happens when the app is created: a bad artifact
stops the server before it accepts a single request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lifecycle.architecture import DataSchema
from lifecycle.artifacts import load_model
from lifecycle.bom import bom_schema, bom_spec
from lifecycle.bom.reference import ReferenceStats, bom_reference
from lifecycle.errors import ConfigurationError, InputValidationError, SignatureError, StateError
from lifecycle.registry import Registry, VersionRecord
from lifecycle.signing import verify_model
from serving import logger
from serving.inference import MAX_ROWS, MLPPlan, softmax64

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""Largest finite float32: a value beyond it cannot reach the model (422; the OpenAPI document says so too)."""
_SHOWN_FEATURES = 12
# model_signing reports differences inside a repr()'d list, whose quoting (' or
# \' or ") depends on the digest bytes; these patterns accept all three.


@dataclass(frozen=True)
class ServedModel:
    """One loaded, verified model version and the schema its inputs must match."""

    name: str
    version: int
    digest: str
    module: nn.Module
    schema: DataSchema
    reference: ReferenceStats | None = None  # training-data histograms (drift, extraction grid)
    plan: MLPPlan | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # numpy evaluation for request-sized batches (serving.inference); None: PyTorch only
        object.__setattr__(self, "plan", MLPPlan.of(self.module))

    @property
    def num_features(self) -> int:
        return len(self.schema.features)

    @property
    def num_classes(self) -> int:
        """Classes the model scores: its last linear layer's outputs (the schema's labels otherwise)."""
        linear = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
        return int(linear[-1].out_features) if linear else len(self.schema.labels)

    def class_names(self) -> list[str] | list[int]:
        """The schema's label names, or class indices when it has none."""
        return list(self.schema.labels) if self.schema.labels else list(range(self.num_classes))

    def describe_features(self) -> str:
        """The feature names for an error message, shortened past a dozen."""
        names = list(self.schema.features[:_SHOWN_FEATURES])
        hidden = self.num_features - len(names)
        return ", ".join(names) + (f", … ({hidden} more)" if hidden > 0 else "")

    def to_batch(self, instances: Sequence[Sequence[float]], max_instances: int) -> torch.Tensor:
        """Check ``instances`` against the schema and return them as one float32 batch.

        Instances and values are numbered from 0, as in the JSON array.

        Raises
        ------
        InputValidationError
            No instances, too many, a wrong value count, or a value that is not
            a finite float32 number; the message names the instance and value.
        """
        if not instances:
            raise InputValidationError("'instances' is empty; send at least one instance")
        if len(instances) > max_instances:
            raise InputValidationError(
                f"{len(instances)} instances in one request; the limit is {max_instances}: split the batch"
            )
        for i, row in enumerate(instances):
            if len(row) != self.num_features:
                raise InputValidationError(
                    f"instance {i} has {len(row)} values; the model expects {self.num_features} "
                    f"(features: {self.describe_features()})"
                )
        # numpy, not torch, for the checks: on a request-sized batch each torch op costs
        # ~10 µs of dispatch, a numpy one ~1 µs (benchmarks/serving.py).
        values = np.asarray(instances, dtype=np.float64)
        # Two reductions on the common (valid) path; NaN makes max/min NaN, which compares False.
        if not (values.max() <= FLOAT32_MAX and values.min() >= -FLOAT32_MAX):
            bad = ~(np.abs(values) <= FLOAT32_MAX)  # NaN compares False: caught here too
            i, j = (int(index) for index in np.argwhere(bad)[0])
            problem = "not finite" if not math.isfinite(float(values[i, j])) else "outside the float32 range"
            raise InputValidationError(
                f"instance {i} value {j} (feature '{self.schema.features[j]}') is {problem}; send finite numbers"
            )
        return torch.from_numpy(values.astype(np.float32))

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities for ``batch`` at full precision (callers round them).

        Only :mod:`serving.guards.outputs` should call this, and only for a model whose
        operator configured a score-bearing output mode.
        """
        if self.plan is not None and len(batch) <= MAX_ROWS:
            return torch.from_numpy(softmax64(self.plan.logits(batch.detach().numpy())))
        with torch.no_grad():
            return torch.softmax(self.module(batch).to(torch.float64), dim=1)

    def predict(self, batch: torch.Tensor) -> list[str] | list[int]:
        """Labels for ``batch``: the schema's label names, or class indices without them.

        Only the winning label leaves the model: scores and probabilities help
        membership-inference and model-extraction attacks (Shokri et al. 2017;
        Tramèr et al. 2016), so they are returned only through
        :mod:`serving.guards.outputs`, rounded, for a model configured to.
        """
        if self.plan is not None and len(batch) <= MAX_ROWS:
            classes: list[int] = self.plan.logits(batch.detach().numpy()).argmax(axis=1).tolist()
        else:
            with torch.no_grad():
                classes = self.module(batch).argmax(dim=1).tolist()
        if self.schema.labels:
            return [self.schema.labels[c] for c in classes]
        return classes


def load_version(record: VersionRecord, public_key: Path) -> ServedModel:
    """Verify ``record``'s signature, then load it and check its BOM is coherent.

    Raises
    ------
    SignatureError
        The signature does not verify; the message names the model version
        and the file that differs.
    StateError
        The artifact is missing, the public key is missing, or the BOM's
        feature schema does not fit the architecture.
    """
    artifact = record.artifact
    if not artifact.model_dir.is_dir():
        raise StateError(
            f"artifact {artifact.digest[:12]} of {record.ref} is missing from '{artifact.root.parent}'; "
            "restore FEDGUARD_HOME/artifacts from a backup"
        )
    try:
        verify_model(artifact.model_dir, artifact.signature_path, public_key)
    except SignatureError as exc:
        files = exc.files
        if files:
            raise SignatureError(
                f"refusing to serve {record.ref}: {', '.join(files)} in '{artifact.model_dir}' "
                "differ(s) from what was signed; do not serve this model, re-publish it or restore "
                "the artifact from a backup"
            ) from exc
        raise SignatureError(f"refusing to serve {record.ref}: {exc}") from exc
    module, bom = load_model(artifact.model_dir)
    schema, spec = bom_schema(bom), bom_spec(bom)
    if len(schema.features) != spec.in_features:
        raise StateError(
            f"{record.ref}: the BOM lists {len(schema.features)} features but the model takes "
            f"{spec.in_features} inputs; re-publish the model"
        )
    if schema.labels and len(schema.labels) != spec.num_classes:
        raise StateError(
            f"{record.ref}: the BOM lists {len(schema.labels)} labels but the model has "
            f"{spec.num_classes} classes; re-publish the model"
        )
    logger.info("serving %s (artifact %s, %d features)", record.ref, artifact.digest[:12], len(schema.features))
    return ServedModel(record.name, record.version, artifact.digest, module, schema, _reference(record, bom, schema))


def _reference(record: VersionRecord, bom: dict[str, Any], schema: DataSchema) -> ReferenceStats | None:
    """The BOM's reference statistics, checked against the schema (``None`` if it has none)."""
    try:
        reference = bom_reference(bom)
    except ConfigurationError as exc:
        raise StateError(f"{record.ref}: {exc}") from exc
    if reference is not None and reference.features != schema.features:
        raise StateError(f"{record.ref}: the BOM's reference statistics name other features than its schema; "
                         "re-publish the model")
    return reference


def load_served_models(registry: Registry, public_key: Path | None = None) -> dict[str, ServedModel]:
    """Verify and load the newest version of every registered model, by name.

    All or nothing: one model that fails verification stops the whole server,
    because silently serving "all but one" hides a tampered artifact.

    Parameters
    ----------
    registry
        Where the versions and artifacts are.
    public_key
        The trusted signer's PEM public key; defaults to the registry's own.
    """
    key = public_key or registry.public_key_path()
    return {record.name: load_version(record, key) for record in registry.latest_versions()}
