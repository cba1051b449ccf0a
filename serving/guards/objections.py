"""The right to object at inference: refuse, unscored, a request whose subject objected to the model.

A predict request may name its data subject (``subject_id``). The operator
records objections per model and environment
(:class:`lifecycle.governance.objections.ObjectionStore`, ``fedguard
objections add``); :class:`ObjectionGuard` (``ServingState.objections``)
holds the HMAC digests of the served models' lists for this server's
environment (``ServingSettings.environment``), and a request whose subject is
listed is refused with the configured status and message
(:class:`serving.errors.SubjectObjected`) before routing, quotas or the
model see its instances. The refusal is counted
(``fedguard_objection_refusals_total``) and audited as
``inference.refused.objection`` with the model, environment, API key id and
the subject's digest, never the instances nor the identifier.

The guard follows the router's live model set (``models`` is a callable,
:meth:`serving.rollout.router.Router.names`): a model served only since
startup (deployed in this environment later, or blocked at startup and then
replaced by a clean version) has its list loaded when the router first serves
it, or by the first request naming a subject for it. It fails closed: a
request naming a subject for a model whose list is not loaded is refused
with 503 (:class:`ObjectionsUnavailable`), never scored.

Freshness: the lists are loaded when the app is built and re-read from the
registry when a request that names a subject finds them older than
``deploy_refresh_seconds``. One cheap query of revisions (count, newest id
and time per model) decides whether a model's digests are read again. The
query runs in the thread pool, never on the event loop, and that request
waits for it: the decision must not rest on a list older than the interval.
Requests without ``subject_id`` never wait and never trigger it. A registry
that cannot be read refuses the request with 503 rather than score a
subject on a list it could not check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import Counter

from lifecycle import audit
from lifecycle.errors import StateError
from lifecycle.governance.objections import ObjectionRevision, ObjectionStore, subject_digest
from lifecycle.registry import Registry
from serving import logger
from serving.metrics import ServingMetrics

REFUSAL_ACTION = "inference.refused.objection"


class ObjectionsUnavailable(StateError):
    """A request names a subject for a model whose objection list is not loaded: 503, never scored."""


class ObjectionGuard:
    """The served models' subject exceptions in one environment, refreshed from the registry (thread-safe)."""

    def __init__(
        self,
        registry: Registry,
        environment: str,
        models: Iterable[str] | Callable[[], Iterable[str]],
        *,
        refresh_seconds: float,
        refusals: Counter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.store = ObjectionStore(registry)
        self.environment = environment
        fixed = frozenset(() if callable(models) else models)
        self._names: Callable[[], Iterable[str]] = models if callable(models) else (lambda: fixed)
        self.refresh_seconds = refresh_seconds
        self.refusals = refusals if refusals is not None else ServingMetrics().objection_refusals
        self._monotonic = monotonic
        self._digests: dict[str, frozenset[str]] = {}
        self._revisions: dict[str, ObjectionRevision] = {}
        self._key: bytes | None = None
        self._checked: float | None = None  # never loaded
        self._lock = threading.Lock()

    @property
    def models(self) -> frozenset[str]:
        """The models whose lists this guard keeps: the router's live set now (or the fixed set it was given)."""
        return frozenset(self._names())

    def holds(self, model: str) -> bool:
        """Whether ``model``'s list is loaded (an empty one counts): a subject can be screened for it."""
        return model in self._digests

    def stale(self) -> bool:
        """Whether the lists are older than the refresh interval (or were never loaded; a clock stepped back)."""
        if self._checked is None:
            return True
        elapsed = self._monotonic() - self._checked
        return not 0.0 <= elapsed < self.refresh_seconds

    def refresh(self, force: bool = False, need: str | None = None) -> None:
        """Re-read the revisions and the digests of every model whose list changed (blocking: thread pool only).

        Threads that find a refresh running wait for it, then use its result
        (unless it is stale, or still lacks the list of model ``need``).
        A model new to :attr:`models` has its list loaded, whatever the
        revisions say.

        Raises
        ------
        StateError
            The registry cannot be read, or this machine lacks the registry's
            subject key (or holds another one); the lists stay as they were,
            and a request naming a subject is answered 503, not scored.
        """
        with self._lock:
            if not force and not self.stale() and (need is None or need in self._digests):
                return  # refreshed by the thread this one waited for
            started = self._monotonic()
            models = self.models
            revisions = self.store.revisions(self.environment)
            digests = dict(self._digests)
            for name in models:
                revision = revisions.get(name)
                if name in digests and revision == self._revisions.get(name):
                    continue
                digests[name] = self.store.digests(name, self.environment) if revision else frozenset()
                logger.log(logging.INFO if self._checked is None else logging.WARNING,
                           "subject exceptions of %s in %s: %d listed", name, self.environment, len(digests[name]))
            if self._key is None and any(digests.values()):
                self._key = self.store.key(create=False)  # never a new one: it would match nothing
            self._digests = digests
            self._revisions = {name: r for name, r in revisions.items() if name in models}
            self._checked = started

    def listed(self, model: str, subject_id: str) -> str | None:
        """The subject's digest if it objected to ``model`` (refuse the request), else ``None``.

        A model without exceptions costs one dictionary look-up; the HMAC is
        computed only for a model that has some.

        Raises
        ------
        ObjectionsUnavailable
            ``model``'s list is not loaded (it failed to load, or the model
            is served only since the last refresh): refuse with 503 rather
            than score a subject on a list never checked.
        """
        digests = self._digests.get(model)
        if digests is None:
            raise ObjectionsUnavailable(f"the objection list of model {model[:128]!r} in {self.environment} is not "
                                        "loaded; a request naming a subject is refused unscored")
        if not digests or self._key is None:
            return None
        digest = subject_digest(self._key, subject_id)
        return digest if digest in digests else None

    def record_refusal(self, model: str, digest: str, key_id: str) -> None:
        """Count and audit one refusal (blocking: thread pool only); a failed audit write is logged, never raised.

        The caller refuses the request whatever happens here: an audit trail
        that cannot be written must not turn a refusal into a 500, nor into a
        prediction.
        """
        self.refusals.labels(model).inc()
        try:
            with self.registry.transaction() as session:
                audit.record(session, REFUSAL_ACTION, actor=f"apikey:{key_id}", subject=model,
                             details={"environment": self.environment, "key_id": key_id, "subject_digest": digest})
        except Exception as exc:  # noqa: BLE001 - any failure to audit still refuses (and says so in the log)
            logger.error("could not audit the objection refusal of key %s on %s (subject %s…): %s: %s",
                         key_id, model, digest[:16], type(exc).__name__, exc)
