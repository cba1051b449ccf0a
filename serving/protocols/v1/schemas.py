"""The request and response bodies of the serving API (pydantic, shown in ``/docs``).

Requests are parsed strictly: a value must be a JSON number (``"1.5"``,
``true`` and ``null`` are refused rather than coerced) and unknown fields are
refused, so that a caller's mistake is reported instead of silently guessed at.
Shape rules that depend on the model (value count, batch limit, finiteness) are
checked against the signed feature schema in :mod:`serving.models`.

``subject_id`` is optional; when present it is checked by its pattern alone
(printable ASCII, :data:`lifecycle.governance.objections.SUBJECT_ID_PATTERN`),
so a request without it costs nothing more to validate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.governance.objections import MAX_SUBJECT_ID, SUBJECT_ID_PATTERN


class PredictRequest(BaseModel):
    """A batch of instances, each a list of feature values in the schema's order, and optionally its subject."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [[0.1, 1.2, -0.3, 4.0], [0.0, 0.5, 0.7, 1.1]]},
                                        {"instances": [[0.1, 1.2, -0.3, 4.0]], "subject_id": "MRN-0042"}]},
    )

    instances: list[list[float]] = Field(
        description=(
            "One list of finite numbers per instance, in the order of the model's features "
            "(see GET /v1/models). At least 1 and at most the server's max-instances."
        ),
    )
    subject_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SUBJECT_ID,
        pattern=SUBJECT_ID_PATTERN,
        description=(
            "Optional: the data subject the instances describe (1-128 printable ASCII characters, compared "
            "exactly). If the subject objected to automated processing by this model in the server's "
            "environment, the request is refused, unscored, with the operator's configured status (403 by "
            "default) and code 'objection'. The identifier is never stored or logged in the clear."
        ),
    )


class ScoredLabel(BaseModel):
    """A label and its rounded probability."""

    label: str | int
    score: float


class PredictResponse(BaseModel):
    """One label per instance, plus rounded scores where the model's output mode allows them.

    ``predictions`` holds the schema's label names, or class indices when it
    has none. The server's per-model output mode decides the rest: ``label``
    (the default) adds nothing; ``top-k`` adds ``top_k``; ``probabilities``
    adds ``classes`` and ``probabilities``. Scores are rounded to the
    configured number of decimals.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"predictions": ["yes", "no"], "model": "demo", "version": 1},
                {"predictions": ["yes"], "model": "demo", "version": 1,
                 "top_k": [[{"label": "yes", "score": 0.82}, {"label": "no", "score": 0.18}]]},
                {"predictions": ["yes"], "model": "demo", "version": 1,
                 "classes": ["no", "yes"], "probabilities": [[0.18, 0.82]]},
            ]
        }
    )

    predictions: list[str] | list[int]
    model: str
    version: int
    top_k: list[list[ScoredLabel]] | None = Field(
        default=None, description="Output mode 'top-k' only: per instance, the k likeliest labels, best first."
    )
    classes: list[str] | list[int] | None = Field(
        default=None, description="Output mode 'probabilities' only: the order of each probabilities row."
    )
    probabilities: list[list[float]] | None = Field(
        default=None, description="Output mode 'probabilities' only: per instance, one probability per class."
    )


class ModelInfo(BaseModel):
    """A served model and the input it expects."""

    name: str
    version: int
    num_features: int
    features: list[str]


class ModelList(BaseModel):
    """The models this server answers for (the newest version of each)."""

    models: list[ModelInfo]


class KeyRevoked(BaseModel):
    """Result of revoking an API key through the admin route."""

    key_id: str
    revoked: bool


class Health(BaseModel):
    """Liveness: the process is up and its models were verified at start."""

    status: Literal["ok"] = "ok"
