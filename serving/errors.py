"""The serving tier's error boundary: fedguard errors in, sanitized JSON out.

Every error response has one shape, ``{"error": {"code": ..., "message": ...}}``
(:class:`ErrorBody`, shared by every route). What a caller sees is decided here, by
error class, and never by copying an internal message: operator detail (paths,
key ids, database errors) goes to the ``fedguard.serving`` log only (DESIGN.md
§5, §7.7). The exceptions are :class:`InputValidationError`, whose messages are
written for the caller by definition (they name the instance and value at
fault), and request-parsing errors, which are rebuilt from their location.

===================================  ======  ===================
error                                status  code
===================================  ======  ===================
AuthenticationError, AuthError       401     unauthorized
ScopeError                           403     forbidden
SubjectObjected                      403     objection (status configurable)
UnknownModelError, NotFoundError     404     not_found
method not served on the route       405     method_not_allowed
DeploymentConflict (rollout routes)  409     conflict
NoBlackBoxWatermark (watermark)      409     conflict
body over max_body_bytes             413     payload_too_large
InputValidationError, bad JSON body  422     invalid_input
QuotaExceeded                        429     rate_limited
other ConfigurationError, other 4xx  400     bad_request
StateError, ModelKilled              503     unavailable
anything else                        500     internal
===================================  ======  ===================

These are the codes of docs/serving.md's table, and no others:
``tests/serving/test_schemathesis.py`` checks every answer against it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifecycle.errors import (
    AuthError,
    ConfigurationError,
    FedguardError,
    GovernanceError,
    InputValidationError,
    NotFoundError,
    StateError,
)
from serving import logger
from serving.guards.keys import AuthenticationError, ScopeError
from serving.guards.quotas import QuotaExceeded
from serving.settings import DEFAULT_OBJECTION_MESSAGE, DEFAULT_OBJECTION_STATUS

REALM = 'Bearer realm="fedguard"'
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 422: "invalid_input", 429: "rate_limited"}


class ErrorDetail(BaseModel):
    """A sanitized error: a stable machine code and a message safe to show a caller."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response has this shape."""

    error: ErrorDetail


class UnknownModelError(NotFoundError):
    """The path names a model this server does not serve."""


class SubjectObjected(GovernanceError):
    """The request's subject objected to automated processing by this model: refused, never scored.

    Answered with the operator's ``objection_status`` and ``objection_message``
    (code ``objection``); the exception's own message, which names the key and
    the subject's digest, goes to the log only.
    """


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one JSON error shape, with ``status`` and optional headers."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _where(request: Request) -> str:
    client = request.client.host if request.client else "?"
    return f"{request.method} {request.url.path} from {client}"


def describe_validation(errors: Sequence[Any], features: Sequence[str] = ()) -> str:
    """A caller-facing sentence for the first request-parsing error (no input echoed).

    ``features`` are the served model's feature names, when the path names
    one, so that a value of the wrong type is named by its feature too.
    """
    first = errors[0] if errors else {}
    loc = [part for part in first.get("loc", ()) if part != "body"]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if kind == "extra_forbidden":
        return "unexpected field in the body; send only {\"instances\": [[...], ...]}"
    if loc and loc[0] == "subject_id":
        return "'subject_id' must be a string of 1-128 printable ASCII characters"
    if kind == "missing" and not loc:
        return "the body is empty; send {\"instances\": [[...], ...]} as application/json"
    if kind == "missing":
        return f"the body lacks '{loc[0]}'; send {{\"instances\": [[...], ...]}}"
    if len(loc) >= 3 and loc[0] == "instances":
        value = loc[2]
        named = f" (feature '{features[value]}')" if isinstance(value, int) and 0 <= value < len(features) else ""
        return f"instance {loc[1]} value {value}{named} is not a number; send JSON numbers only"
    if len(loc) == 2 and loc[0] == "instances":
        return f"instance {loc[1]} is not a list of numbers"
    if loc == ["instances"]:
        return "'instances' must be a list of lists of numbers"
    return "the body must be a JSON object {\"instances\": [[...], ...]} sent as application/json"


def describe_other_validation(errors: Sequence[Any]) -> str:
    """A caller-facing sentence for the first parsing error of a route other than predict (no input echoed).

    Pydantic's ``msg`` states the rule broken ("Input should be greater than
    or equal to 1"), never the value sent, so it is safe to pass on.
    """
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return "the body is not valid JSON"
    if kind == "missing" and not loc:
        return "the body is empty; send a JSON object as application/json (see /docs)"
    if not loc:
        return "the body must be a JSON object sent as application/json (see /docs for its fields)"
    if kind == "extra_forbidden":
        return f"unexpected field '{'.'.join(loc)}' in the body (see /docs for its fields)"
    return f"'{'.'.join(loc)}': {first.get('msg', 'invalid value')}"


async def _authentication(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("rejected %s: %s", _where(request), exc)
    return error_response(
        401, "unauthorized", "a valid API key is required: send 'Authorization: Bearer <key>'",
        {"WWW-Authenticate": REALM},
    )


async def _scope(request: Request, exc: Exception) -> JSONResponse:
    required = exc.required if isinstance(exc, ScopeError) else "?"
    logger.warning("forbidden %s: %s", _where(request), exc)
    return error_response(
        403, "forbidden", f"this API key lacks the '{required}' scope",
        {"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{required}"'},
    )


async def _unknown_model(request: Request, exc: Exception) -> JSONResponse:
    logger.info("not found %s: %s", _where(request), exc)
    return error_response(404, "not_found", "no model by that name is served here; GET /v1/models lists them")


async def _objection(request: Request, exc: Exception) -> JSONResponse:
    settings = getattr(getattr(request.app.state, "fedguard", None), "settings", None)
    status = getattr(settings, "objection_status", DEFAULT_OBJECTION_STATUS)
    message = getattr(settings, "objection_message", DEFAULT_OBJECTION_MESSAGE)
    logger.warning("refused %s: %s", _where(request), exc)
    return error_response(status, "objection", message)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    logger.info("not found %s: %s", _where(request), exc)
    return error_response(404, "not_found", "the requested resource does not exist")


async def _invalid_input(request: Request, exc: Exception) -> JSONResponse:
    logger.info("invalid input %s: %s", _where(request), exc)
    return error_response(422, "invalid_input", str(exc))


def _features_of(request: Request) -> Sequence[str]:
    """The feature names of the served model the path names, or none."""
    state = getattr(request.app.state, "fedguard", None)
    name = request.path_params.get("name")
    model = getattr(state, "models", {}).get(name) if isinstance(name, str) else None
    return tuple(model.schema.features) if model is not None else ()


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    if request.url.path.endswith("/predict"):
        message = describe_validation(errors, _features_of(request))
    else:
        message = describe_other_validation(errors)
    logger.info("invalid input %s: %s", _where(request), message)
    return error_response(422, "invalid_input", message)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` as whole seconds, rounded up and at least 1 (RFC 9110 §10.2.3)."""
    return str(max(1, math.ceil(seconds)))


async def _quota(request: Request, exc: Exception) -> JSONResponse:
    retry_after = exc.retry_after if isinstance(exc, QuotaExceeded) else 1.0
    logger.warning("rate limited %s: %s", _where(request), exc)
    return error_response(
        429, "rate_limited", "this API key is over its request rate or daily quota; retry after Retry-After seconds",
        {"Retry-After": retry_after_header(retry_after)},
    )


async def _bad_request(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("bad request %s: %s", _where(request), exc)
    return error_response(400, "bad_request", "the request is not valid for this endpoint")


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unavailable %s: %s", _where(request), exc)
    return error_response(503, "unavailable", "the service cannot answer right now; try again later")


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error %s: %s: %s", _where(request), type(exc).__name__, exc, exc_info=exc)
    return error_response(500, "internal", "internal error; the operator's log has the details")


async def _http(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) and isinstance(exc.detail, str) else "error"
    headers = dict(exc.headers or {}) if isinstance(exc, StarletteHTTPException) else {}
    if status == 401:
        headers.setdefault("WWW-Authenticate", REALM)
    code = _HTTP_CODES.get(status) or ("bad_request" if status < 500 else "internal")  # only documented codes
    return error_response(status, code, detail, headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Register the translations above; Starlette picks the most specific class."""
    handlers = {
        AuthError: _authentication,
        AuthenticationError: _authentication,
        ScopeError: _scope,
        SubjectObjected: _objection,
        UnknownModelError: _unknown_model,
        NotFoundError: _not_found,
        InputValidationError: _invalid_input,
        QuotaExceeded: _quota,
        RequestValidationError: _request_validation,
        ConfigurationError: _bad_request,
        StateError: _unavailable,
        FedguardError: _internal,
        StarletteHTTPException: _http,
        Exception: _internal,
    }
    for exc_class, handler in handlers.items():
        app.add_exception_handler(exc_class, handler)
