"""Black-box watermark verification through the running server: an admin route, audited.

``POST /v1/admin/models/{name}/versions/{version}/watermark/verify`` takes the
owner's secret file (the bytes :func:`watermark.secret.save_secret` wrote,
base64 in JSON), runs its triggers through the served ONNX model and answers
the trigger accuracy and the binomial p-value.

Design (issue 16, docs/watermark.md "Verifying through a running server"):

* **The server never holds the secret.** Secrets stay with the coordinator's
  keys (``FEDGUARD_HOME/keys/watermarks``), off serving hosts (docs/serving.md
  §2); the admin brings the file for one call. The server keeps nothing of it:
  not in memory past the request, not in a log, and the audit event carries
  only the commitment and the counts, never a trigger or a label.
* **Only the committed secret counts.** The commitment is recomputed from the
  uploaded bytes (:mod:`watermark.evidence`, the same encoding as the
  coordinator's) and must equal the one in the version's signed ML-BOM;
  otherwise 422. An admin cannot have the server attest a trigger set forged
  after release (the ambiguity attack of Adi et al. 2018, Sec. 3).
* **Triggers skip the feature-range guard here only.** Triggers are
  deliberately out of distribution (±5 standard deviations), which the
  operator's ranges (:mod:`serving.guards.ranges`) exist to refuse on the
  predict routes; this route checks shape and finiteness only. It takes no
  quota, feeds neither the drift monitor nor the extraction guard (the
  triggers would poison both), and answers nothing but the counts.
* **Black-box only**: a ``weight-key`` secret is verified from the weights
  (``fedguard models verify``); the route answers 400 for it.

Notes
-----
The decision is the trigger-set scheme's: agreement with the secret's random
labels is ``Binomial(n, 1/num_classes)`` for a model that never saw them
(:func:`watermark.significance.binomial_p_value`; Adi et al., USENIX Security
2018). The verifier's threshold is the trigger-set scheme's default.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

import numpy as np
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from lifecycle import audit
from lifecycle.bom import read_bom
from lifecycle.bom.lineage import read_lineage
from lifecycle.errors import ConfigurationError, InputValidationError, NotFoundError, WatermarkError
from serving import logger
from serving.errors import ErrorBody
from serving.guards.auth import AdminKey
from serving.guards.body import GuardedRoute
from serving.models import ServedModel
from serving.state import ServingState, State
from watermark.evidence import read_secret_bytes

THRESHOLD = 1e-6
"""p-value below which the watermark is detected: the trigger-set scheme's default verifier threshold."""

router = APIRouter(route_class=GuardedRoute)


class NoBlackBoxWatermark(ConfigurationError):
    """The served version carries no watermark that querying can verify (none, or a weight-key): 409 conflict."""


class WatermarkVerifyRequest(BaseModel):
    """The owner's watermark secret file, for this one call."""

    model_config = ConfigDict(strict=True, extra="forbid")

    secret: str = Field(min_length=1, description="The secret file's bytes (safetensors, as fedguard wrote it), "
                                                   "base64-encoded. Used for this call only; never stored or logged.")


class WatermarkVerification(BaseModel):
    """What the served model did on the committed trigger set."""

    model: str
    version: int
    scheme: str
    commitment: str
    correct: int
    n: int
    trigger_accuracy: float
    p_value: float
    threshold: float
    verified: bool


@router.post(
    "/v1/admin/models/{name}/versions/{version}/watermark/verify",
    response_model=WatermarkVerification,
    tags=["admin"],
    responses={
        401: {"model": ErrorBody, "description": "No API key, or an unknown, revoked or expired one"},
        403: {"model": ErrorBody, "description": "The API key lacks the admin scope"},
        404: {"model": ErrorBody, "description": "That version of that model is not served here"},
        409: {"model": ErrorBody, "description": "The version carries no black-box watermark (none, or a "
                                                  "weight-key, verified from the weights)"},
        422: {"model": ErrorBody, "description": "The secret is malformed or is not the one the version's "
                                                  "signed ML-BOM commits to"},
    },
)
def verify_watermark(name: str, version: int, body: WatermarkVerifyRequest, state: State,
                     key: AdminKey) -> WatermarkVerification:
    """Run the owner's committed trigger set through the served model (admin scope; audited).

    The answer says whether the watermark is detected (``verified``); a
    model that does not carry it answers 200 with ``verified: false`` (the
    audit trail records both). The triggers skip the feature-range checks of
    the predict routes, on this route only.
    """
    model = _served(state, name, version)
    committed = _committed(state, model)
    try:
        raw = base64.b64decode(body.secret, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputValidationError("'secret' is not base64; send the secret file's bytes base64-encoded") from exc
    try:
        secret = read_secret_bytes(raw, "the uploaded secret")
    except WatermarkError as exc:
        raise InputValidationError(f"'secret' is not a fedguard watermark secret: {exc}") from exc
    if not hmac.compare_digest(secret.commitment, committed):
        raise InputValidationError(f"the secret's commitment is not the one signed in {model.name}:{model.version}'s "
                                   "ML-BOM; send that version's secret file")
    if secret.scheme != "trigger-set":
        raise NoBlackBoxWatermark(f"a {secret.scheme} watermark is verified from the weights, not by querying; "
                                 "run 'fedguard models verify' where the registry is")
    result = _decide(model, secret.inputs, secret.labels, secret.params, committed)
    _audit(state, key.key_id, result)
    logger.warning("key %s verified the watermark of %s:%d through the server: %d/%d, p=%.3g", key.key_id,
                   model.name, model.version, result.correct, result.n, result.p_value)
    return result


def _served(state: ServingState, name: str, version: int) -> ServedModel:
    """The loaded model ``name:version`` if this server serves it (stable, candidate or pinned)."""
    live = state.deployments.live.get(name)
    versions = [] if live is None else [live.stable, live.candidate, live.pinned]
    for served in versions:
        if served is not None and served.version == version:
            return served
    raise NotFoundError(f"watermark verification asked for {name[:128]!r}:{version}, which is not served here")


def _committed(state: ServingState, model: ServedModel) -> str:
    """The watermark commitment in the version's signed ML-BOM (the served artifact verified at load)."""
    record = state.registry.get_version(model.name, model.version)
    if record.artifact.digest != model.digest:
        raise NotFoundError(f"{model.name}:{model.version} in the registry is not the artifact served")
    mark: dict[str, Any] = read_lineage(read_bom(record.artifact.model_dir)).get("watermark") or {}
    if mark.get("scheme", "none") == "none" or not mark.get("commitment"):
        raise NoBlackBoxWatermark(f"{model.name}:{model.version} was published without a watermark; "
                                 "there is nothing to verify")
    return str(mark["commitment"])


def _decide(model: ServedModel, inputs: np.ndarray, labels: np.ndarray, params: Any,
            committed: str) -> WatermarkVerification:
    """Trigger accuracy of the served model and its binomial p-value; no range check, no quota, no monitor."""
    from watermark.significance import binomial_p_value  # scipy: loaded by the first verification only

    if inputs.shape[1] != model.num_features or not np.isfinite(inputs).all():
        raise InputValidationError(f"the secret's triggers have {inputs.shape[1]} features (or non-finite "
                                   f"values); {model.name} takes {model.num_features}")
    num_classes = int(params.get("num_classes", model.num_classes))
    predicted = model.logits(inputs.astype(np.float32)).argmax(axis=1)
    correct, n = int((predicted == labels).sum()), int(labels.shape[0])
    p_value = binomial_p_value(correct, n, 1.0 / num_classes)
    return WatermarkVerification(model=model.name, version=model.version, scheme="trigger-set", commitment=committed,
                                 correct=correct, n=n, trigger_accuracy=correct / n, p_value=p_value,
                                 threshold=THRESHOLD, verified=p_value < THRESHOLD)


def _audit(state: ServingState, key_id: str, result: WatermarkVerification) -> None:
    """One audit event: who verified which version, with which commitment, and the counts (never a trigger)."""
    details = result.model_dump(exclude={"model", "version"})
    with state.registry.transaction() as session:
        audit.record(session, "watermark.verified", actor=f"apikey:{key_id}",
                     subject=f"{result.model}:{result.version}", details=details)
