"""The Open Inference Protocol's operations, once, for its REST routes and its gRPC service.

Each operation takes the app's :class:`~serving.state.ServingState` and the
caller's authenticated key, and goes through the guards the v1 routes use:
:func:`serving.guards.auth.authorize` for the key and its ``predict`` scope,
the rollout router for the answering version (kill switch, canary, shadow),
and :func:`serving.protocols.v1.routes.guarded_predict` for everything after
(objections, schema and feature ranges, quotas, output hardening, drift and
extraction monitors). So an answer equals the v1 route's for the same rows,
and a refusal has the same cause.

A versioned path (``/v2/models/{name}/versions/{v}``, gRPC ``model_version``)
answers only when ``v`` is the version the router picks for this key: naming
a version never steps around a rollout, and a canary key sees its canary.
Health needs no key and reveals nothing; metadata, readiness of a model and
inference need a ``predict`` key, as ``GET /v1/models`` does.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from fastapi.concurrency import run_in_threadpool

from lifecycle.errors import StateError
from serving.errors import UnknownModelError
from serving.guards.auth import authorize
from serving.guards.keys import KeyInfo
from serving.models import ServedModel
from serving.protocols.v1.routes import guarded_predict
from serving.protocols.v2.errors import V2InputError
from serving.protocols.v2.tensors import (
    InferRequest,
    OutputTensor,
    TensorSpec,
    answer_tensors,
    check_requested,
    input_spec,
    output_specs,
)
from serving.state import ServingState

SERVER_NAME = "fedguard"
PLATFORM = "onnxruntime"
EXTENSIONS = ("binary_tensor_data",)
"""Protocol extensions served: Triton's binary tensor data on REST (what ``tritonclient.http`` sends by default)."""


@dataclass(frozen=True)
class ModelMetadata:
    """A model's v2 metadata: the version answering this key, the input it takes, the outputs it gives."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": list(self.versions), "platform": self.platform,
                "inputs": [spec.to_json() for spec in self.inputs],
                "outputs": [spec.to_json() for spec in self.outputs]}


@dataclass(frozen=True)
class InferAnswer:
    """A v2 inference answer: who answered, and the output tensors."""

    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    request_id: str = ""


def server_version() -> str:
    """The version of fedguard (server metadata)."""
    try:
        return metadata.version("fedguard")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def server_ready(state: ServingState) -> bool:
    """Whether at least one model can answer now (not withdrawn, not failed to load)."""
    return bool(state.deployments.listed())


async def authenticate(asgi_scope: MutableMapping[str, Any], state: ServingState, presented: str | None) -> KeyInfo:
    """The caller's key, checked for the ``predict`` scope (401 or 403 otherwise), as the v1 routes check it."""
    return await authorize(asgi_scope, state, presented, "predict")


def parse_version(version: str | None) -> int | None:
    """The version a path or a gRPC request names (``None``/empty: the one routed to the caller).

    Raises
    ------
    V2InputError
        The version is not a positive integer.
    """
    if not version:
        return None
    if not version.isdigit() or len(version) > 9 or int(version) < 1:
        raise V2InputError(f"model version {version[:16]!r} is not a positive integer")
    return int(version)


async def routed_model(state: ServingState, key: KeyInfo, name: str, version: int | None) -> ServedModel:
    """The version that answers ``key`` for model ``name`` now (a due deployment refresh runs first).

    Raises
    ------
    UnknownModelError
        No model ``name`` is served, or ``version`` is not the one routed to this key (404).
    ModelKilled
        The model is switched off (503).
    """
    route = await run_in_threadpool(state.deployments.route, name, key.key_id)
    if version is not None and version != route.model.version:
        raise UnknownModelError(f"key {key.key_id} asked for {name[:128]!r} version {version}, "
                                f"but version {route.model.version} answers it")
    return route.model


async def model_metadata(state: ServingState, key: KeyInfo, name: str, version: int | None) -> ModelMetadata:
    """The metadata of model ``name`` as it answers ``key`` (see :func:`routed_model` for the errors)."""
    model = await routed_model(state, key, name, version)
    policy = state.settings.output_policy(model.name)
    return ModelMetadata(model.name, (str(model.version),), PLATFORM, (input_spec(model),),
                         tuple(output_specs(model, policy)))


async def model_ready(state: ServingState, key: KeyInfo, name: str, version: int | None) -> bool:
    """Whether model ``name`` answers ``key`` now; a killed model is not ready (an unknown one is a 404)."""
    try:
        await routed_model(state, key, name, version)
    except StateError:  # ModelKilled, ModelWithdrawn
        return False
    return True


async def infer(state: ServingState, key: KeyInfo, name: str, version: int | None,
                request: InferRequest) -> InferAnswer:
    """Score ``request`` through every v1 guard and answer with the v2 output tensors.

    The requested outputs are checked against the model's output policy
    before anything is scored or counted against the key's quota.
    """
    if request.outputs:
        live = state.deployments.live.get(name)
        if live is not None and live.stable is not None:
            check_requested(live.stable, state.settings.output_policy(name), request.outputs)
    def finish(model: ServedModel, fields: dict[str, Any]) -> InferAnswer:
        return InferAnswer(model.name, str(model.version), answer_tensors(model, fields, request.outputs),
                           request.request_id)

    instances: list[list[float]] = request.instances.tolist()  # ServedModel.to_batch checks the rows
    return await guarded_predict(name, instances, request.subject_id, state, key, finish, version=version)
