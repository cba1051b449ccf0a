"""The router: which verified model version answers each request, and what the shadow sees.

:class:`Router` (``ServingState.deployments``) holds every version a model's
deployment state needs (stable, candidate, pinned), each verified and loaded
through :func:`serving.models.load_version`, and re-reads the state from the
shared registry at most every ``deploy_refresh_seconds`` (one cheap query of
``(model, revision)`` pairs, on the request path and at each ``/metrics``
scrape), so a change made anywhere reaches every replica within that interval.

A version tainted by a consent withdrawal (``lifecycle.governance.consent``)
is never loaded, whatever the deployment says: a replica that starts after
the withdrawal, or a kill revived by hand, still cannot serve it. Nor does a
running replica keep serving one: each refresh also reads a taint marker
(newest ``model_taint`` id and row count, one query), and when it moved, the
versions loaded (stable, candidate, pinned) are checked against the taint
table and the tainted ones dropped (the model answers 503 "withdrawn"), even
if the consent step that should have killed or replaced the deployment never
ran (it failed, or its process died).

A model deployed in this environment after the server started (first
promoted to production there, say) is loaded at the next refresh, as the
startup loads one; the app's :attr:`Router.on_new_model` hook then builds its
per-model guards (drift monitor, feature ranges, extraction grid, objection
list) before it answers. A model whose guards cannot be built answers 503
and the log says to fix the configuration and restart the server.

Per request, :meth:`Router.route` picks the answering version:

- **killed**: :class:`~serving.guards.killswitch.ModelKilled` (503), or the pinned
  version if the kill pinned one that verifies; a kill caused by a consent
  withdrawal answers :class:`~serving.guards.killswitch.ModelWithdrawn` (503,
  its own generic text);
- **canary**: a sticky ``weight`` percent of API keys, by a hash of key id,
  model and rollout id, so a caller sees one version throughout a rollout and a
  new rollout re-draws the sample;
- **shadow**: stable answers; the candidate gets a copy of the batch on a
  background thread after the answer is computed. Its labels are compared and
  counted (``fedguard_shadow_*``), never returned; when the queue is full, the
  copy is dropped rather than delaying live traffic.

:meth:`Route.predict` computes the answer and feeds the model's
:class:`~serving.guards.killswitch.ErrorWindow`; crossing the configured failure rate
trips the kill switch for every replica (:meth:`Router.trip`).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import Session, col, select

from lifecycle.audit import actors
from lifecycle.errors import FedguardError, GovernanceError, NotFoundError
from lifecycle.governance.consent import REASON_PREFIX, ConsentStore
from lifecycle.governance.tables import ModelTaint
from lifecycle.registry import DeploymentState, DeploymentStore, Registry
from lifecycle.registry.deployments import DEFAULT_ENVIRONMENT
from lifecycle.registry.tables import ModelVersion, RegisteredModel
from serving import logger
from serving.claims import Claims
from serving.errors import UnknownModelError
from serving.guards.killswitch import ErrorWindow, ModelFailure, ModelKilled, ModelWithdrawn
from serving.guards.outputs import shape_output
from serving.models import ServedModel, load_version
from serving.settings import OutputPolicy, ServingSettings

_HASH_SPACE = float(2**64)
CLAIM_LAPSE_SECONDS = 5.0
"""How long a claimed background refresh (:meth:`Router.claim_refresh`) keeps others from claiming one."""
_REFRESH = "refresh"

ModelHook = Callable[[ServedModel], None]
"""Called with a model's stable version when the router first serves a model not served at startup."""


def canary_bucket(key_id: str, model: str, rollout_id: int) -> float:
    """A key's fixed position in [0, 100) for one rollout: the canary takes those below its weight.

    Raising the weight keeps every key already in the canary there; a new
    rollout (another candidate) re-draws the positions.
    """
    digest = hashlib.sha256(f"{key_id}|{model}|{rollout_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _HASH_SPACE * 100.0


@dataclass(frozen=True)
class Live:
    """One model's deployment state with the versions it needs, loaded (or ``None`` if one failed)."""

    state: DeploymentState
    stable: ServedModel | None
    candidate: ServedModel | None
    pinned: ServedModel | None


@dataclass(frozen=True)
class Route:
    """The decision for one request: who answers (``role``), and who shadows."""

    router: Router
    model: ServedModel
    role: str
    shadow: ServedModel | None = None

    def predict(self, batch: np.ndarray, policy: OutputPolicy) -> dict[str, Any]:
        """The response fields from the answering version; records the outcome and mirrors to the shadow."""
        return self.router.answer(self, batch, policy)[0]

    def answer(self, batch: np.ndarray, policy: OutputPolicy) -> tuple[dict[str, Any], np.ndarray]:
        """As :meth:`predict`, with the model's float32 logits for the server's own monitors."""
        return self.router.answer(self, batch, policy)


class RolloutMetrics:
    """Rollout series, registered in the app's own Prometheus registry."""

    def __init__(self, registry: CollectorRegistry, router: Router) -> None:
        self.served = Counter("fedguard_served_predictions", "Predict requests answered, by model, version and role "
                              "(stable, canary, pinned)", ("model", "version", "role"), registry=registry)
        self.shadow_instances = Counter("fedguard_shadow_instances", "Instances a shadow version predicted, by "
                                        "model and shadow version", ("model", "version"), registry=registry)
        self.shadow_agreements = Counter("fedguard_shadow_agreements", "Shadow labels equal to the label returned, "
                                         "by model and shadow version", ("model", "version"), registry=registry)
        self.shadow_dropped = Counter("fedguard_shadow_dropped", "Shadow copies dropped (queue full or shadow "
                                      "failed), by model", ("model", "reason"), registry=registry)
        self.trips = Counter("fedguard_kill_switch_trips", "Kill-switch trips this replica made, by model and source",
                             ("model", "source"), registry=registry)
        registry.register(_StateCollector(router))


class _StateCollector(Collector):
    """Kill-switch state and traffic shares, read fresh (after a due refresh) at each scrape."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        self.router.refresh()
        killed = GaugeMetricFamily("fedguard_kill_switch_engaged", "1 if the model's kill switch is engaged "
                                   "(503 or pinned), else 0", labels=("model", "mode"))
        shares = GaugeMetricFamily("fedguard_traffic_share_percent", "Configured percent of live answers by "
                                   "model and version", labels=("model", "version"))
        for name, live in sorted(self.router.live.items()):
            killed.add_metric((name, live.state.kill_mode or ""), 1.0 if live.state.killed else 0.0)
            for version, share in live.state.shares().items():
                shares.add_metric((name, version), share)
        yield killed
        yield shares


class Router:
    """Routes requests among verified versions and keeps up with the registry's deployment state."""

    def __init__(
        self,
        registry: Registry,
        settings: ServingSettings,
        live: dict[str, Live],
        *,
        metrics: CollectorRegistry | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        executor: Executor | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.store = DeploymentStore(registry, settings.environment)
        self.public_key = settings.public_key or registry.public_key_path()
        self.live = live
        self.models: dict[str, ServedModel] = {n: v.stable for n, v in live.items() if v.stable is not None}
        self.metrics = RolloutMetrics(metrics or CollectorRegistry(), self)
        self._monotonic = monotonic
        self._checked = monotonic()
        self._refreshing = threading.Lock()
        self._claims = Claims(lapse=CLAIM_LAPSE_SECONDS)  # a background refresh claimed (claim_refresh), until it ends
        self._cache: dict[tuple[str, int], ServedModel] = {
            (m.name, m.version): m for v in live.values() for m in (v.stable, v.candidate, v.pinned) if m is not None
        }
        self._windows = {name: self._window() for name in live}
        self._served: dict[tuple[str, int, str], Counter] = {}
        self._tainted: set[tuple[str, int]] = set()
        self._taint_marker: tuple[int, int] | None = None  # (newest model_taint id, rows) at the last refresh
        self._unprepared: dict[str, str] = {}  # model -> why on_new_model failed: it answers 503 until a restart
        self.on_new_model: ModelHook | None = None
        """Set by the app once it built the startup models' guards; see :meth:`_install`."""
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedguard-shadow")
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()

    @classmethod
    def open(cls, registry: Registry, settings: ServingSettings, **kwargs: Any) -> Router:
        """Adopt, verify and load every registered model's deployment: all or nothing.

        In the ``default`` environment every registered model is served (one
        never deployed is adopted at its newest version). In a named
        environment (``fedguard serve --env NAME``) only the models deployed
        there are: those promoted to production in it
        (``fedguard models promote NAME:V --to production --env NAME``).

        A model whose adoption governance refuses (tainted, failed gates, or
        a declared policy and no version at ``production`` here) is skipped,
        with an error log line naming it and the promotion to run.

        Raises
        ------
        NotFoundError
            A named environment has no deployment, or governance refused every model.
        SignatureError
            A needed version (stable, candidate or pinned) does not verify.
        StateError
            An artifact or the public key is missing.
        """
        router = cls(registry, settings, {}, **kwargs)
        environment = router.store.environment
        if environment == DEFAULT_ENVIRONMENT:
            records = registry.latest_versions()
            refused = 0
            for record in records:
                try:
                    state = router.store.adopt(record.name, actor=str(actors.service("serve")))
                except GovernanceError as exc:  # one model governance forbids does not stop the others
                    logger.error("not serving %s: %s (promote a version: 'fedguard models promote %s:VERSION "
                                 "--to production --env %s')", record.name, exc, record.name, environment)
                    refused += 1
                    continue
                router._install(router._load(state, strict=True))
            if records and refused == len(records):
                raise NotFoundError(
                    f"no model can be served in environment '{environment}': governance refused every one (see "
                    f"the log); promote one there first: 'fedguard models promote NAME:VERSION --to production "
                    f"--env {environment}'"
                )
            return router
        names = sorted(router.store.revisions())
        if not names:
            raise NotFoundError(
                f"no model is deployed in environment '{environment}'; promote one there first: "
                f"'fedguard models promote NAME:VERSION --to production --env {environment}'"
            )
        for name in names:
            router._install(router._load(router.store.state(name), strict=True))
        return router

    @classmethod
    def for_models(cls, registry: Registry, settings: ServingSettings, models: dict[str, ServedModel],
                   **kwargs: Any) -> Router:
        """A router over already-loaded ``models`` (each stable, never deployed); writes nothing.

        For a :class:`~serving.state.ServingState` built by hand; the first
        refresh picks up any deployment state the registry holds.
        """
        live = {name: Live(DeploymentState(model=name, revision=0, stable_version=m.version), m, None, None)
                for name, m in models.items()}
        return cls(registry, settings, live, **kwargs)

    # -------------------------------------------------------------- routing
    def route(self, name: str, key_id: str, refresh: bool = True) -> Route:
        """Choose the version that answers ``key_id`` for model ``name``.

        ``refresh=False`` is for a caller on the event loop that has already
        started a due :meth:`refresh` in the background (:func:`serving.protocols.v1.routes.guarded_predict`):
        the registry query must not run here, on the loop.

        Raises
        ------
        UnknownModelError
            No model of that name is served here (404).
        ModelKilled
            Its kill switch is engaged, or a needed version failed to verify (503).
        """
        if refresh:
            self.refresh()
        live = self.live.get(name)
        if live is None:
            raise UnknownModelError(f"key {key_id} asked for unserved model {name[:128]!r}")
        if self._unprepared and name in self._unprepared:
            raise ModelKilled(f"{name} is deployed here since startup but its guards could not be built "
                              f"({self._unprepared[name]}); fix the configuration and restart the server")
        state = live.state
        if state.killed:
            if state.kill_mode == "pinned" and live.pinned is not None:
                return Route(self, live.pinned, "pinned")
            killed = ModelWithdrawn if state.kill_reason.startswith(REASON_PREFIX) else ModelKilled
            raise killed(f"{name} is killed ({state.kill_mode}, {state.kill_reason or 'no reason given'})")
        if live.stable is None:
            if (name, state.stable_version) in self._tainted:
                raise ModelWithdrawn(f"{name}:{state.stable_version} is tainted by a consent withdrawal; not served")
            raise ModelKilled(f"{name}:{state.stable_version} did not verify or load; see the log above")
        if live.candidate is not None and state.candidate_mode == "canary" \
                and canary_bucket(key_id, name, state.rollout_id) < state.canary_weight:
            return Route(self, live.candidate, "canary")
        shadow = live.candidate if state.candidate_mode == "shadow" else None
        return Route(self, live.stable, "stable", shadow)

    def names(self) -> frozenset[str]:
        """The models this router holds a deployment of (served, killed or withdrawn): a snapshot, thread-safe."""
        return frozenset(self.live)

    def listed(self) -> list[ServedModel]:
        """The stable version of each model a request can be answered by now, by name (``GET /v1/models``).

        Leaves out a model whose stable version is withdrawn (tainted) or did
        not load, one killed by a consent withdrawal, and one whose guards
        could not be built: listing them would advertise a model that answers
        only 503.
        """
        listed = []
        for name, live in sorted(self.live.items()):
            if live.stable is None or name in self._unprepared:
                continue
            if live.state.killed and live.state.kill_reason.startswith(REASON_PREFIX):
                continue
            listed.append(live.stable)
        return listed

    def answer(
        self, route: Route, batch: np.ndarray, policy: OutputPolicy
    ) -> tuple[dict[str, Any], np.ndarray]:
        model = route.model
        try:
            logits = model.logits(batch)  # one forward pass serves the answer and the monitors
            fields = shape_output(model, batch, policy, logits)
        except FedguardError:
            raise
        except Exception as exc:
            self._outcome(model.name, failed=True)
            raise ModelFailure(f"{model.name}:{model.version} failed to predict: {type(exc).__name__}: {exc}") from exc
        self._outcome(model.name, failed=False)
        served = self._served.get((model.name, model.version, route.role))
        if served is None:  # labels() costs µs per call; the children are few (versions × roles)
            served = self._served[(model.name, model.version, route.role)] = self.metrics.served.labels(
                model.name, str(model.version), route.role)
        served.inc()
        if route.shadow is not None:
            self._mirror(route.shadow, batch, list(fields["predictions"]), model)
        return fields, logits

    # ---------------------------------------------------------- kill switch
    def trip(self, model: str, reason: str, source: str) -> None:
        """Engage ``model``'s kill switch for every replica, audited (e.g. by the drift monitor).

        Pins ``kill_pins[model]`` if configured, else 503. Does nothing if the
        model is killed already; a registry failure is logged, not raised, so
        the caller's request still gets its own answer.
        """
        pin = self.settings.kill_pins.get(model)
        try:
            changed = self.store.trip(model, pin=pin, actor=f"serve:{source}", source=source, reason=reason)
        except FedguardError as exc:
            logger.error("could not trip the kill switch of %s (%s): %s", model, reason, exc)
            return
        if changed is not None:
            self.metrics.trips.labels(model, source).inc()
            logger.error("kill switch of %s tripped by %s: %s (%s)", model, source, reason,
                         f"pinned to version {pin}" if pin is not None else "answering 503")
        self.refresh(force=True)

    def _outcome(self, name: str, failed: bool) -> None:
        window = self._windows.get(name)
        if window is None:
            return
        verdict = window.record(failed, self._monotonic())
        if verdict.trip:
            window.reset()
            self.trip(name, f"{verdict.failures} of the last {verdict.samples} predictions failed "
                            f"({verdict.rate:.0%} >= {self.settings.kill_error_rate:.0%})", "error-rate")

    def _window(self) -> ErrorWindow:
        s = self.settings
        return ErrorWindow(s.kill_error_rate, s.kill_min_requests, s.kill_window_seconds)

    # --------------------------------------------------------------- shadow
    def _mirror(self, shadow: ServedModel, batch: np.ndarray, returned: list[Any], primary: ServedModel) -> None:
        with self._pending_lock:
            if len(self._pending) >= self.settings.shadow_max_pending:
                self.metrics.shadow_dropped.labels(shadow.name, "queue-full").inc()
                return
            future = self._executor.submit(self._compare, shadow, batch, returned, primary)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _compare(self, shadow: ServedModel, batch: np.ndarray, returned: list[Any], primary: ServedModel) -> None:
        try:
            labels = shadow.predict(batch)
        except Exception as exc:  # noqa: BLE001 - a broken candidate must never affect live traffic
            self.metrics.shadow_dropped.labels(shadow.name, "shadow-failed").inc()
            logger.warning("shadow %s:%d failed: %s: %s", shadow.name, shadow.version, type(exc).__name__, exc)
            return
        agreed = sum(1 for a, b in zip(labels, returned, strict=True) if a == b)
        version = str(shadow.version)
        self.metrics.shadow_instances.labels(shadow.name, version).inc(len(labels))
        self.metrics.shadow_agreements.labels(shadow.name, version).inc(agreed)
        logger.info("shadow %s:%d agreed on %d/%d instance(s) with %s:%d", shadow.name, shadow.version, agreed,
                    len(labels), primary.name, primary.version)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until queued shadow predictions are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending or time.monotonic() > deadline:
                return
            pending[0].result(timeout=max(0.0, deadline - time.monotonic()))

    # -------------------------------------------------------------- refresh
    def refresh_due(self) -> bool:
        """Whether the next :meth:`refresh` would read the registry (one clock read and a compare).

        ``False`` while another thread refreshes: :meth:`refresh` would return at
        once, and asking every request meanwhile to hop to the thread pool for
        nothing piles the hops up exactly when the registry is slow.
        """
        if self._refreshing.locked():
            return False
        now = self._monotonic()
        if self._claims.held(_REFRESH, now):
            return False
        elapsed = now - self._checked
        return not 0.0 <= elapsed < self.settings.deploy_refresh_seconds

    def claim_refresh(self) -> bool:
        """Whether the caller should start a background :meth:`refresh` now (due, and nobody else has).

        Called on the event loop by the predict path, which then runs the
        refresh in the thread pool *without* waiting for it: the request that
        happens to find the refresh due is answered from the current state like
        every other, instead of waiting for a registry query (under load, a
        thread hop and the GIL handed back and forth made that request and the
        ones queued behind it wait 4-6 ms every interval, the p99 of
        ``benchmarks/serving.py``). A change then applies within the interval
        plus one query. A claim whose refresh never ran (its event loop closed
        first) lapses after :data:`CLAIM_LAPSE_SECONDS`.
        """
        return self.refresh_due() and self._claims.take(_REFRESH, self._monotonic())

    def refresh(self, force: bool = False) -> None:
        """Re-read deployment revisions and the taint marker if the interval passed (or ``force``).

        Reloads a model whose revision changed, loads one newly deployed in
        this environment, and re-checks the loaded versions against the taint
        table when the marker moved (two cheap queries per interval, on the
        refresh path only, never per request). Only one thread refreshes at a
        time; the others keep the current state rather than wait. A registry
        that cannot be read keeps the last known state (logged): the next due
        request tries again.
        """
        now = self._monotonic()
        elapsed = now - self._checked
        if not force and 0.0 <= elapsed < self.settings.deploy_refresh_seconds:
            self._claims.release(_REFRESH)
            return  # (a clock that stepped back refreshes at once rather than stall)
        if not self._refreshing.acquire(blocking=force):
            return  # the thread refreshing now clears the claim
        try:
            self._checked = now
            revisions = self.store.revisions()
            for name, live in list(self.live.items()):
                if revisions.get(name, live.state.revision) != live.state.revision:
                    self._install(self._load(self.store.state(name), strict=False))
            for name in sorted(revisions.keys() - self.live.keys()):  # deployed here since startup
                logger.warning("model %s is now deployed in environment '%s': loading it", name,
                               self.store.environment)
                self._install(self._load(self.store.state(name), strict=False))
            marker = self._read_taint_marker()
            if marker != self._taint_marker:
                self._taint_marker = marker
                self._drop_tainted()
        except FedguardError as exc:
            logger.error("could not refresh the deployment state: %s", exc)
        finally:
            self._claims.release(_REFRESH)
            self._refreshing.release()

    def _read_taint_marker(self) -> tuple[int, int]:
        """The newest ``model_taint`` id and the row count: moves whenever a version is tainted (or cleared)."""
        with Session(self.registry.engine) as session:
            newest, rows = session.exec(select(func.max(ModelTaint.id), func.count(col(ModelTaint.id)))).one()
        return int(newest or 0), int(rows)

    def _drop_tainted(self) -> None:
        """Stop serving every loaded version that is now tainted (one query), whatever the deployment says.

        The consent step kills or replaces a tainted deployment, which every
        replica then follows through the revision; this check holds even when
        that step never completed, so a replica never keeps answering from a
        version whose lineage holds withdrawn data.
        """
        loaded = {(name, m.version) for name, live in self.live.items()
                  for m in (live.stable, live.candidate, live.pinned) if m is not None}
        if not loaded:
            return
        with Session(self.registry.engine) as session:
            rows = session.exec(
                select(RegisteredModel.name, ModelVersion.version)
                .join(ModelTaint, col(ModelTaint.model_version_id) == col(ModelVersion.id))
                .join(RegisteredModel, col(RegisteredModel.id) == col(ModelVersion.model_id))
                .where(col(RegisteredModel.name).in_(sorted({name for name, _ in loaded})))
            ).all()
        tainted = {(name, int(v)) for name, v in rows} & loaded
        def kept(served: ServedModel | None) -> ServedModel | None:
            return None if served is not None and (served.name, served.version) in tainted else served

        for name, version in sorted(tainted):
            self._tainted.add((name, version))
            self._cache.pop((name, version), None)
            logger.error("no longer serving %s:%d: tainted by a consent withdrawal while served (see "
                         "'fedguard models list --tainted')", name, version)
        for name in sorted({name for name, _ in tainted}):
            live = self.live[name]
            self.live[name] = Live(live.state, kept(live.stable), kept(live.candidate), kept(live.pinned))

    def _install(self, live: Live) -> None:
        """Serve ``live`` for its model; a model served for the first time since startup gets its guards first.

        ``on_new_model`` (the app's hook) builds the per-model state the app
        built at startup; if it fails, the model answers 503 (logged) until
        the server restarts with a configuration that fits it.
        """
        name = live.state.model
        old = self.live.get(name)
        self.live[name] = live
        if live.stable is not None:
            first = name not in self.models
            self.models[name] = live.stable
            if first and self.on_new_model is not None:
                self._prepare(live.stable)
        if name not in self._windows or (old is not None and old.state.stable_version != live.state.stable_version):
            self._windows[name] = self._window()
        if old is not None:
            logger.warning("deployment of %s is now revision %d: %s%s", name, live.state.revision,
                           live.state.shares() or "503", " (killed)" if live.state.killed else "")

    def _prepare(self, model: ServedModel) -> None:
        hook = self.on_new_model
        assert hook is not None
        try:
            hook(model)
        except Exception as exc:  # noqa: BLE001 - the model answers 503; the other models are unaffected
            self._unprepared[model.name] = f"{type(exc).__name__}: {exc}"
            self.models.pop(model.name, None)
            logger.error("not serving %s:%d, deployed since startup: its guards could not be built (%s: %s); "
                         "restart the server to serve it", model.name, model.version, type(exc).__name__, exc)
            return
        self._unprepared.pop(model.name, None)
        logger.warning("now serving %s:%d, deployed since startup", model.name, model.version)

    def _load(self, state: DeploymentState, strict: bool) -> Live:
        tainted = ConsentStore(self.registry).tainted_versions(state.model)

        def get(version: int | None) -> ServedModel | None:
            if version is None:
                return None
            if version in tainted:  # never served, even where the deployment still names it
                self._tainted.add((state.model, version))
                logger.error("not serving %s:%d: tainted by a consent withdrawal (see 'fedguard models list "
                             "--tainted')", state.model, version)
                return None
            cached = self._cache.get((state.model, version))
            if cached is not None:
                return cached
            try:
                model = load_version(self.registry.get_version(state.model, version), self.public_key,
                                     threads=self.settings.onnx_threads)
            except Exception as exc:  # a replica keeps serving what verified; the log says what did not
                if strict:
                    raise
                logger.error("not serving %s:%d: %s", state.model, version, exc)
                return None
            self._cache[(state.model, version)] = model
            return model

        return Live(state, get(state.stable_version), get(state.candidate_version), get(state.pinned_version))
