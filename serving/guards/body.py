"""The JSON body guard: the key first, then a nesting depth bounded without recursion, then the parser.

:func:`json.loads` recurses once per nested array or object: a body of
100 000 ``[`` (200 kB, well inside ``max_body_bytes``) raises
``RecursionError`` deep inside the parser, which used to surface as an
unauthenticated 500 with a traceback of ~50 lines in the operator's log per
request. Two rules close that:

- **the key first**: a route that needs a key authenticates the caller (and
  checks the scope) before its body is read, so an unauthenticated caller
  never reaches the parser (:class:`GuardedRoute`, and the predict fast path
  in :mod:`serving.protocols.v1.fastpath`);
- **depth before parsing**: :func:`json_depth_exceeds` measures the nesting
  with C-speed byte operations and one numpy prefix sum, no recursion, and a
  body nested deeper than :data:`MAX_JSON_DEPTH` is refused with 422
  ``invalid_input`` and one log line, as is a JSON body that is not text
  (bytes that are not UTF-8, which FastAPI would answer with an undocumented
  400).

Every serving router declares ``route_class=GuardedRoute``; FastAPI parses a
body before it solves a route's dependencies, which is why the key is checked
here rather than left to the ``require(scope)`` dependency alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.routing import APIRoute

from lifecycle.errors import InputValidationError
from serving.guards.auth import SCOPE_MARK, authorize, bearer_of
from serving.state import state_of

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a body may have. fedguard's v1 predict
body needs 3 (``{"instances": [[...]]}``); 32 leaves room for other protocols'
tensors while staying far below the parser's recursion limit (~1000)."""

# A JSON string, escapes included; an unterminated one runs to the end of the body.
# Possessive quantifiers: no backtracking, linear in the body's length.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = b"[{"


class MalformedBody(InputValidationError):
    """A JSON body the parser must not see: nested too deeply, or not text (HTTP 422 ``invalid_input``)."""


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests arrays and objects more than ``limit`` levels deep, measured without recursion.

    Brackets inside strings do not count. A body with at most ``limit``
    opening brackets cannot exceed it and costs two :meth:`bytes.count`;
    otherwise strings are cut out (one regex pass), everything but brackets
    deleted (:meth:`bytes.translate`), and the running depth's maximum taken
    with one numpy prefix sum: a few milliseconds for a 4 MiB body. A body
    that is not valid JSON is measured all the same (an unclosed bracket is
    as deep as it opens); the parser refuses it afterwards if it is shallow.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == _OPENERS[0]) | (codes == _OPENERS[1]), 1, -1).astype(np.int32)
    return int(np.cumsum(steps, dtype=np.int32).max()) > limit


def check_depth(body: bytes) -> None:
    """Refuse a body nested deeper than :data:`MAX_JSON_DEPTH` (the predict fast path's only pre-parse check).

    Raises
    ------
    MalformedBody
        Naming the limit.
    """
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise MalformedBody(f"the body nests arrays or objects more than {MAX_JSON_DEPTH} levels deep; "
                            "send a flatter JSON document")


def check_json_body(body: bytes) -> None:
    """Refuse a JSON body before it is parsed when parsing it would fail badly.

    Raises
    ------
    MalformedBody
        The body nests more than :data:`MAX_JSON_DEPTH` levels, or its bytes
        are not text in the encoding :func:`json.loads` detects (UTF-8 unless
        a UTF-16/32 byte-order mark says otherwise).
    """
    check_depth(body)
    try:
        body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError:
        raise MalformedBody("the body is not valid JSON") from None


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI would parse a body of this ``Content-Type`` as JSON (``application/json``, ``+json``)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def route_scope(route: APIRoute) -> str | None:
    """The key scope a route requires (from its ``require(scope)`` dependency), or ``None``."""
    for dependency in get_flat_dependant(route.dependant).dependencies:
        scope = getattr(dependency.call, SCOPE_MARK, None)
        if isinstance(scope, str):
            return scope
    return None


class GuardedRoute(APIRoute):
    """An :class:`APIRoute` that checks the key, then the body's depth and encoding, before FastAPI parses it.

    Only requests that carry a body pay anything: the body is read once
    (Starlette caches it on the request, and FastAPI reuses it), and the key
    resolved here is reused by the route's ``require(scope)`` dependency
    (:func:`serving.guards.auth.authorize`), so it is looked up once.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler with the key check and :func:`check_json_body`."""
        handler = super().get_route_handler()
        scope = route_scope(self) if self.body_field is not None else None
        has_body = self.body_field is not None

        async def guarded(request: Request) -> Response:
            if has_body:
                if scope is not None:
                    await authorize(request.scope, state_of(request), await bearer_of(request), scope)
                if is_json(request.headers.get("content-type")):
                    body = await request.body()
                    if body:
                        check_json_body(body)
            return await handler(request)

        return guarded
