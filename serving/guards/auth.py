"""Request-time dependencies: API-key authentication by scope.

Routes declare what they need as a type, ``key: PredictKey`` or
``key: AdminKey``, and receive the caller's :class:`~serving.guards.keys.KeyInfo`.
The dependency looks the key up in the registry (one indexed query, in the
thread pool) unless :class:`~serving.guards.keycache.KeyCache` accepted the same key
less than ``auth_cache_seconds`` ago (1 s by default), so a revocation takes
effect on every replica sharing the registry within that bound, and at once on
the replica that revoked it; expiry is checked against the app's injected
clock on every request. Both dependencies are ``async``: neither costs a
thread-pool hop when the key is cached. :func:`resolve_key` keeps a key that
is in use in the cache: one request per key re-reads it in the background
when its entry is half ``auth_cache_seconds`` old, and concurrent requests
that miss the cache share one registry query instead of each sending their own.
The app's state these read and write is :class:`serving.state.ServingState`.

The bearer scheme is declared through FastAPI's :class:`HTTPBearer` so that
``/docs`` offers an *Authorize* button; it is created with
``auto_error=False`` so that a missing key goes through the same
:class:`~serving.guards.keys.AuthenticationError` path (and log line) as a bad one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, MutableMapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lifecycle.errors import FedguardError
from serving import logger
from serving.guards.keys import KeyInfo, authenticate, hash_secret, require_scope
from serving.metrics import note_key_id
from serving.state import ServingState, state_of

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="fedguard API key",
    description="A key from 'fedguard keys create', sent as 'Authorization: Bearer fgk_...'.",
)


SCOPE_MARK = "fedguard_scope"
"""Attribute a ``require(scope)`` dependency carries, so a route can tell its scope before solving it."""
_AUTHENTICATED = "fedguard.key"
"""ASGI scope entry holding the request's authenticated :class:`KeyInfo` (looked up once per request)."""


def require(scope: str) -> Callable[..., Coroutine[Any, Any, KeyInfo]]:
    """A dependency that authenticates the bearer key and checks it allows ``scope``.

    Raises
    ------
    AuthenticationError
        No, malformed, unknown, revoked or expired key: HTTP 401.
    ScopeError
        A valid key without ``scope``: HTTP 403.
    """

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> KeyInfo:
        # state_of, not a sub-dependency: each one costs FastAPI tens of µs
        return await authorize(request.scope, state_of(request), credentials.credentials if credentials else None,
                               scope)

    dependency.__name__ = f"require_{scope}_key"
    setattr(dependency, SCOPE_MARK, scope)
    return dependency


async def bearer_of(request: Request) -> str | None:
    """The presented bearer credentials, read as the ``require(scope)`` dependency reads them."""
    credentials = await _bearer(request)
    return credentials.credentials if credentials else None


async def authorize(asgi_scope: MutableMapping[str, Any], state: ServingState, presented: str | None,
                    scope: str) -> KeyInfo:
    """Authenticate the request's key once (:func:`resolve_key`) and check that it allows ``scope``.

    The :class:`KeyInfo` is kept in the request's ASGI scope, so a request
    checked before its body was read (:class:`serving.guards.body.GuardedRoute`,
    the predict fast path) is not looked up again by the route's dependency.

    Raises
    ------
    AuthenticationError
        No, malformed, unknown, revoked or expired key.
    ScopeError
        A valid key without ``scope``.
    """
    info = asgi_scope.get(_AUTHENTICATED)
    if not isinstance(info, KeyInfo):
        info = await resolve_key(state, presented)
        asgi_scope[_AUTHENTICATED] = info
    # Noted every time: a request the predict fast path read and replays through the middleware gets a
    # fresh access-log record there, which must still name the key.
    note_key_id(asgi_scope, info.key_id)
    return require_scope(info, scope)


async def resolve_key(state: ServingState, presented: str | None) -> KeyInfo:
    """The :class:`KeyInfo` of the presented bearer key: from the cache, or from the registry in the thread pool.

    A cache hit whose entry is half its bound old starts one background
    re-read of that key (:meth:`KeyCache.begin_refresh`); a miss joins the
    registry query already in flight for the same key, if any.

    Raises
    ------
    AuthenticationError
        No, malformed, unknown, revoked or expired key.
    """
    instant = state.clock()
    info = state.key_cache.lookup(presented, instant)
    if info is None:
        return await _look_up(state, presented, instant)
    if presented and state.key_cache.begin_refresh(info.key_id, instant):
        state.in_background(_refresh(state, presented, info.key_id, instant), f"re-reading API key {info.key_id}")
    return info


async def _look_up(state: ServingState, presented: str | None, instant: float) -> KeyInfo:
    """One registry query per presented key at a time; every concurrent caller awaits the same one."""
    if not presented:
        return await run_in_threadpool(authenticate, state.registry, presented,
                                       now=datetime.fromtimestamp(instant, UTC))
    token = hash_secret(presented)
    loop = asyncio.get_running_loop()
    task = state.key_lookups.get(token)
    if task is None or task.get_loop() is not loop:  # (an app driven by several loops, e.g. in tests)
        task = loop.create_task(_query(state, presented, instant))
        state.key_lookups[token] = task
        task.add_done_callback(lambda _: state.key_lookups.pop(token, None))
    return await asyncio.shield(task)


async def _query(state: ServingState, presented: str, instant: float) -> KeyInfo:
    info = await run_in_threadpool(authenticate, state.registry, presented, now=datetime.fromtimestamp(instant, UTC))
    state.key_cache.remember(presented, info, instant)
    return info


async def _refresh(state: ServingState, presented: str, key_id: str, instant: float) -> None:
    """Re-read a cached key; one the registry now refuses is forgotten, so its next request gets the 401."""
    try:
        await _look_up(state, presented, instant)
    except FedguardError as exc:
        state.key_cache.forget(key_id)
        logger.info("cached API key %s no longer authenticates: %s", key_id, exc)
    except Exception:  # noqa: BLE001 - a background task: its failure must not vanish silently
        logger.exception("could not re-read API key %s; it stays cached until its bound", key_id)
    finally:
        state.key_cache.end_refresh(key_id)


PredictKey = Annotated[KeyInfo, Depends(require("predict"))]
AdminKey = Annotated[KeyInfo, Depends(require("admin"))]
