"""The serving app's state: everything a request handler needs, fixed when the app is built.

:func:`serving.app.create_app` builds one :class:`ServingState` and attaches it
to the app (``app.state.fedguard``); handlers reach it through
:func:`state_of` (plain ASGI code such as the predict fast path) or the
``state: State`` dependency (FastAPI routes). It holds the registry, the
settings, the verified models and every guard's own state (quotas, key cache,
ranges, extraction, drift, the rollout router), so that a guard never keeps
module-level state and two apps in one process (tests, replicas) never share any.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from lifecycle.errors import StateError
from lifecycle.registry import Registry
from serving import logger
from serving.drift import DriftMonitors
from serving.guards.extraction import ExtractionGuard
from serving.guards.keycache import KeyCache
from serving.guards.keys import KeyInfo
from serving.guards.objections import ObjectionGuard
from serving.guards.quotas import QuotaStore
from serving.guards.ranges import FeatureRanges
from serving.metrics import ServingMetrics
from serving.models import ServedModel
from serving.rollout.router import Router
from serving.settings import ServingSettings


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
    # Rollouts and the kill switch (serving.rollout.router); built from ``models`` when not given.
    deployments: Router = field(default=None)  # type: ignore[assignment]
    # Subjects' objections per served model in this environment (serving.guards.objections); built when not given.
    objections: ObjectionGuard = field(default=None)  # type: ignore[assignment]

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
        if self.objections is None:  # loaded by the first request that names a subject
            object.__setattr__(self, "objections", ObjectionGuard(
                self.registry, self.settings.environment, self.deployments.names,
                refresh_seconds=self.settings.deploy_refresh_seconds, refusals=self.metrics.objection_refusals))


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
