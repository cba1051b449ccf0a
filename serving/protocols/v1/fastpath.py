"""The predict fast path: a well-formed, cached-key predict request without FastAPI's per-request machinery.

FastAPI spends about as much server CPU on one predict request as the guards
themselves: it parses the ``Content-Type`` with :mod:`email`, extracts the
endpoint's context for error messages, and solves four dependencies (state,
key, bearer scheme, body) through its generic resolver
(``benchmarks/serving.py``). :class:`PredictFastPath` sits in front of the
predict route (same path, same method) and answers the common case itself:

- the body is ``application/json`` and parses (:func:`json.loads`, as FastAPI);
- a bearer key is presented; it is resolved by
  :func:`~serving.guards.auth.resolve_key`, as the dependency does (cache first; a
  bad key raises the same :class:`~serving.guards.keys.AuthenticationError`, and a
  key without the predict scope the same :class:`~serving.guards.keys.ScopeError`);
- the body validates as :class:`~serving.protocols.v1.schemas.PredictRequest`.

Everything else (no or another content type, broken JSON, no bearer key,
a body that does not validate) is handed, body replayed, to
the FastAPI route, which answers exactly as it always did. So the two paths
differ only in cost: the guards after authentication (quotas, ranges, routing,
drift, extraction, output shaping, metrics, access log) are one function,
:func:`serving.protocols.v1.routes.answer_predict`, whichever path called it. The OpenAPI
document still comes from the FastAPI route.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from serving.guards.auth import resolve_key
from serving.guards.keys import require_scope
from serving.metrics import note_key_id
from serving.protocols.v1.routes import answer_predict
from serving.protocols.v1.schemas import PredictRequest
from serving.state import state_of

_JSON = b"application/json"


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The request's ``Content-Type`` and ``Authorization`` values (first of each), as sent."""
    content_type = authorization = None
    for name, value in scope["headers"]:
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"authorization" and authorization is None:
            authorization = value
    return content_type, authorization


def _bearer(authorization: bytes | None) -> str | None:
    """The credentials of ``Authorization: Bearer <credentials>``, as FastAPI's ``HTTPBearer`` reads them."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    if not scheme or not credentials or scheme.lower() != "bearer":
        return None
    return credentials


class PredictFastPath:
    """ASGI endpoint for ``POST /v1/models/{name}/predict`` that falls back to ``route`` (see the module)."""

    def __init__(self, route: APIRoute) -> None:
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await request.body()  # the body limit's counting receive applies here too
        content_type, authorization = _headers(scope)  # one pass over the headers for both
        parsed = self._parse(content_type, body)
        if parsed is None:
            await self._fallback(scope, receive, send, body)
            return
        state = state_of(request)
        presented = _bearer(authorization)
        if presented is None:  # no key: the dependency words the 401
            await self._fallback(scope, receive, send, body)
            return
        info = await resolve_key(state, presented)
        note_key_id(scope, info.key_id)
        require_scope(info, "predict")
        try:
            instances = PredictRequest.model_validate(parsed)
        except ValidationError:  # FastAPI words the 422
            await self._fallback(scope, receive, send, body)
            return
        response = await answer_predict(scope["path_params"]["name"], instances, state, info)
        await response(scope, receive, send)

    @staticmethod
    def _parse(content_type: bytes | None, body: bytes) -> Any:
        if not body or content_type is None or content_type.split(b";", 1)[0].strip().lower() != _JSON:
            return None
        try:
            return json.loads(body)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            return None

    async def _fallback(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope.update(self.route.matches(scope)[1])
        await self.route.handle(scope, replay, send)
