"""Per-model drift monitors: live windows of bin counts scored against the training reference.

Each served model whose BOM carries reference statistics gets a
:class:`ModelDrift`: every answered predict request adds its instances to a
live window *as bin counts* over the reference's edges (never the values),
and the window is scored per feature, and on the predicted-class
distribution, with PSI and the binned KS distance
(:mod:`serving.drift.statistics`).

The window is about the last ``drift_window`` instances: ten blocks of a
tenth each; when the newest block fills up, the oldest is dropped, so the
window holds between nine and ten blocks' worth (plus at most one request's
batch). Memory per model is ``blocks × features × bins`` integers, whatever
the traffic.

When the alert state turns on (some score over its threshold, once the
window holds ``drift_min_instances``), the monitor logs one WARNING naming the
model and the features, counts the alert in ``fedguard_drift_alerts_total``
and calls every callback in :attr:`DriftMonitors.on_drift_alert` with the
model's name and the :class:`DriftReport` (the kill switch hooks in there).
It logs once more, at INFO, when the state turns off again. The window is
scored each time about 3% of it is new (every request carrying that many),
and the latest scores are read into the ``fedguard_drift_psi``/``_ks``/``_alert``
gauges when ``/metrics`` is scraped, so the predict path sets no gauge.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lifecycle.bom.reference import ReferenceStats, bin_indices, padded_edges
from serving import logger
from serving.drift.statistics import Baseline
from serving.models import ServedModel
from serving.settings import ServingSettings

BLOCKS = 10
PREDICTION = "<prediction>"


@dataclass(frozen=True)
class FeatureDrift:
    """Scores of one feature (or of the predicted class) in the current window."""

    name: str
    psi: float
    ks: float
    alert: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "psi": self.psi, "ks": self.ks, "alert": self.alert}


@dataclass(frozen=True)
class DriftReport:
    """A model's drift state: what ``GET /v1/models/{name}/drift`` returns and callbacks receive."""

    model: str
    version: int
    status: str  # "no-reference", "warming-up", "ok" or "alert"
    window: int
    min_instances: int
    psi_threshold: float
    ks_threshold: float
    features: tuple[FeatureDrift, ...] = ()
    prediction: FeatureDrift | None = None
    alerts: int = 0

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    @property
    def drifted(self) -> tuple[str, ...]:
        """Names of the features (and ``<prediction>``) over a threshold."""
        scored = [*self.features, *([self.prediction] if self.prediction else [])]
        return tuple(f.name for f in scored if f.alert)

    def summary(self) -> str:
        """One line for logs and audit reasons (names only, no values of any input)."""
        worst = max((*self.features, *([self.prediction] if self.prediction else [])),
                    key=lambda f: f.psi, default=None)
        top = f"; max PSI {worst.psi:.3f} on '{worst.name}'" if worst else ""
        return f"drift on {self.model}:{self.version} in {', '.join(self.drifted) or 'nothing'}{top}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "version": self.version, "status": self.status, "alert": self.alert,
            "window": self.window, "min_instances": self.min_instances,
            "thresholds": {"psi": self.psi_threshold, "ks": self.ks_threshold},
            "drifted": list(self.drifted), "alerts": self.alerts,
            "features": [f.to_dict() for f in self.features],
            "prediction": self.prediction.to_dict() if self.prediction else None,
        }


DriftCallback = Callable[[str, DriftReport], None]


@dataclass(frozen=True)
class _Scores:
    """One scoring of a window, as arrays (the report is built from them when read)."""

    psi: np.ndarray
    ks: np.ndarray
    over: np.ndarray
    psi_class: float
    ks_class: float
    over_class: bool

    @property
    def alert(self) -> bool:
        return self.over_class or bool(self.over.any())


@dataclass
class _Window:
    """Blocks of bin counts (features × bins, and classes); the closed blocks' sums kept incrementally.

    A request adds to the open block only; :attr:`total` (read when the window
    is scored, every ~3% of it) adds the open block to the closed blocks' sum.
    """

    block_size: int
    shape: tuple[int, int]
    classes: int
    blocks: deque[tuple[np.ndarray, np.ndarray, int]] = field(default_factory=deque)
    current: tuple[np.ndarray, np.ndarray, int] | None = None
    closed: np.ndarray = field(init=False)
    closed_classes: np.ndarray = field(init=False)
    size: int = 0

    def __post_init__(self) -> None:
        self.closed = np.zeros(self.shape, dtype=np.int64)
        self.closed_classes = np.zeros(self.classes, dtype=np.int64)
        self.current = self._empty()

    @property
    def total(self) -> np.ndarray:
        assert self.current is not None
        total: np.ndarray = self.closed + self.current[0]
        return total

    @property
    def total_classes(self) -> np.ndarray:
        assert self.current is not None
        total: np.ndarray = self.closed_classes + self.current[1]
        return total

    def _empty(self) -> tuple[np.ndarray, np.ndarray, int]:
        return np.zeros(self.shape, dtype=np.int64), np.zeros(self.classes, dtype=np.int64), 0

    def add(self, counts: np.ndarray, classes: np.ndarray, n: int) -> None:
        assert self.current is not None
        block, block_classes, seen = self.current
        block += counts
        block_classes += classes
        self.size += n
        self.current = (block, block_classes, seen + n)
        if seen + n >= self.block_size:
            self.blocks.append(self.current)
            self.closed += block
            self.closed_classes += block_classes
            self.current = self._empty()
            if len(self.blocks) >= BLOCKS:
                old, old_classes, old_n = self.blocks.popleft()
                self.closed -= old
                self.closed_classes -= old_classes
                self.size -= old_n


class ModelDrift:
    """The drift monitor of one served model (thread-safe: handlers run in a thread pool)."""

    def __init__(self, model: ServedModel, reference: ReferenceStats, settings: ServingSettings) -> None:
        self.model, self.reference, self.settings = model, reference, settings
        self.padded = padded_edges(reference.edges)
        width = self.padded.shape[1] + 1
        self.mask = np.zeros((len(reference.edges), width), dtype=bool)
        self.ref_counts = np.zeros((len(reference.edges), width), dtype=np.int64)
        for j, row in enumerate(reference.counts):
            self.mask[j, : len(row)] = True
            self.ref_counts[j, : len(row)] = row
        self.offsets = (np.arange(len(reference.edges)) * width)[None, :]
        self.ref_classes = np.asarray(reference.predictions, dtype=np.int64)
        self._features_baseline = Baseline(self.ref_counts, self.mask)  # scored against many times
        self._classes_baseline = Baseline(self.ref_classes)
        self.window = _Window(max(1, settings.drift_window // BLOCKS), self.ref_counts.shape, len(self.ref_classes))
        self.lock = threading.Lock()
        self.alerting = False
        self.alerts = 0
        # Score every ~3% of the window: scoring 30 features costs ~0.1 ms; every 1% (10 instances by
        # default) it was 5% of a one-instance request's CPU (benchmarks/serving.py), and an alert on a
        # window of 1000 still comes within 31 answers of the instance that tips it.
        self.check_every = max(1, settings.drift_window // 32)
        self.pending = 0
        self._held: list[tuple[np.ndarray, np.ndarray]] = []  # (values, model outputs) not yet binned
        # The latest scores, as numbers; the DriftReport is built from them only when read
        # (``last``): building 31 frozen dataclasses costs ~50 µs, scoring happens every ~3%
        # of the window, and the report is read by /metrics, the drift route and an alert.
        self._scored: tuple[int, _Scores | None] = (0, None)
        self._last: DriftReport | None = None

    @property
    def last(self) -> DriftReport:
        """The report of the latest scoring (``warming-up`` before the window holds enough)."""
        with self.lock:
            if self._last is None:
                self._last = self._build(*self._scored)
            return self._last

    def observe(self, batch: np.ndarray, scores: np.ndarray | None = None) -> tuple[DriftReport, bool]:
        """Add ``batch`` to the window; return the new report and whether the alert just turned on.

        ``scores`` are the model's outputs for ``batch`` when the caller has
        them (the predict route does); otherwise the model is run here.
        """
        raised = self.add(batch, scores)
        return self.last, raised

    def add(self, batch: np.ndarray, scores: np.ndarray | None = None) -> bool:
        """As :meth:`observe`, without building the report: whether the alert just turned on.

        Instances are held until the next scoring point (every ``check_every``
        instances) and binned together there: the window is only read when it
        is scored, so what is scored is the same, and the dozen numpy calls of
        binning run once per scoring instead of once per request (each costs
        microseconds of dispatch on a request-sized batch, ``benchmarks/serving.py``).
        """
        values = batch
        outputs = self.model.logits(batch) if scores is None else scores
        with self.lock:
            self._held.append((values, outputs))
            self.pending += len(values)
            if self.pending < self.check_every:
                return False
            self.pending = 0
            self._bin_held()
            scored = self._score()
            alert = scored is not None and scored.alert
            raised = alert and not self.alerting
            if raised:
                self.alerts += 1
            elif self.alerting and not alert:
                logger.info("drift alert on model %s cleared", self.model.name)
            self.alerting = alert
            self._scored = (self.window.size, scored)
            self._last = None
        return raised

    def _bin_held(self) -> None:
        """Add the held instances to the window (with ``self.lock`` held)."""
        held, self._held = self._held, []
        values = held[0][0] if len(held) == 1 else np.concatenate([v for v, _ in held])
        outputs = held[0][1] if len(held) == 1 else np.concatenate([o for _, o in held])
        # float32 values against float64 edges compare exactly, as float64.
        index = bin_indices(values, self.padded) + self.offsets
        counts = np.bincount(index.ravel(), minlength=self.ref_counts.size).reshape(self.ref_counts.shape)
        classes = np.bincount(outputs.argmax(axis=1), minlength=len(self.ref_classes))[: len(self.ref_classes)]
        self.window.add(counts, classes, len(values))

    def _score(self) -> _Scores | None:
        if self.window.size < self.settings.drift_min_instances:
            return None
        s = self.settings
        total, total_classes = self.window.total, self.window.total_classes
        psi_f = self._features_baseline.psi(total)
        ks_f = self._features_baseline.ks(total)
        psi_c = float(self._classes_baseline.psi(total_classes)[0])
        ks_c = float(self._classes_baseline.ks(total_classes)[0])
        over = (psi_f > s.drift_psi_threshold) | (ks_f > s.drift_ks_threshold)
        return _Scores(psi_f, ks_f, over, psi_c, ks_c, self._over(psi_c, ks_c))

    def _build(self, size: int, scored: _Scores | None) -> DriftReport:
        if scored is None:
            return self._report("warming-up", size=size)
        features = tuple(
            FeatureDrift(name, p, k, o)
            for name, p, k, o in zip(self.reference.features, scored.psi.tolist(), scored.ks.tolist(),
                                     scored.over.tolist(), strict=True)
        )
        prediction = FeatureDrift(PREDICTION, scored.psi_class, scored.ks_class, scored.over_class)
        return self._report("alert" if scored.alert else "ok", features, prediction, size=size)

    def _over(self, psi_value: float, ks_value: float) -> bool:
        return psi_value > self.settings.drift_psi_threshold or ks_value > self.settings.drift_ks_threshold

    def _report(self, status: str, features: tuple[FeatureDrift, ...] = (),
                prediction: FeatureDrift | None = None, *, size: int) -> DriftReport:
        s = self.settings
        return DriftReport(self.model.name, self.model.version, status, size, s.drift_min_instances,
                           s.drift_psi_threshold, s.drift_ks_threshold, features, prediction, self.alerts)


class DriftMonitors:
    """The drift monitors of one app, by model name, with their metrics and alert callbacks.

    Attributes
    ----------
    on_drift_alert
        Called as ``callback(model_name, report)`` each time a model's alert
        turns on; an exception in one is logged and does not stop the others
        or the request.
    """

    def __init__(self, settings: ServingSettings | None = None, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings or ServingSettings.model_construct()  # defaults, not the environment
        self.monitors: dict[str, ModelDrift] = {}
        self.no_reference: dict[str, ServedModel] = {}
        self.on_drift_alert: list[DriftCallback] = []
        self.registry = registry or CollectorRegistry()
        self.registry.register(_ScoreCollector(self))
        self.alert_counter = Counter("fedguard_drift_alerts", "Times a model's drift alert turned on",
                                     ("model",), registry=self.registry)

    def add(self, model: ServedModel) -> None:
        """Monitor ``model`` (a model without reference statistics is listed but not scored)."""
        if model.reference is None:
            logger.warning("model %s:%d has no reference statistics in its BOM; drift is not monitored",
                           model.name, model.version)
            self.no_reference[model.name] = model
            return
        self.monitors[model.name] = ModelDrift(model, model.reference, self.settings)
        self.alert_counter.labels(model.name)

    def observe(self, model: ServedModel, batch: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Score ``batch`` of answered instances against ``model``'s reference (no-op without one)."""
        monitor = self.monitors.get(model.name)
        if monitor is None:
            return
        if monitor.add(batch, scores):
            self._alert(monitor.last)

    def report(self, model: ServedModel) -> DriftReport:
        """The current state of ``model``'s monitor."""
        monitor = self.monitors.get(model.name)
        if monitor is not None:
            return monitor.last
        s = self.settings
        return DriftReport(model.name, model.version, "no-reference", 0, s.drift_min_instances,
                           s.drift_psi_threshold, s.drift_ks_threshold)

    def _alert(self, report: DriftReport) -> None:
        self.alert_counter.labels(report.model).inc()
        logger.warning("drift alert on model %s:%d: %d instance(s) in window; over PSI %.3g or KS %.3g in %s",
                       report.model, report.version, report.window, report.psi_threshold,
                       report.ks_threshold, ", ".join(report.drifted))
        for callback in list(self.on_drift_alert):
            try:
                callback(report.model, report)
            except Exception:  # noqa: BLE001 - logged with its traceback: a broken hook must not fail the request
                logger.exception("drift alert callback %r failed for model %s", callback, report.model)


class _ScoreCollector(Collector):
    """Exports the latest scores when ``/metrics`` is scraped, so the predict path sets no gauge."""

    def __init__(self, monitors: DriftMonitors) -> None:
        self.monitors = monitors

    def collect(self) -> Iterator[Metric]:
        psi_family = GaugeMetricFamily("fedguard_drift_psi", "PSI of the live window against the training "
                                       "reference", labels=("model", "feature"))
        ks_family = GaugeMetricFamily("fedguard_drift_ks", "Binned Kolmogorov-Smirnov distance of the live "
                                      "window from the training reference", labels=("model", "feature"))
        alert_family = GaugeMetricFamily("fedguard_drift_alert", "1 while a model's drift alert is on",
                                         labels=("model",))
        for name, monitor in sorted(self.monitors.monitors.items()):
            report = monitor.last
            for scored in (*report.features, *([report.prediction] if report.prediction else [])):
                psi_family.add_metric((name, scored.name), scored.psi)
                ks_family.add_metric((name, scored.name), scored.ks)
            alert_family.add_metric((name,), 1.0 if report.alert else 0.0)
        yield from (psi_family, ks_family, alert_family)
