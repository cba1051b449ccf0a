"""The app factory: ``create_app(registry, settings)`` → a FastAPI app ready to serve.

Models are verified and loaded *inside the factory*, not in a startup hook, so
that a tampered artifact fails ``create_app`` itself: ``fedguard serve`` exits
with the :class:`~lifecycle.errors.SignatureError` (exit code 5) before a
socket is opened, and tests see the error without running a server.

Around the routes sit two guards: a body-size limit enforced while the body
streams in (so an oversized request is refused before it is buffered or
parsed), and the exception handlers of :mod:`serving.errors`. Outside both,
:class:`serving.metrics.MetricsMiddleware` counts, times and access-logs every
request into the app's own Prometheus registry (``GET /metrics``).

A predict request that names its data subject (``subject_id``) is first
screened against the subjects who objected to the model in this environment
(:mod:`serving.guards.objections`, ``state.objections``, loaded here).

Every answered predict request also feeds the model's drift monitor
(:mod:`serving.drift`, ``state.drift``) and the per-key extraction guard
(:mod:`serving.guards.extraction`, ``state.extraction``), both built here.

A model the router starts serving after startup (deployed in this
environment later, or blocked at startup and then replaced by a clean
version) gets the same per-model state through the router's
``on_new_model`` hook (:func:`_guard_new_models`), before it answers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lifecycle.errors import FedguardError, GovernanceError, StateError
from lifecycle.registry import Registry
from serving import logger
from serving.console.app import mount_console
from serving.console.sources import ConsoleSources
from serving.drift import DriftMonitors
from serving.drift.routes import router as drift_router
from serving.errors import error_response, install_error_handlers
from serving.guards.extraction import ExtractionGuard
from serving.guards.keycache import KeyCache
from serving.guards.killswitch import ModelKilled, killed_response
from serving.guards.objections import ObjectionGuard
from serving.guards.outputs import check_policies
from serving.guards.quotas import QuotaStore, create_quota_store
from serving.guards.ranges import RangeConfig, build_ranges
from serving.metrics import PREDICT_ROUTE, MetricsMiddleware, RequestRecorder, ServingMetrics
from serving.models import ServedModel
from serving.openapi import PredictLimits, ServingAPI
from serving.protocols.v1.fastpath import PredictFastPath
from serving.protocols.v1.routes import router
from serving.protocols.v1.watermark import NoBlackBoxWatermark
from serving.protocols.v1.watermark import router as watermark_router
from serving.protocols.v2.rest import ROUTES as V2_ROUTES
from serving.rollout.router import Router
from serving.rollout.routes import DeploymentConflict, conflict_response, deploy_router, governance_response
from serving.settings import ServingSettings, get_serving_settings
from serving.state import ServingState

DESCRIPTION = """\
Predictions from signed, registered fedguard models: labels by default, or
rounded top-k scores or probabilities where the operator configured them.

Every `/v1` route needs `Authorization: Bearer <key>` with a key from
`fedguard keys create`. Each key has a per-model rate limit and a daily budget
of instances: past either, predict answers 429 with `Retry-After` (seconds).
Errors have the shape `{"error": {"code": ..., "message": ...}}`.
"""


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``max_bytes`` with HTTP 413.

    A declared ``Content-Length`` over the limit is refused before any byte is
    read (in the Open Inference Protocol's error shape under ``/v2/``); a body
    without one (chunked) is counted as it arrives and refused as soon as it
    crosses the limit, so memory use stays bounded either way.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            logger.warning("refused a body of %r bytes (limit %d)", declared[:20], self.max_bytes)
            response = (JSONResponse({"error": self._message()}, status_code=413)  # the v2 protocol's shape
                        if scope["path"].startswith("/v2/") else error_response(413, "payload_too_large",
                                                                                self._message()))
            await response(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from a body read (any other
                    # error becomes a generic 400); serving.errors shapes the 413.
                    raise HTTPException(status_code=413, detail=self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"the request body exceeds {self.max_bytes} bytes; send fewer instances per request"


def _api_route(routes: APIRouter, path: str) -> APIRoute:
    found = [r for r in routes.routes if isinstance(r, APIRoute) and r.path == path]
    if len(found) != 1:
        raise StateError(f"the serving routes hold {len(found)} routes at {path}, not 1; this is a bug")
    return found[0]


def _version() -> str:
    try:
        return metadata.version("fedguard")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _served_ranges(registry: Registry, settings: ServingSettings, models: dict[str, ServedModel]) -> RangeConfig:
    """The configured feature ranges of the models served now.

    Those of a registered model not served yet (deployed in this environment
    later, or its version withdrawn) are compiled when the router first
    serves it (:func:`_guard_new_models`); a name that no registered model
    has is still refused by :func:`~serving.guards.ranges.build_ranges`.
    """
    config = settings.feature_ranges
    later = set(config) - set(models)
    if later:
        later &= {record.name for record in registry.latest_versions()}
    return {name: features for name, features in config.items() if name not in later}


def _guard_new_models(app: ServingAPI, state: ServingState) -> Callable[[ServedModel], None]:
    """The router's ``on_new_model`` hook: build for a model served since startup what startup builds for each.

    Runs in the router's refresh (thread pool), before the model answers its
    first request. An exception (an output policy or a feature range that
    does not fit the model) leaves it answering 503; the router logs it.
    """
    settings = state.settings

    def guard(model: ServedModel) -> None:
        check_policies(settings, {model.name: model})
        state.ranges.add(settings.feature_ranges, model)
        state.drift.add(model)
        state.extraction.add(model)
        try:  # its list, loaded now (else the first request naming a subject waits for it)
            state.objections.refresh(force=True)
        except FedguardError as exc:  # the guard fails closed: a subject is answered 503 until the list loads
            logger.error("could not load the objection list of %s: %s", model.name, exc)
        state.metrics.models_served.set(len(state.models))
        app.predict_limits = PredictLimits.of(state.models, settings.max_instances)
        app.openapi_schema = None  # rebuilt with the new limits at the next request for it

    return guard


def _with_grpc(
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]], app: FastAPI, state: ServingState
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """``lifespan`` with the Open Inference Protocol's gRPC server started after it and stopped before it.

    The server runs on the HTTP server's event loop (:mod:`serving.protocols.v2.grpc.server`), so it lives
    and dies with the worker; the port it bound is ``app.state.grpc_port``, also handed to
    ``app.state.announce_grpc(port)`` if the caller set one (``fedguard serve`` prints it).
    """

    @asynccontextmanager
    async def with_grpc(asgi_app: Any) -> AsyncIterator[Any]:
        from serving.protocols.v2.grpc.server import GRACE_SECONDS, start  # grpc loads only when it serves

        async with lifespan(asgi_app) as inner:
            server, port = await start(state)
            app.state.grpc_port = port
            announce = getattr(app.state, "announce_grpc", None)  # fedguard serve prints where it listens
            if callable(announce):
                announce(port)
            try:
                yield inner
            finally:
                await server.stop(GRACE_SECONDS)

    return with_grpc


def create_app(
    registry: Registry,
    settings: ServingSettings | None = None,
    *,
    quota_store: QuotaStore | None = None,
    clock: Callable[[], float] = time.time,
    console_sources: ConsoleSources | None = None,
) -> FastAPI:
    """Build the serving app for every model in ``registry``, as its deployment state says.

    Each model is served at its deployed stable version (its newest one if it
    was never deployed, recorded then as stable), with its canary, shadow or
    pinned version when set (:class:`serving.rollout.router.Router`).

    Parameters
    ----------
    registry
        The registry to serve from; API keys are checked against it per request.
    settings
        Limits and the trusted public key; defaults to the environment's
        (``FEDGUARD_SERVE_*``).
    quota_store
        Where quotas are counted; defaults to the one the settings configure
        (:func:`serving.guards.quotas.create_quota_store`). Replicas that share one
        Redis store enforce one limit between them.
    clock
        Seconds since the epoch, read once per request for the quotas, and by
        the router for its refresh interval and error window (tests pass a
        fake one so that nothing sleeps).
    console_sources
        What the operator console (``/console``, :mod:`serving.console`) reads
        beyond the registry: runs, the privacy ledger, enrolled sites, retrain
        launches (``fedguard serve`` passes them; see :mod:`fedguard.console`).
        The console is mounted unless ``settings.console`` is off.

    Raises
    ------
    SignatureError
        A model's signature does not verify; the message names the model
        version and the file that differs. Nothing is served.
    StateError
        An artifact or the trusted public key is missing, a BOM is incoherent,
        or the configured Redis quota store cannot be reached.
    ConfigurationError
        A configured file (public key, TLS certificate) does not exist, an
        output policy asks for more top-k labels than its model has classes,
        or a configured feature range names a model or feature not served.
    """
    settings = settings or get_serving_settings()
    settings.check_files()
    metrics = ServingMetrics()
    deployments = Router.open(registry, settings, metrics=metrics.registry, monotonic=clock)
    models = deployments.models
    check_policies(settings, models)
    ranges = build_ranges(_served_ranges(registry, settings, models), models)
    quotas = quota_store if quota_store is not None else create_quota_store(settings)
    app = ServingAPI(
        title="fedguard serving",
        description=DESCRIPTION,
        version=_version(),
        docs_url="/docs",
        redoc_url=None,
    )
    app.predict_limits = PredictLimits.of(models, settings.max_instances)
    metrics.models_served.set(len(models))
    drift = DriftMonitors(settings, metrics.registry)
    for model in models.values():
        drift.add(model)
    extraction = ExtractionGuard(settings, quotas, registry, metrics.registry, models)
    objections = ObjectionGuard(registry, settings.environment, deployments.names,  # follows the router's models
                                refresh_seconds=settings.deploy_refresh_seconds,
                                refusals=metrics.objection_refusals, monotonic=clock)
    objections.refresh(force=True)  # subjects' objections (serving.guards.objections), loaded before serving
    if settings.kill_on_drift:  # the automatic cut-out on drift: every replica stops serving the model
        drift.on_drift_alert.append(lambda name, report: deployments.trip(name, report.summary(), "drift"))
    app.state.fedguard = ServingState(
        registry=registry, settings=settings, models=models, quotas=quotas, clock=clock, metrics=metrics,
        drift=drift, extraction=extraction, deployments=deployments, objections=objections,
        ranges=ranges, key_cache=KeyCache(settings.auth_cache_seconds),
    )
    deployments.on_new_model = _guard_new_models(app, app.state.fedguard)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.add_exception_handler(ModelKilled, killed_response)
    app.add_exception_handler(DeploymentConflict, conflict_response)
    app.add_exception_handler(NoBlackBoxWatermark, conflict_response)
    app.add_exception_handler(GovernanceError, governance_response)
    # The routes go straight into the app's router: FastAPI 0.138 matches an included
    # router through an extra layer that costs ~0.1 ms per request (benchmarks/serving.py).
    for routes in (router, drift_router, deploy_router, watermark_router):
        app.router.routes.extend(routes.routes)
    if settings.grpc_port is not None:  # and its gRPC service, in this process's lifespan
        from serving.protocols.v2.grpc.server import check_transport

        check_transport(settings)
        app.router.lifespan_context = _with_grpc(app.router.lifespan_context, app, app.state.fedguard)
    # First, so that it is matched first: the predict fast path (serving.protocols.v1.fastpath), which
    # hands anything but the common case to the FastAPI route behind it.
    fast = PredictFastPath(_api_route(router, PREDICT_ROUTE))
    app.router.routes.insert(0, Route(PREDICT_ROUTE, fast, methods=["POST"], include_in_schema=False))
    # Then the Open Inference Protocol v2 (serving.protocols.v2.rest): matched before the ~20 other routes,
    # each of which costs a regex match per request.
    app.router.routes[1:1] = V2_ROUTES
    if settings.console:
        mount_console(app, registry, settings, console_sources or ConsoleSources(), clock=clock)
    # Added last, so outermost: it also sees what the body limit refuses. The fast path, which answers the
    # common predict request in front of the middleware, counts into the same recorder.
    recorder = RequestRecorder(metrics, models.keys())
    app.add_middleware(
        MetricsMiddleware, metrics=metrics, routes=[*router.routes, *app.router.routes], models=models.keys(),
        recorder=recorder,
    )
    fast.attach(app.through_middleware, recorder, settings.max_body_bytes)
    app.fast_path = fast
    logger.info("serving app ready with %d model(s): %s", len(models), ", ".join(sorted(models)) or "none")
    return app
