"""The served OpenAPI document, made to say what the server accepts and answers.

FastAPI derives ``/openapi.json`` from the pydantic models, which know
neither the served models nor the error boundary, so two things are stated
here per app:

- **the predict body's limits**: at least one and at most ``max_instances``
  instances, each with as many numbers as the served models have features
  (exactly N when every served model has N), each inside the float32 range.
  A request the document allows is then refused only for what no shared
  schema can state: another model's feature count, or an operator's feature
  range (documented in docs/serving.md);
- **the error shape**: every 422 is :class:`~serving.errors.ErrorBody`
  (``invalid_input``), never FastAPI's ``HTTPValidationError``, which this
  server never sends; a route that takes a body also lists 413.

``tests/serving/test_schemathesis.py`` holds the server to this document in
both directions (schema-valid requests accepted, every status and body as
declared, every error code documented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from serving.models import FLOAT32_MAX, ServedModel

_ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


@dataclass(frozen=True)
class PredictLimits:
    """What any predict request must satisfy on this server, whichever model it names."""

    max_instances: int
    min_features: int
    max_features: int

    @classmethod
    def of(cls, models: dict[str, ServedModel], max_instances: int) -> PredictLimits:
        """The limits for ``models`` (any count of features when none is served)."""
        counts = [model.num_features for model in models.values()] or [1]
        return cls(max_instances=max_instances, min_features=min(counts), max_features=max(counts))


class FastPath(Protocol):
    """A path answered in front of the middleware stack (see :meth:`ServingAPI.__call__`)."""

    def takes(self, scope: Scope) -> bool: ...

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None: ...


class ServingAPI(FastAPI):
    """A FastAPI app whose ``openapi()`` states the predict limits and the error shape (see the module)."""

    predict_limits: PredictLimits | None = None
    fast_path: FastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand a request the fast path takes to it, before the middleware stack; the rest to FastAPI.

        The fast path (:class:`serving.protocols.v1.fastpath.PredictFastPath`)
        counts, logs, limits and handles errors as the middleware would.
        """
        fast = self.fast_path
        if fast is not None and scope["type"] == "http" and not self.root_path and fast.takes(scope):
            scope["app"] = self
            await fast.serve(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def through_middleware(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole app, middleware and routes, without the fast path (where the fast path hands a request back)."""
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document, built once and refined for this server."""
        if self.openapi_schema is None:
            refine(super().openapi(), self.predict_limits)
        return super().openapi()


def refine(document: dict[str, Any], limits: PredictLimits | None) -> None:
    """Refine FastAPI's ``document`` in place: predict limits (when given) and the one error shape."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    if limits is not None and "PredictRequest" in schemas:
        _state_predict_limits(schemas["PredictRequest"], limits)
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            _state_error_shape(operation)
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)


def _state_predict_limits(request: dict[str, Any], limits: PredictLimits) -> None:
    instances = request["properties"]["instances"]
    instances.update(minItems=1, maxItems=limits.max_instances)
    instances["items"].update(minItems=limits.min_features, maxItems=limits.max_features)
    instances["items"]["items"].update(minimum=-FLOAT32_MAX, maximum=FLOAT32_MAX)


def _state_error_shape(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    invalid = responses.get("422")
    if invalid is not None and _FASTAPI_VALIDATION[0] in str(invalid):
        responses["422"] = {"description": "The request does not match this route's schema (the message names the "
                                           "field)", "content": {"application/json": {"schema": _ERROR_BODY}}}
    if "requestBody" in operation and "413" not in responses:
        responses["413"] = {"description": "The body exceeds the server's limit",
                            "content": {"application/json": {"schema": _ERROR_BODY}}}
