"""``GET /v1/models/{name}/drift``: a model's drift scores and alert state (admin scope).

Admin only: the scores say how the traffic of every caller differs from the
training data, which is more than any one caller should learn.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from serving.errors import ErrorBody, UnknownModelError
from serving.guards.auth import AdminKey
from serving.guards.body import GuardedRoute
from serving.state import State

router = APIRouter(route_class=GuardedRoute)


class FeatureScore(BaseModel):
    """PSI and binned KS distance of one feature (or ``<prediction>``) in the live window."""

    name: str
    psi: float
    ks: float
    alert: bool


class DriftStatus(BaseModel):
    """A model's drift monitor and its state.

    ``no-reference`` (its BOM has no training histograms), ``warming-up``
    (fewer than ``min_instances`` in the window), ``ok`` or ``alert``.
    """

    model: str
    version: int
    status: Literal["no-reference", "warming-up", "ok", "alert"]
    alert: bool
    window: int
    min_instances: int
    thresholds: dict[str, float]
    drifted: list[str]
    alerts: int
    features: list[FeatureScore]
    prediction: FeatureScore | None


@router.get(
    "/v1/models/{name}/drift",
    response_model=DriftStatus,
    tags=["admin"],
    responses={
        401: {"model": ErrorBody, "description": "No API key, or an unknown, revoked or expired one"},
        403: {"model": ErrorBody, "description": "The API key lacks the admin scope"},
        404: {"model": ErrorBody, "description": "No model of that name is served"},
    },
)
def drift(name: str, state: State, key: AdminKey) -> DriftStatus:
    """Drift of the live traffic from the training data, per feature and on the predicted classes.

    Scores are PSI and the Kolmogorov–Smirnov distance over the bins of the
    reference histograms signed into the model's ML-BOM, for about the last
    ``drift_window`` answered instances. ``alert`` is true while any score is
    over its threshold; ``alerts`` counts how often it turned on.
    """
    model = state.models.get(name)
    if model is None:
        raise UnknownModelError(f"key {key.key_id} asked for the drift of unserved model {name[:128]!r}")
    return DriftStatus.model_validate(state.drift.report(model).to_dict())
