"""Prometheus metrics and the access log of the serving tier.

Each app owns a :class:`prometheus_client.CollectorRegistry` (never the
process-global one), so several apps in one process, or one per test, keep
separate counts. ``GET /metrics`` exposes it without a key, so it holds
nothing secret: labels are the route template, the served model's name (only
names the server actually serves, so a prober cannot mint label values) and
the status code; never a key id, a key, or a request value.

:class:`MetricsMiddleware` times every request, counts it, and writes one line
to the ``fedguard.serving.access`` logger: method, path *template*, status,
duration in milliseconds, and the id of the authenticated key (``-`` when
none). The key id reaches it through a per-request dict that the
authentication dependency fills (:func:`note_key_id`); bodies and the key
itself are never logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.worker import AccessFormatter, BatchedLineWriter

access_logger = logging.getLogger("fedguard.serving.access")
ACCESS_KEY = "fedguard.access"
PREDICT_ROUTE = "/v1/models/{name}/predict"
PREDICT_ROUTES = frozenset({PREDICT_ROUTE, "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"})
"""Route templates timed as predict requests: v1 predict and the Open Inference Protocol's infer."""
UNMATCHED = "<unmatched>"
CONTENT_TYPE = CONTENT_TYPE_LATEST
_MEMO_SIZE = 4096
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServingMetrics:
    """The metrics of one app, registered in a registry of its own."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    requests: Counter = field(init=False)
    predict_latency: Histogram = field(init=False)
    quota_refusals: Counter = field(init=False)
    objection_refusals: Counter = field(init=False)
    models_served: Gauge = field(init=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "requests", Counter(
            "fedguard_requests", "HTTP requests answered, by route template, served model and status code",
            ("route", "model", "status"), registry=self.registry))
        put(self, "predict_latency", Histogram(
            "fedguard_predict_duration_seconds", "Time to answer a predict request, by served model",
            ("model",), buckets=_BUCKETS, registry=self.registry))
        put(self, "quota_refusals", Counter(
            "fedguard_quota_refusals", "Predict requests refused by the rate limit or daily budget, by model",
            ("model",), registry=self.registry))
        put(self, "objection_refusals", Counter(
            "fedguard_objection_refusals", "Predict requests refused unscored because their subject objected to "
            "the model (serving.guards.objections), by model", ("model",), registry=self.registry))
        put(self, "models_served", Gauge(
            "fedguard_models_served", "Number of models this server serves", registry=self.registry))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def note_key_id(scope: Mapping[str, Any], key_id: str) -> None:
    """Record the authenticated key's id for the access log line of this request."""
    access = scope.get(ACCESS_KEY)
    if isinstance(access, dict):
        access["key_id"] = key_id


def route_template(routes: list[BaseRoute], scope: Scope) -> tuple[str, dict[str, Any]]:
    """The path template the request matches (or ``<unmatched>``) and its path parameters."""
    partial: tuple[str, dict[str, Any]] | None = None
    for route in routes:
        match, child = route.matches(scope)
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        if match == Match.FULL:
            return path, dict(child.get("path_params", {}))
        if match == Match.PARTIAL and partial is None:
            partial = (path, dict(child.get("path_params", {})))
    return partial if partial is not None else (UNMATCHED, {})


class RequestRecorder:
    """Counts, times and access-logs one answered request: what :class:`MetricsMiddleware` does per request.

    Shared by the middleware and the predict fast path
    (:mod:`serving.protocols.v1.fastpath`), which answers outside the
    middleware stack, so that both count into the same label children.
    """

    def __init__(self, metrics: ServingMetrics, models: Container[str]) -> None:
        self.metrics = metrics
        self.models = models
        # Bounded: templates, served models and status codes are finite sets.
        self._children: dict[tuple[str, str, int], Counter] = {}
        self._latencies: dict[str, Histogram] = {}

    def model_label(self, name: object) -> str:
        """The served-model label of a path's ``name``: the name if this server serves it, else empty."""
        return name if isinstance(name, str) and name in self.models else ""

    def _counter(self, template: str, model: str, status: int) -> Counter:
        """The request counter's child for these labels (looked up once: ``labels()`` costs µs per call)."""
        key = (template, model, status)
        child = self._children.get(key)
        if child is None:
            child = self.metrics.requests.labels(template, model, str(status))
            self._children[key] = child
        return child

    def _latency(self, model: str) -> Histogram:
        child = self._latencies.get(model)
        if child is None:
            child = self.metrics.predict_latency.labels(model)
            self._latencies[model] = child
        return child

    def record(self, method: str, template: str, model: str, status: int, elapsed: float, key_id: str) -> None:
        """Count the request, time a predict, and write its access line.

        Where the access log is what ``fedguard serve`` configures (one
        :class:`~serving.worker.BatchedLineWriter` with the access format, no
        filter, no propagation), the line is formatted here and handed to the
        writer: the same bytes without a ``LogRecord`` and the handler chain,
        which cost ~15 µs of a ~250 µs request (``benchmarks/serving.py``).
        Any other configuration (a handler added, a filter) gets the record.
        """
        self._counter(template, model, status).inc()
        if template in PREDICT_ROUTES and model:
            self._latency(model).observe(elapsed)
        writer = _direct_writer()
        if writer is not None:
            line = writer.formatter.line(access_logger.name,  # type: ignore[union-attr]  # checked there
                                         f"{method} {template} {status:d} {elapsed * 1000.0:.1f}ms key={key_id}",
                                         time.time())
            if line is not None:
                writer.add_line(line)
                return
        access_logger.info("%s %s %d %.1fms key=%s", method, template, status, elapsed * 1000.0, key_id)


def _direct_writer() -> BatchedLineWriter | None:
    """The access log's only handler, if a line may bypass :mod:`logging`'s record machinery and reach it."""
    handlers = access_logger.handlers
    if (len(handlers) != 1 or access_logger.propagate or access_logger.filters or access_logger.disabled
            or not access_logger.isEnabledFor(logging.INFO)):
        return None
    handler = handlers[0]
    if (type(handler) is not BatchedLineWriter or handler.filters or handler.level > logging.INFO
            or type(handler.formatter) is not AccessFormatter):
        return None
    return handler


class MetricsMiddleware:
    """Count, time and access-log every HTTP request (outermost user middleware)."""

    def __init__(
        self, app: ASGIApp, metrics: ServingMetrics, routes: list[BaseRoute], models: Container[str],
        recorder: RequestRecorder | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.models = models
        self.recorder = recorder if recorder is not None else RequestRecorder(metrics, models)
        self._memo: dict[tuple[str, str], tuple[str, str]] = {}

    def _label(self, scope: Scope) -> tuple[str, str]:
        """The route template and served-model label of a request, memoised per (method, path).

        Matching every route costs tens of microseconds per request; the memo is
        bounded (cleared past :data:`_MEMO_SIZE` entries) so that probing random
        paths cannot grow it.
        """
        cache_key = (scope.get("method", ""), scope.get("path", ""))
        labels = self._memo.get(cache_key)
        if labels is None:
            template, params = route_template(self.routes, scope)
            labels = (template, self.recorder.model_label(params.get("name")))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[cache_key] = labels
        return labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        template, model = self._label(scope)
        access: dict[str, str] = {}
        scope[ACCESS_KEY] = access
        status = 500
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.recorder.record(scope.get("method", "?"), template, model, status, time.perf_counter() - started,
                                 access.get("key_id", "-"))
