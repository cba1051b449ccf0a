"""The predict fast path: a well-formed, cached-key predict request without FastAPI's per-request machinery.

FastAPI spends about as much server CPU on one predict request as the guards
themselves: it parses the ``Content-Type`` with :mod:`email`, extracts the
endpoint's context for error messages, and solves four dependencies (state,
key, bearer scheme, body) through its generic resolver
(``benchmarks/serving.py``). :class:`PredictFastPath` sits in front of the
predict route (same path, same method) and answers the common case itself,
in this order:

- a bearer key is presented and the ``Content-Type`` is ``application/json``
  (headers only: nothing of the body is read yet);
- the key is resolved and its predict scope checked by
  :func:`~serving.guards.auth.authorize`, as the route's dependency does
  (cache first; a bad key raises the same
  :class:`~serving.guards.keys.AuthenticationError`, a key without the
  predict scope the same :class:`~serving.guards.keys.ScopeError`), before
  a byte of the body is read;
- the body is nested at most :data:`~serving.guards.body.MAX_JSON_DEPTH`
  levels (checked without recursion, :func:`~serving.guards.body.check_depth`:
  422 otherwise) and parses (:func:`json.loads`, as FastAPI);
- the body validates as :class:`~serving.protocols.v1.schemas.PredictRequest`.

Everything else (no bearer key, another content type, broken JSON, a body
that does not validate) is handed, body replayed if it was read, to the
FastAPI route, which words the 401 or the 422 as it always did; its
:class:`~serving.guards.body.GuardedRoute` also checks the key before it
reads the body. So the two paths differ only in cost: the guards after
authentication (quotas, ranges, routing, drift, extraction, output shaping,
metrics, access log) are one function,
:func:`serving.protocols.v1.routes.answer_predict`, whichever path called it.
The OpenAPI document still comes from the FastAPI route.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from serving.guards.auth import authorize
from serving.guards.body import check_depth
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


def _is_json(content_type: bytes | None) -> bool:
    """Whether the ``Content-Type`` is ``application/json`` (parameters aside), the only one taken here."""
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == _JSON


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
        content_type, authorization = _headers(scope)  # one pass over the headers for both
        presented = _bearer(authorization)
        if presented is None or not _is_json(content_type):  # the route answers, checking the key first
            await self._fallback(scope, receive, send, None)
            return
        state = state_of(request)
        info = await authorize(scope, state, presented, "predict")
        body = await request.body()  # the body limit's counting receive applies here too
        parsed = self._parse(body)
        if parsed is None:
            await self._fallback(scope, receive, send, body)
            return
        try:
            instances = PredictRequest.model_validate(parsed)
        except ValidationError:  # FastAPI words the 422
            await self._fallback(scope, receive, send, body)
            return
        response = await answer_predict(scope["path_params"]["name"], instances, state, info)
        await response(scope, receive, send)

    @staticmethod
    def _parse(body: bytes) -> Any:
        """The parsed JSON body, or ``None`` to let the route answer.

        A body nested too deeply raises :class:`~serving.guards.body.MalformedBody` (422) here.
        """
        if not body:
            return None
        check_depth(body)
        try:
            return json.loads(body)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            return None

    async def _fallback(self, scope: Scope, receive: Receive, send: Send, body: bytes | None) -> None:
        """Hand the request to the FastAPI route: ``body`` replayed if it was read, else still unread."""
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed and body is not None:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        scope.update(self.route.matches(scope)[1])
        await self.route.handle(scope, replay, send)
