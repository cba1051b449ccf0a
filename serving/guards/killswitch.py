"""The kill switch as the request path sees it: the refusal, and the error-rate cut-out.

The switch itself is state in the registry (:mod:`lifecycle.registry.deployments`):
``fedguard deploy kill``, the admin route, or an automatic cut-out sets it, and
every replica reads it within ``deploy_refresh_seconds``
(:class:`serving.rollout.router.Router`). This module holds what a replica needs
locally: :class:`ModelKilled`, the error a killed model answers with (HTTP 503
and a generic message, so a caller learns nothing about why), and
:class:`ErrorWindow`, the per-model sliding window that decides when failures
are frequent enough to trip the switch.

Notes
-----
The cut-out is a circuit breaker (Nygard, *Release It!*, 2007, ch. 5): once a
dependency fails often enough, stop calling it and fail fast, instead of
letting every caller wait on, or be answered by, something broken. Here the
"dependency" is the model version, and opening the breaker is shared by all
replicas through the registry, and stays open until an operator revives it:
a model that failed is not retried automatically.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from threading import Lock

from fastapi import Request
from fastapi.responses import JSONResponse

from lifecycle.errors import FedguardError, StateError
from serving import logger

KILLED_MESSAGE = "this model is switched off for now; try again later"
WITHDRAWN_MESSAGE = ("this model is withdrawn from service: consent for data it was trained on was withdrawn; "
                     "the operator has been told")
"""The public 503 text for a version tainted by a consent withdrawal (no site, no withdrawal: those are logged)."""


class ModelKilled(StateError):
    """The model's kill switch is engaged (or its pinned version could not be verified): HTTP 503."""


class ModelWithdrawn(ModelKilled):
    """The answering version is tainted by a consent withdrawal (blocked, or refused at load): HTTP 503."""


class ModelFailure(FedguardError, RuntimeError):
    """A model version's forward pass raised: HTTP 500 (counted by the cut-out; the cause is chained)."""


async def killed_response(request: Request, exc: Exception) -> JSONResponse:
    """The 503 a killed model answers with: the same generic text whatever the reason (logged here)."""
    from serving.errors import error_response

    logger.warning("refused %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, "unavailable", WITHDRAWN_MESSAGE if isinstance(exc, ModelWithdrawn) else KILLED_MESSAGE)


@dataclass(frozen=True)
class Verdict:
    """What one outcome did to a model's window: the failure share seen, and whether it trips."""

    samples: int
    failures: int
    trip: bool

    @property
    def rate(self) -> float:
        return self.failures / self.samples if self.samples else 0.0


@dataclass
class ErrorWindow:
    """Failures of one model's predictions over the last ``seconds`` (time is injected).

    ``threshold=None`` never trips. Below ``min_samples`` outcomes nothing
    trips, so one early failure cannot kill a model.
    """

    threshold: float | None
    min_samples: int
    seconds: float
    _events: deque[tuple[float, bool]] = field(default_factory=deque)
    _failures: int = 0
    _lock: Lock = field(default_factory=Lock)

    def record(self, failed: bool, now: float) -> Verdict:
        """Add one outcome at ``now`` (monotonic seconds) and judge the window."""
        with self._lock:
            self._events.append((now, failed))
            self._failures += int(failed)
            while self._events and self._events[0][0] <= now - self.seconds:
                _, old = self._events.popleft()
                self._failures -= int(old)
            samples, failures = len(self._events), self._failures
        trip = (
            self.threshold is not None and failed and samples >= self.min_samples
            and failures >= self.threshold * samples
        )
        return Verdict(samples, failures, trip)

    def reset(self) -> None:
        """Forget every outcome (after a trip, or when the served version changes)."""
        with self._lock:
            self._events.clear()
            self._failures = 0
