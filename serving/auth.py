"""Request-time dependencies: the app's state and API-key authentication by scope.

Routes declare what they need as a type, ``key: PredictKey`` or
``key: AdminKey``, and receive the caller's :class:`~serving.keys.KeyInfo`.
The dependency looks the key up in the registry (one indexed query, in the
thread pool) unless :class:`~serving.keycache.KeyCache` accepted the same key
less than ``auth_cache_seconds`` ago (1 s by default), so a revocation takes
effect on every replica sharing the registry within that bound, and at once on
the replica that revoked it; expiry is checked against the app's injected
clock on every request. Both dependencies are ``async``: neither costs a
thread-pool hop when the key is cached. :func:`resolve_key` keeps a key that
is in use in the cache: one request per key re-reads it in the background
when its entry is half ``auth_cache_seconds`` old, and concurrent requests
that miss the cache share one registry query instead of each sending their own.

The bearer scheme is declared through FastAPI's :class:`HTTPBearer` so that
``/docs`` offers an *Authorize* button; it is created with
``auto_error=False`` so that a missing key goes through the same
:class:`~serving.keys.AuthenticationError` path (and log line) as a bad one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from lifecycle.errors import FedguardError, StateError
from lifecycle.registry import Registry
from serving import logger
from serving.drift import DriftMonitors
from serving.extraction import ExtractionGuard
from serving.keycache import KeyCache
from serving.keys import KeyInfo, authenticate, hash_secret, require_scope
from serving.metrics import ServingMetrics, note_key_id
from serving.models import ServedModel
from serving.quotas import QuotaStore
from serving.ranges import FeatureRanges
from serving.rollout import Router
from serving.settings import ServingSettings

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="fedguard API key",
    description="A key from 'fedguard keys create', sent as 'Authorization: Bearer fgk_...'.",
)


@dataclass(frozen=True)
class ServingState:
    """Everything a request handler needs, fixed when the app is created."""

    registry: Registry
    settings: ServingSettings
    models: dict[str, ServedModel]
    quotas: QuotaStore
    clock: Callable[[], float] = field(default=time.time)
    metrics: ServingMetrics = field(default_factory=ServingMetrics)
    drift: DriftMonitors = field(default_factory=DriftMonitors)
    extraction: ExtractionGuard = field(default_factory=ExtractionGuard)
    ranges: FeatureRanges = field(default_factory=FeatureRanges)
    key_cache: KeyCache = field(default_factory=KeyCache)
    # Registry look-ups in flight, by the SHA-256 of the presented key (resolve_key).
    key_lookups: dict[str, asyncio.Task[KeyInfo]] = field(default_factory=dict)
    # Background tasks the event loop would otherwise only hold weakly.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # Rollouts and the kill switch (serving.rollout); built from ``models`` when not given.
    deployments: Router = field(default=None)  # type: ignore[assignment]

    def in_background(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run ``work`` on the running loop without waiting for it: held until done, an unexpected failure logged.

        The event loop keeps only a weak reference to a task, so it is held in
        :attr:`background`; ``what`` names it in the log line of a failure.
        """
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        task.add_done_callback(lambda done: _log_failure(done, what))

    def __post_init__(self) -> None:
        if self.deployments is None:
            object.__setattr__(self, "deployments", Router.for_models(self.registry, self.settings, self.models,
                                                                      metrics=self.metrics.registry))


def _log_failure(task: asyncio.Task[None], what: str) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s failed: %r", what, task.exception())


def state_of(request: Request) -> ServingState:
    """The :class:`ServingState` that :func:`serving.app.create_app` attached to the app."""
    state = getattr(request.app.state, "fedguard", None)
    if not isinstance(state, ServingState):
        raise StateError("the serving app was not built by serving.app.create_app")
    return state


async def get_state(request: Request) -> ServingState:
    """The app's :class:`ServingState`, as a dependency (``state: State``)."""
    return state_of(request)


State = Annotated[ServingState, Depends(get_state)]


def require(scope: str) -> Callable[..., KeyInfo]:
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
        state = state_of(request)  # not a sub-dependency: each one costs FastAPI tens of µs
        presented = credentials.credentials if credentials else None
        info = await resolve_key(state, presented)
        note_key_id(request.scope, info.key_id)
        return require_scope(info, scope)

    dependency.__name__ = f"require_{scope}_key"
    return dependency


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
