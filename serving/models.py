"""The models a server holds: verified first, then loaded, then checked per request.

Serving loads a model only after its signature verifies against the trusted
public key (DESIGN.md §5), and only then opens its signed ONNX export
(``model.onnx``, :mod:`serving.runtime`) with ONNX Runtime: the serving
process imports neither torch nor any training code (never pickle either).
A model published before models were exported to ONNX has no ``model.onnx``
and is refused with a message asking to re-publish it. The feature schema
comes from the same signed BOM, so the checks a request must pass are
exactly those the model's publisher signed. Everything happens when the app
is created: a bad artifact stops the server before it accepts a single request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.artifacts import ONNX_NAME
from lifecycle.bom import bom_schema, bom_serving_format, bom_spec, read_bom
from lifecycle.bom.reference import ReferenceStats, bom_reference
from lifecycle.description import DataSchema
from lifecycle.errors import ConfigurationError, InputValidationError, SignatureError, StateError
from lifecycle.registry import Registry, VersionRecord
from lifecycle.signing import verify_model
from serving import logger
from serving.runtime import ModelRuntime, OnnxModel, softmax64

FLOAT32_MAX = float(np.finfo(np.float32).max)
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
    runtime: ModelRuntime  # the signed ONNX export in ONNX Runtime (serving.runtime.OnnxModel)
    schema: DataSchema
    reference: ReferenceStats | None = None  # training-data histograms (drift, extraction grid)

    @property
    def num_features(self) -> int:
        return len(self.schema.features)

    @property
    def num_classes(self) -> int:
        """Classes the model scores (its ONNX output's width)."""
        return self.runtime.num_classes

    def class_names(self) -> list[str] | list[int]:
        """The schema's label names, or class indices when it has none."""
        return list(self.schema.labels) if self.schema.labels else list(range(self.num_classes))

    def describe_features(self) -> str:
        """The feature names for an error message, shortened past a dozen."""
        names = list(self.schema.features[:_SHOWN_FEATURES])
        hidden = self.num_features - len(names)
        return ", ".join(names) + (f", … ({hidden} more)" if hidden > 0 else "")

    def to_batch(self, instances: Sequence[Sequence[float]], max_instances: int) -> np.ndarray:
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
        values = np.asarray(instances, dtype=np.float64)
        # Two reductions on the common (valid) path; NaN makes max/min NaN, which compares False.
        if not (values.max() <= FLOAT32_MAX and values.min() >= -FLOAT32_MAX):
            bad = ~(np.abs(values) <= FLOAT32_MAX)  # NaN compares False: caught here too
            i, j = (int(index) for index in np.argwhere(bad)[0])
            problem = "not finite" if not math.isfinite(float(values[i, j])) else "outside the float32 range"
            raise InputValidationError(
                f"instance {i} value {j} (feature '{self.schema.features[j]}') is {problem}; send finite numbers"
            )
        return values.astype(np.float32)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's float32 logits for a float32 ``batch`` (the drift monitor bins their argmax)."""
        return self.runtime.logits(batch)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax class probabilities (float64) for ``batch`` at full precision (callers round them).

        Only :mod:`serving.guards.outputs` and the server's own monitors should call
        this; scores leave only for a model whose operator configured a score-bearing
        output mode.
        """
        return softmax64(self.runtime.logits(batch))

    def predict(self, batch: np.ndarray) -> list[str] | list[int]:
        """Labels for ``batch``: the schema's label names, or class indices without them.

        Only the winning label leaves the model: scores and probabilities help
        membership-inference and model-extraction attacks (Shokri et al. 2017;
        Tramèr et al. 2016), so they are returned only through
        :mod:`serving.guards.outputs`, rounded, for a model configured to.
        """
        classes: list[int] = self.runtime.logits(batch).argmax(axis=1).tolist()
        if self.schema.labels:
            return [self.schema.labels[c] for c in classes]
        return classes


def load_version(record: VersionRecord, public_key: Path, *, threads: int = 1) -> ServedModel:
    """Verify ``record``'s signature, then open its ONNX export and check its BOM is coherent.

    ``threads`` is ONNX Runtime's intra-op thread count for this version's session.

    Raises
    ------
    SignatureError
        The signature does not verify; the message names the model version
        and the file that differs.
    StateError
        The artifact is missing, the public key is missing, the model was
        published without an ONNX export (re-publish it), or the BOM's feature
        schema does not fit the model.
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
    bom = read_bom(artifact.model_dir)
    schema, spec = bom_schema(bom), bom_spec(bom)
    runtime = _runtime(record, artifact.model_dir, bom, spec.in_features, threads)
    if len(schema.features) != spec.in_features:
        raise StateError(
            f"{record.ref}: the BOM lists {len(schema.features)} features but the model takes "
            f"{spec.in_features} inputs; re-publish the model"
        )
    if schema.labels and len(schema.labels) != runtime.num_classes:
        raise StateError(
            f"{record.ref}: the BOM lists {len(schema.labels)} labels but the model has "
            f"{runtime.num_classes} classes; re-publish the model"
        )
    logger.info("serving %s (artifact %s, %d features, ONNX Runtime)", record.ref, artifact.digest[:12],
                len(schema.features))
    return ServedModel(record.name, record.version, artifact.digest, runtime, schema, _reference(record, bom, schema))


def _runtime(record: VersionRecord, model_dir: Path, bom: dict[str, Any], features: int, threads: int) -> OnnxModel:
    """The ONNX Runtime session of a verified model directory; a model published before ONNX is refused."""
    section = bom_serving_format(bom)
    path = model_dir / ONNX_NAME
    if section is None or not path.is_file():
        raise StateError(f"{record.ref} was published before models were exported to ONNX and cannot be served; "
                         "re-publish it: run its job again with this fedguard version")
    return OnnxModel(path.read_bytes(), sha256=str(section["sha256"]), num_features=features, ref=record.ref,
                     intra_op_threads=threads)


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


def load_served_models(
    registry: Registry, public_key: Path | None = None, *, threads: int = 1
) -> dict[str, ServedModel]:
    """Verify and load the newest version of every registered model, by name.

    All or nothing: one model that fails verification stops the whole server,
    because silently serving "all but one" hides a tampered artifact.

    Parameters
    ----------
    registry
        Where the versions and artifacts are.
    public_key
        The trusted signer's PEM public key; defaults to the registry's own.
    threads
        ONNX Runtime's intra-op threads per session.
    """
    key = public_key or registry.public_key_path()
    return {record.name: load_version(record, key, threads=threads) for record in registry.latest_versions()}
