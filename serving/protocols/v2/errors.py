"""The Open Inference Protocol's error boundary: one translation for REST and gRPC.

The v2 protocol words an error as ``{"error": "<message>"}`` (REST) or as a
gRPC status with a message; which status is decided here, by error class, as
:mod:`serving.errors` decides it for the v1 routes, and what a caller reads is
the same sanitized text (operator detail goes to the log only, DESIGN.md §7.7).
Two differences from v1, both the protocol's: an input that does not fit the
model is **400** (v1: 422), and the body is the protocol's flat ``error`` string.

=====================================  ======  ====================
error                                  HTTP    gRPC
=====================================  ======  ====================
AuthenticationError, AuthError         401     UNAUTHENTICATED
ScopeError, SubjectObjected            403     PERMISSION_DENIED
UnknownModelError, NotFoundError       404     NOT_FOUND
InputValidationError (V2InputError)    400     INVALID_ARGUMENT
body over max_body_bytes               413     RESOURCE_EXHAUSTED
QuotaExceeded                          429     RESOURCE_EXHAUSTED
other ConfigurationError               400     INVALID_ARGUMENT
ModelKilled, other StateError          503     UNAVAILABLE
anything else                          500     INTERNAL
=====================================  ======  ====================

A refused subject answers the operator's ``objection_status`` (403 unless
configured) on REST; gRPC has one code for it, PERMISSION_DENIED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from starlette.exceptions import HTTPException

from lifecycle.errors import AuthError, ConfigurationError, InputValidationError, NotFoundError, StateError
from serving import logger
from serving.errors import SubjectObjected
from serving.guards.keys import ScopeError
from serving.guards.killswitch import KILLED_MESSAGE, WITHDRAWN_MESSAGE, ModelKilled, ModelWithdrawn
from serving.guards.quotas import QuotaExceeded
from serving.settings import ServingSettings

UNAUTHENTICATED_MESSAGE = ("a valid API key is required: send 'Authorization: Bearer <key>' "
                           "(gRPC: metadata 'authorization: Bearer <key>')")


class V2InputError(InputValidationError):
    """A v2 request whose tensors do not fit the protocol or the model (HTTP 400, gRPC INVALID_ARGUMENT).

    Its message is written for the caller: it names the input or output and what to send instead.
    """


@dataclass(frozen=True)
class PublicError:
    """What a caller is told about a failed request: status, gRPC code name, message, retry hint."""

    status: int
    grpc_code: str  # a grpc.StatusCode member's name
    message: str
    retry_after: int | None = None


def public_error(exc: BaseException, settings: ServingSettings, where: str) -> PublicError:
    """The sanitized answer to ``exc``, logged with ``where`` (the route and caller) at its level."""
    if isinstance(exc, ScopeError):
        logger.warning("forbidden %s: %s", where, exc)
        return PublicError(403, "PERMISSION_DENIED", f"this API key lacks the '{exc.required}' scope")
    if isinstance(exc, AuthError):
        logger.warning("rejected %s: %s", where, exc)
        return PublicError(401, "UNAUTHENTICATED", UNAUTHENTICATED_MESSAGE)
    if isinstance(exc, SubjectObjected):
        logger.warning("refused %s: %s", where, exc)
        return PublicError(settings.objection_status, "PERMISSION_DENIED", settings.objection_message)
    if isinstance(exc, NotFoundError):
        logger.info("not found %s: %s", where, exc)
        return PublicError(404, "NOT_FOUND", "no such model or version is served here to this key; "
                                             "GET /v1/models lists the models and their versions")
    if isinstance(exc, InputValidationError):
        logger.info("invalid input %s: %s", where, exc)
        return PublicError(400, "INVALID_ARGUMENT", str(exc))
    if isinstance(exc, QuotaExceeded):
        logger.warning("rate limited %s: %s", where, exc)
        return PublicError(429, "RESOURCE_EXHAUSTED", "this API key is over its request rate or daily quota; "
                           "retry after Retry-After seconds", max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, ConfigurationError):
        logger.warning("bad request %s: %s", where, exc)
        return PublicError(400, "INVALID_ARGUMENT", "the request is not valid for this endpoint")
    if isinstance(exc, ModelKilled):
        logger.warning("refused %s: %s", where, exc)
        return PublicError(503, "UNAVAILABLE", WITHDRAWN_MESSAGE if isinstance(exc, ModelWithdrawn) else KILLED_MESSAGE)
    if isinstance(exc, StateError):
        logger.error("unavailable %s: %s", where, exc)
        return PublicError(503, "UNAVAILABLE", "the service cannot answer right now; try again later")
    if isinstance(exc, HTTPException) and exc.status_code == 413:  # the body limit (serving.app)
        logger.warning("refused %s: %s", where, exc.detail)
        return PublicError(413, "RESOURCE_EXHAUSTED", str(exc.detail))
    logger.error("internal error %s: %s: %s", where, type(exc).__name__, exc, exc_info=exc)
    return PublicError(500, "INTERNAL", "internal error; the operator's log has the details")
