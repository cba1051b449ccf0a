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

Since issue 16 the same checks also run *in front of* the app's middleware
stack: :meth:`serving.openapi.ServingAPI.__call__` hands ``POST
/v1/models/{name}/predict`` with a bearer key, a JSON ``Content-Type`` and a
declared ``Content-Length`` within the body limit straight to
:meth:`PredictFastPath.serve`, which does itself what the seven ASGI layers
between uvicorn and the route did for it (each wraps ``send`` or ``receive``
and costs microseconds per request): it counts, times and access-logs the
request through the same :class:`~serving.metrics.RequestRecorder` as
:class:`~serving.metrics.MetricsMiddleware`, enforces the body limit while it
reads, and turns an exception into the answer of the app's own exception
handler, looked up as Starlette's ``ExceptionMiddleware`` and
``ServerErrorMiddleware`` look it up (an exception that only the catch-all
handler takes is answered 500 and re-raised, for the server to log).
Whatever it does not take goes through the whole app as before; a request it
read but cannot answer (broken JSON, a body that does not validate) is
replayed through the whole app, whose FastAPI route words the answer.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette._exception_handler import _lookup_exception_handler
from starlette._utils import is_async_callable
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.guards.auth import authorize
from serving.guards.body import check_depth
from serving.metrics import ACCESS_KEY, PREDICT_ROUTE, RequestRecorder
from serving.protocols.v1.routes import answer_predict
from serving.protocols.v1.schemas import PredictRequest
from serving.state import ServingState, state_of

_JSON = b"application/json"
_PATH = re.compile(r"/v1/models/([^/]+)/predict")
_DECLINED = "fedguard.fastpath.declined"
"""Scope mark of a request that :meth:`PredictFastPath.serve` read and replays through the app: answer by the route."""


def _headers(scope: Scope) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The request's ``Content-Type``, ``Authorization`` and ``Content-Length`` values (first of each), as sent."""
    content_type = authorization = length = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"content-length" and length is None:
            length = value
    return content_type, authorization, length


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


def _validated(body: bytes) -> PredictRequest | None:
    """The body as a :class:`PredictRequest`, or ``None`` when the FastAPI route should word the answer.

    Parsed and validated in one pass by pydantic's own JSON parser (a third of
    ``json.loads`` and then validating the objects); anything it refuses,
    broken JSON included, goes to the route, which parses with :mod:`json` as
    FastAPI does, so an answer other than 200 is always the route's. A body
    nested too deeply raises :class:`~serving.guards.body.MalformedBody` (422) first.
    """
    if not body:
        return None
    check_depth(body)
    try:
        return PredictRequest.model_validate_json(body)
    except ValidationError:  # broken JSON or a body that does not validate: FastAPI words the 422
        return None


class PredictFastPath:
    """The predict fast path (see the module): :meth:`serve` before the middleware, ``__call__`` as the route."""

    def __init__(self, route: APIRoute) -> None:
        self.route = route
        self.app: ASGIApp | None = None  # the whole app, set by attach()
        self.recorder: RequestRecorder | None = None
        self.max_body_bytes = 0

    def attach(self, app: ASGIApp, recorder: RequestRecorder, max_body_bytes: int) -> None:
        """Let :meth:`serve` answer in front of ``app``'s middleware, counting into ``recorder``."""
        self.app, self.recorder, self.max_body_bytes = app, recorder, max_body_bytes

    # ------------------------------------------------------------ in front of the middleware stack

    def takes(self, scope: Scope) -> bool:
        """Whether :meth:`serve` may see this request (a predict POST; the headers are checked there)."""
        if scope["method"] != "POST" or self.app is None or scope.get("root_path"):
            return False
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return False
        scope["path_params"] = {"name": match.group(1)}
        return True

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a predict request that :meth:`takes` accepted, as the whole app would (see the module)."""
        assert self.app is not None and self.recorder is not None
        content_type, authorization, length = _headers(scope)
        presented = _bearer(authorization)
        if (presented is None or not _is_json(content_type) or length is None or not length.isdigit()
                or int(length) > self.max_body_bytes):
            await self.app(scope, receive, send)  # the whole app, body unread
            return
        access: dict[str, str] = {}
        scope[ACCESS_KEY] = access
        started = time.perf_counter()
        status = 500
        unhandled: Exception | None = None
        try:
            try:
                outcome = await self._answer(scope, receive, presented)
            except Exception as exc:  # noqa: BLE001 - answered by the app's handlers, or re-raised
                outcome = await self._handled(scope, exc)
            if isinstance(outcome, bytes):  # read but not taken: the whole app answers and counts it
                status = 0
                scope[_DECLINED] = True
                await self.app(scope, _replaying(outcome, receive), send)
                return
            status = outcome.status_code
            await outcome(scope, receive, send)
        except _Raise as caught:  # the catch-all handler's 500 answer; the exception goes on to the server
            unhandled = caught.exc
            await caught.response(scope, receive, send)
        finally:
            if status:
                self.recorder.record("POST", PREDICT_ROUTE, self.recorder.model_label(scope["path_params"]["name"]),
                                     status, time.perf_counter() - started, access.get("key_id", "-"))
        if unhandled is not None:
            raise unhandled

    async def _answer(self, scope: Scope, receive: Receive, presented: str) -> Response | bytes:
        """The answer, or the body read when the route must answer it."""
        state: ServingState = scope["app"].state.fedguard
        info = await authorize(scope, state, presented, "predict")
        body = await self._body(receive)
        instances = _validated(body)
        if instances is None:
            return body
        return await answer_predict(scope["path_params"]["name"], instances, state, info)

    async def _body(self, receive: Receive) -> bytes:
        """The whole body, refused with 413 as soon as it grows past the limit (as BodyLimitMiddleware does)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise HTTPException(status_code=413, detail=f"the request body exceeds {self.max_body_bytes} "
                                        "bytes; send fewer instances per request")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    async def _handled(scope: Scope, exc: Exception) -> Response:
        """The app's answer to ``exc``: its handler's response, as Starlette's exception middleware finds it.

        An exception that only the catch-all (``Exception`` or 500) handler
        takes is re-raised after that handler's answer was sent, as
        ``ServerErrorMiddleware`` does: the :class:`_Raise` carries both.
        """
        handlers: dict[Any, Any] = scope["app"].exception_handlers
        handler = handlers.get(exc.status_code) if isinstance(exc, HTTPException) else None
        if handler is None:
            handler = _lookup_exception_handler({k: v for k, v in handlers.items() if k not in (500, Exception)}, exc)
        if handler is None:
            fallback = handlers.get(500) or handlers.get(Exception)
            if fallback is None:
                raise exc
            raise _Raise(await _call(fallback, Request(scope), exc), exc) from exc
        return await _call(handler, Request(scope), exc)

    # ------------------------------------------------------------ as the route, inside the middleware stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get(_DECLINED):  # serve() read it and found it the route's to answer
            await self._fallback(scope, receive, send, None)
            return
        request = Request(scope, receive)
        content_type, authorization, _ = _headers(scope)  # one pass over the headers for both
        presented = _bearer(authorization)
        if presented is None or not _is_json(content_type):  # the route answers, checking the key first
            await self._fallback(scope, receive, send, None)
            return
        state = state_of(request)
        info = await authorize(scope, state, presented, "predict")
        body = await request.body()  # the body limit's counting receive applies here too
        instances = _validated(body)
        if instances is None:
            await self._fallback(scope, receive, send, body)
            return
        response = await answer_predict(scope["path_params"]["name"], instances, state, info)
        await response(scope, receive, send)

    async def _fallback(self, scope: Scope, receive: Receive, send: Send, body: bytes | None) -> None:
        """Hand the request to the FastAPI route: ``body`` replayed if it was read, else still unread."""
        scope.update(self.route.matches(scope)[1])
        await self.route.handle(scope, receive if body is None else _replaying(body, receive), send)


class _Raise(Exception):  # noqa: N818 - not an error of its own: carries an answer and the exception to re-raise
    def __init__(self, response: Response, exc: Exception) -> None:
        super().__init__(str(exc))
        self.response, self.exc = response, exc


async def _call(handler: Any, request: Request, exc: Exception) -> Response:
    if is_async_callable(handler):
        response: Response = await handler(request, exc)
    else:
        response = await run_in_threadpool(handler, request, exc)
    return response


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` with ``body`` handed out first, as if it had not been read."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
