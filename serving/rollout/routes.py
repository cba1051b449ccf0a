"""Admin routes for rollouts and the kill switch (admin scope; each action audited).

They mirror ``fedguard deploy ...`` one for one and write through the same
:class:`~lifecycle.registry.DeploymentStore` (of the environment the server
serves, ``fedguard serve --env``), so governance holds here too (409 for a
tainted version, or one failing its production gates) and the registry's history names
the admin key (``apikey:<key_id>``) as actor. A version a deployment points at
(candidate or pin) must verify against the trusted key before it is recorded.
After each change this replica refreshes at once; the others follow within
``deploy_refresh_seconds``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from lifecycle.errors import SignatureError
from lifecycle.registry import DeploymentState
from lifecycle.registry.deployments import MAX_VERSION, DeploymentConflict, verify_version
from serving import logger
from serving.errors import ErrorBody, error_response
from serving.guards.auth import AdminKey
from serving.guards.body import GuardedRoute
from serving.state import ServingState, State

deploy_router = APIRouter(prefix="/v1/admin/models/{name}", tags=["deployments"], route_class=GuardedRoute)
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown, revoked or expired one"},
    403: {"model": ErrorBody, "description": "The API key lacks the admin scope"},
    404: {"model": ErrorBody, "description": "No such model or version"},
    409: {"model": ErrorBody, "description": "The action does not fit the current deployment, or governance "
          "refuses the version (tainted, or failing its production gates): the message says why"},
}


class DeploymentStatus(BaseModel):
    """The state of a model's deployment, as ``fedguard deploy status --json`` prints it."""

    model: str
    environment: str = Field(default="default", description="The environment this deployment serves")
    revision: int = Field(description="Grows by one with each change; 0: never deployed explicitly")
    stable_version: int
    previous_version: int | None
    candidate_version: int | None
    candidate_mode: str | None = Field(description="'canary', 'shadow' or null")
    canary_weight: float = Field(description="Percent of API keys (sticky) answered by the canary")
    rollout_id: int
    killed: bool
    kill_mode: str | None = Field(description="'503' or 'pinned' while killed")
    pinned_version: int | None
    kill_reason: str
    updated_at: str | None
    shares: dict[str, float] = Field(description="Percent of live answers by version; empty while killed (503)")


class HistoryEntry(BaseModel):
    """One deployment action and the state it left (``shares`` from then until the next entry)."""

    id: int
    model: str
    environment: str = "default"
    revision: int
    action: str
    actor: str
    source: str = Field(description="'operator', 'serve', 'error-rate', 'drift', ...")
    reason: str
    stable_version: int
    candidate_version: int | None
    candidate_mode: str | None
    canary_weight: float
    killed: bool
    kill_mode: str | None
    pinned_version: int | None
    shares: dict[str, float]
    created_at: str


class Deployments(BaseModel):
    """A model's current deployment and its whole history, oldest first."""

    state: DeploymentStatus
    history: list[HistoryEntry]


class CanaryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2, "weight": 10}]})

    version: int = Field(ge=1, le=MAX_VERSION)
    weight: float = Field(gt=0, le=100, description="Percent of API keys sent to the candidate")


class VersionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2}]})

    version: int = Field(ge=1, le=MAX_VERSION)


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                                description="Switch straight to this version (blue/green); "
                                "default: the current candidate")


class KillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"pin": 1, "reason": "bad answers"}]})

    pin: int | None = Field(default=None, ge=1, le=MAX_VERSION,
                            description="Serve only this signed version instead of 503")
    reason: str = Field(default="", max_length=256)


async def conflict_response(request: Request, exc: Exception) -> JSONResponse:
    """409 with the store's message: admin callers are operators, and it names only models and versions."""
    logger.info("deployment conflict %s %s: %s", request.method, request.url.path, exc)
    return error_response(409, "conflict", str(exc))


async def governance_response(request: Request, exc: Exception) -> JSONResponse:
    """409 naming why governance refuses the version (criteria names, withdrawal ids: nothing secret)."""
    logger.warning("refused by governance %s %s: %s", request.method, request.url.path, exc)
    return error_response(409, "conflict", str(exc))


def _done(state: ServingState, result: DeploymentState, action: str, actor: str) -> DeploymentStatus:
    state.deployments.refresh(force=True)
    logger.warning("%s: deployment %s of %s (revision %d)", actor, action, result.model, result.revision)
    return DeploymentStatus(**result.to_dict())


def _verified(state: ServingState, name: str, version: int) -> None:
    try:
        verify_version(state.registry, name, version, state.deployments.public_key)
    except SignatureError as exc:
        logger.error("refused to deploy %s:%d: %s", name, version, exc)
        raise DeploymentConflict(
            f"{name}:{version} does not verify against the trusted key and cannot be deployed; see the server log"
        ) from exc


def _actor(key: Any) -> str:
    return f"apikey:{key.key_id}"


@deploy_router.get("/deployments", response_model=Deployments, responses=_ERRORS)
def deployments(name: str, state: State, key: AdminKey) -> Deployments:
    """The model's deployment (stable, candidate, kill switch, shares) and its history: who did what, when."""
    store = state.deployments.store
    current = store.state(name)
    return Deployments(state=DeploymentStatus(**current.to_dict()),
                       history=[HistoryEntry(**e.to_dict()) for e in store.history(name)])


@deploy_router.post("/canary", response_model=DeploymentStatus, responses=_ERRORS)
def canary(name: str, body: CanaryRequest, state: State, key: AdminKey) -> DeploymentStatus:
    """Send a sticky ``weight`` percent of API keys to ``version`` (it must verify)."""
    _verified(state, name, body.version)
    result = state.deployments.store.canary(name, body.version, body.weight, actor=_actor(key))
    return _done(state, result, "canary", _actor(key))


@deploy_router.post("/shadow", response_model=DeploymentStatus, responses=_ERRORS)
def shadow(name: str, body: VersionRequest, state: State, key: AdminKey) -> DeploymentStatus:
    """Mirror live traffic to ``version``: compared and counted, never returned."""
    _verified(state, name, body.version)
    result = state.deployments.store.shadow(name, body.version, actor=_actor(key))
    return _done(state, result, "shadow", _actor(key))


@deploy_router.post("/promote", response_model=DeploymentStatus, responses=_ERRORS)
def promote(name: str, state: State, key: AdminKey, body: PromoteRequest | None = None) -> DeploymentStatus:
    """Blue/green: the candidate (or ``version``) becomes stable in one step; the old stable is kept for rollback."""
    version = body.version if body is not None else None
    if version is not None:
        _verified(state, name, version)
    result = state.deployments.store.promote(name, version, actor=_actor(key))
    return _done(state, result, "promote", _actor(key))


@deploy_router.post("/rollback", response_model=DeploymentStatus, responses=_ERRORS)
def rollback(name: str, state: State, key: AdminKey) -> DeploymentStatus:
    """Make the previous stable version stable again, dropping any candidate."""
    return _done(state, state.deployments.store.rollback(name, actor=_actor(key)), "rollback", _actor(key))


@deploy_router.post("/abort", response_model=DeploymentStatus, responses=_ERRORS)
def abort(name: str, state: State, key: AdminKey) -> DeploymentStatus:
    """Drop the canary or shadow; stable keeps all traffic."""
    return _done(state, state.deployments.store.abort(name, actor=_actor(key)), "abort", _actor(key))


@deploy_router.post("/kill", response_model=DeploymentStatus, responses=_ERRORS)
def kill(name: str, state: State, key: AdminKey, body: KillRequest | None = None) -> DeploymentStatus:
    """Kill switch: every replica answers 503 within a second, or serves only the pinned signed version."""
    body = body or KillRequest()
    if body.pin is not None:
        _verified(state, name, body.pin)
    result = state.deployments.store.kill(name, pin=body.pin, actor=_actor(key), reason=body.reason)
    return _done(state, result, "kill", _actor(key))


@deploy_router.post("/revive", response_model=DeploymentStatus, responses=_ERRORS)
def revive(name: str, state: State, key: AdminKey) -> DeploymentStatus:
    """Release the kill switch: stable (and any candidate) serve again."""
    return _done(state, state.deployments.store.revive(name, actor=_actor(key)), "revive", _actor(key))


__all__ = ["DeploymentConflict", "conflict_response", "deploy_router", "governance_response"]
