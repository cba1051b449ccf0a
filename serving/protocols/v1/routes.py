"""The HTTP routes: health, model listing, prediction, and the admin key route.

Most handlers are plain ``def`` functions: FastAPI runs them in its thread
pool, so a registry query never blocks the event loop. Predict is ``async``:
a request-sized batch (up to :data:`INLINE_INSTANCES` instances) is answered
on the event loop, because two thread-pool hops (the handler, then FastAPI's
validation of a sync handler's return value) cost more server CPU than the
guarded forward pass itself (``benchmarks/serving.py``); a larger batch, and
the router's periodic registry refresh, still go to the thread pool.
Errors are raised as fedguard errors and translated in :mod:`serving.errors`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from lifecycle.errors import NotFoundError
from serving import logger
from serving.errors import ErrorBody, SubjectObjected, UnknownModelError
from serving.guards.auth import AdminKey, PredictKey
from serving.guards.body import GuardedRoute
from serving.guards.keys import KeyInfo, is_key_id, revoke_key
from serving.guards.quotas import QuotaExceeded
from serving.metrics import CONTENT_TYPE
from serving.models import ServedModel
from serving.protocols.v1.schemas import (
    Health,
    KeyRevoked,
    ModelInfo,
    ModelList,
    PredictRequest,
    PredictResponse,
)
from serving.state import ServingState, State

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "No API key, or an unknown, revoked or expired one"},
    403: {"model": ErrorBody, "description": "The API key lacks the needed scope"},
}
_OBJECTION = {"model": ErrorBody, "description": "The API key lacks the needed scope; or (code 'objection', status "
              "configurable) the request's subject_id objected to automated processing by this model"}

# Batches up to this many instances are answered on the event loop (~0.1-0.2 ms for
# the models fedguard trains); larger ones in the thread pool, so that one big batch
# cannot hold up every other connection.
INLINE_INSTANCES = 64
JSON = "application/json"
Answer = TypeVar("Answer")

router = APIRouter(route_class=GuardedRoute)


@router.get("/healthz", response_model=Health, tags=["health"])
def healthz() -> Health:
    """Liveness. Needs no key and reveals nothing: the server only starts once every model verified."""
    return Health()


@router.get("/metrics", tags=["health"], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
def metrics(state: State) -> Response:
    """Prometheus metrics of this server.

    Needs no key: counts by route, model and status only, never key ids or request values.
    """
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/v1/models", response_model=ModelList, tags=["models"], responses=_ERRORS)
def list_models(state: State, key: PredictKey) -> ModelList:
    """The models served (the stable version of each) and the features they expect.

    A model whose version was withdrawn (tainted by a consent withdrawal) is
    not listed: it answers only 503.
    """
    state.deployments.refresh()  # a thread-pool handler: the due registry query may run here
    return ModelList(
        models=[
            ModelInfo(name=m.name, version=m.version, num_features=m.num_features, features=list(m.schema.features))
            for m in state.deployments.listed()
        ]
    )


@router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    tags=["models"],
    responses={
        **_ERRORS,
        403: _OBJECTION,
        404: {"model": ErrorBody, "description": "No model of that name is served"},
        503: {"model": ErrorBody, "description": "The model is switched off (kill switch) or unavailable"},
        413: {"model": ErrorBody, "description": "The body exceeds the server's limit"},
        422: {"model": ErrorBody, "description": "An instance does not match the model's feature schema"},
        429: {
            "model": ErrorBody,
            "description": "The key is over its rate limit or daily instance budget for this model",
            "headers": {
                "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}},
            },
        },
    },
)
async def predict(name: str, body: PredictRequest, state: State, key: PredictKey) -> Response:
    """Labels for a batch of instances; scores only where the operator configured them.

    By default only labels leave the server. A model configured with output
    mode ``top-k`` or ``probabilities`` also returns softmax scores rounded to
    its configured precision (see ``PredictResponse``).

    Each instance must hold exactly one finite number per feature, in the
    order that ``GET /v1/models`` lists, inside the ranges the operator
    configured for the model (if any). A valid request takes one token of the
    key's rate limit and one unit of its daily budget per instance; past
    either, the answer is 429 with ``Retry-After``.

    A request may name its data subject (``subject_id``). A subject who
    objected to automated processing by this model is refused before the
    model sees the instances: the operator's configured status (403 by
    default), code ``objection``.
    """
    return await answer_predict(name, body, state, key)


async def answer_predict(name: str, body: PredictRequest, state: ServingState, key: KeyInfo) -> Response:
    """Every guard after authentication, and the encoded answer (shared with :mod:`serving.protocols.v1.fastpath`)."""
    # Encoded by encode_answer, not by FastAPI: its validation of the returned value repeats
    # what the route built itself (the declared response_model still documents the shape).
    content = await guarded_predict(name, body.instances, body.subject_id, state, key, encode_answer)
    return Response(content, media_type=JSON)


async def guarded_predict(
    name: str, instances: Sequence[Sequence[float]], subject_id: str | None, state: ServingState, key: KeyInfo,
    finish: Callable[[ServedModel, dict[str, Any]], Answer], *, version: int | None = None,
) -> Answer:
    """Every guard after authentication, for any protocol: ``finish(model, fields)`` of the hardened answer.

    In order: the due deployment refresh (in the background), the subject's
    objection, routing (kill switch, canary, shadow), the feature schema and
    ranges, the quotas, the forward pass with output hardening
    (:func:`serving.guards.outputs.shape_output`), then the drift and
    extraction monitors. ``fields`` are those of :class:`PredictResponse`
    (``predictions`` and the output mode's extras) and ``model`` the version
    that answered; ``finish`` encodes them (the v1 routes as JSON,
    :mod:`serving.protocols.v2` as Open Inference Protocol tensors), in the
    thread pool with the rest for a batch over :data:`INLINE_INSTANCES`.
    ``version``, when given, must be the version the router picks for this
    key (else :class:`~serving.errors.UnknownModelError`, 404), so naming a
    version never bypasses a rollout.
    """
    if state.deployments.claim_refresh():  # a registry query: never on the event loop, and nobody waits for it
        state.in_background(run_in_threadpool(state.deployments.refresh), "the deployment refresh")
    if subject_id is not None:  # the right to object: decided before anything reads the instances
        await _screen_subject(name, subject_id, state, key)
    if len(instances) > INLINE_INSTANCES:
        return await run_in_threadpool(_predict, name, instances, state, key, finish, version)
    return _predict(name, instances, state, key, finish, version)


def encode_answer(model: ServedModel, fields: dict[str, Any]) -> bytes:
    """The JSON body of a predict answer: what ``PredictResponse(...).model_dump_json(exclude_none=True)`` gives.

    Labels only (the default output mode) are joined from pieces encoded once
    per model version (``{"predictions":[``, each label, and the
    ``,"model":…,"version":…}`` tail: :func:`_pieces`), byte for byte what
    :func:`json.dumps` writes and without its per-call encoder (~10 µs of a
    one-instance request, ``benchmarks/serving.py``); scored modes go through
    :class:`PredictResponse`, which also decides how a non-finite score is
    written.
    """
    if fields.keys() == {"predictions"}:
        tail, labels = _pieces(model)
        parts = []
        for label in fields["predictions"]:
            encoded = labels.get(label)
            if encoded is None:
                encoded = _dumps(label)
                if len(labels) < _MAX_LABELS:  # the class names: a few per model
                    labels[label] = encoded
            parts.append(encoded)
        return b'{"predictions":[' + b",".join(parts) + b"]" + tail
    response = PredictResponse(model=model.name, version=model.version, **fields)
    return response.model_dump_json(exclude_none=True).encode()


_MAX_LABELS = 4096
_MAX_MODELS = 256
_PIECES: dict[tuple[str, int, str], tuple[bytes, dict[str | int, bytes]]] = {}


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _pieces(model: ServedModel) -> tuple[bytes, dict[str | int, bytes]]:
    """The answer's tail after the predictions and the labels encoded so far, for ``model``'s version."""
    key = (model.name, model.version, model.digest)
    pieces = _PIECES.get(key)
    if pieces is None:
        if len(_PIECES) >= _MAX_MODELS:  # versions come and go over a server's life: bounded, rebuilt when needed
            _PIECES.clear()
        pieces = _PIECES[key] = (b"," + _dumps({"model": model.name, "version": model.version})[1:], {})
    return pieces


async def _screen_subject(name: str, subject_id: str, state: ServingState, key: KeyInfo) -> None:
    """Raise :class:`~serving.errors.SubjectObjected` if ``subject_id`` objected to model ``name`` here.

    The lists are re-read first if older than the refresh interval, or if
    the model's list is not loaded yet (a model served only since startup),
    in the thread pool: this request waits, so no subject is scored on a
    stale or missing list; one still missing is a 503. A refusal takes one
    token and one unit of the key's quota, as a request does (each costs an
    audit write), then is counted and audited.
    """
    guard = state.objections
    if name not in state.deployments.live:  # as routing would: no list to load for a model not served here
        raise UnknownModelError(f"key {key.key_id} asked for unserved model {name[:128]!r}")
    if guard.stale() or not guard.holds(name):
        await run_in_threadpool(guard.refresh, False, name)
    digest = guard.listed(name, subject_id)
    if digest is not None:
        await run_in_threadpool(_refuse, name, digest, state, key)


def _refuse(name: str, digest: str, state: ServingState, key: KeyInfo) -> None:
    decision = state.quotas.consume(key.key_id, name, 1, state.clock())
    if not decision.allowed:
        state.metrics.quota_refusals.labels(name).inc()
        raise QuotaExceeded(f"key {key.key_id} refused on {name} (objection refusal), retry in "
                            f"{decision.retry_after:.3f}s", retry_after=decision.retry_after)
    state.objections.record_refusal(name, digest, key.key_id)
    raise SubjectObjected(f"key {key.key_id}: subject {digest[:16]}… objected to {name} in environment "
                          f"{state.objections.environment}; refused unscored")


def _predict(name: str, instances: Sequence[Sequence[float]], state: ServingState, key: KeyInfo,
             finish: Callable[[ServedModel, dict[str, Any]], Answer], version: int | None) -> Answer:
    route = state.deployments.route(name, key.key_id, refresh=False)  # guarded_predict refreshed it
    model = route.model
    if version is not None and version != model.version:
        raise UnknownModelError(f"key {key.key_id} asked for {name[:128]!r} version {version}, "
                                f"but version {model.version} answers it")
    batch = model.to_batch(instances, state.settings.max_instances)
    state.ranges.check(model.name, batch)
    decision = state.quotas.consume(key.key_id, model.name, len(instances), state.clock())
    if not decision.allowed:
        state.metrics.quota_refusals.labels(model.name).inc()
        raise QuotaExceeded(
            f"key {key.key_id} refused on {model.name}: {len(instances)} instance(s), "
            f"{decision.remaining} left today, retry in {decision.retry_after:.3f}s",
            retry_after=decision.retry_after,
        )
    policy = state.settings.output_policy(model.name)
    fields, logits = route.answer(batch, policy)
    state.drift.observe(model, batch, logits)
    state.extraction.observe(key.key_id, model, batch, state.clock(), logits)
    logger.debug("key %s: %d predictions (%s) from %s:%d", key.key_id, len(fields["predictions"]),
                 policy.output_mode, model.name, model.version)
    return finish(model, fields)


@router.post(
    "/v1/admin/keys/{key_id}/revoke",
    response_model=KeyRevoked,
    tags=["admin"],
    responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No key has this id"}},
)
def revoke(key_id: str, state: State, key: AdminKey) -> KeyRevoked:
    """Revoke an API key at once (admin scope); audited with the revoking key's id as actor.

    Takes the key id only (16 hex digits), never a whole key: a URL ends up in
    access logs.
    """
    if not is_key_id(key_id):
        raise NotFoundError(f"key {key.key_id} tried to revoke a malformed key id")
    info = revoke_key(state.registry, key_id, actor=f"apikey:{key.key_id}")
    state.key_cache.forget(info.key_id)
    logger.warning("key %s revoked key %s", key.key_id, info.key_id)
    return KeyRevoked(key_id=info.key_id, revoked=info.revoked)
