"""Extraction detection: per-key query signals; a key that looks like an extractor is throttled.

For every (API key, model) pair the guard keeps, over the last
``extraction_window_seconds``, three signals of the instances it answered:

``rate``
    instances per second, averaged over the window;
``cells``
    distinct cells of a coarse grid visited: each feature cut into
    ``extraction_grid_bins`` quantile bins of the training reference, so a
    cell is a region of the input space, not a value;
``boundary``
    the share of instances whose top-two class-probability margin is below
    ``extraction_boundary_margin`` (computed server-side, whatever the
    output mode returns).

Once the window holds ``extraction_min_queries`` instances and at least
``extraction_min_signals`` of them exceed their thresholds, the key is
throttled through the quota store (``extraction_throttle_rate`` and
``_burst`` on every model, for ``extraction_throttle_seconds``; shared by
replicas with the Redis store), an ``apikey.throttled`` audit event is written
and a WARNING logged. The guard keeps cell ids and margins flags, never input
values; a key's memory is bounded by :data:`MAX_TRACKED` instances.

Answered batches are held and added to the windows together, once
:data:`HOLD_INSTANCES` instances wait or the oldest has waited
:data:`HOLD_SECONDS` (by the app's clock, checked at each answer), and
before any read of the signals: the dozen numpy calls that turn a batch into
cells and margins, and the softmax they read, then run once per hold instead
of once per request (each costs microseconds of dispatch on a one-instance
batch; ``benchmarks/serving.py``). The price is a bounded delay: a key is
throttled at most ``HOLD_INSTANCES - 1`` answered instances (of all keys) or
``HOLD_SECONDS`` later than if every answer were added at once, a few percent
of ``extraction_min_queries`` at the defaults (1000), and the daily budget of
:mod:`serving.guards.quotas` still bounds the total.

Notes
-----
Model extraction needs many queries spread over the input space (Tramèr et
al., "Stealing Machine Learning Models via Prediction APIs", USENIX Security
2016), and learning-based extractors concentrate queries near the decision
boundary, where labels are most informative (Papernot et al., "Practical
Black-Box Attacks against Machine Learning", AsiaCCS 2017; active learning in
Chandrasekaran et al., USENIX Security 2020). Kesarwani et al. ("Model
Extraction Warning in MLaaS Paradigm", ACSAC 2018) monitor per-user coverage
of the feature space; PRADA (Juuti et al., EuroS&P 2019) flags per-client
query distributions that deviate from natural ones. A legitimate client that
scores its own population revisits the same regions at a steady rate; an
extractor that sweeps the space visits new cells with almost every query.
Requiring two signals keeps one noisy signal (e.g. an untrained model whose
every answer is near the boundary) from throttling honest keys. These are
heuristics: they raise the cost of extraction (fewer answers per hour), they
do not make it impossible; the daily budget of :mod:`serving.guards.quotas` bounds
the total.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import SQLAlchemyError

from lifecycle import audit
from lifecycle.bom.reference import ReferenceStats, padded_edges
from lifecycle.errors import FedguardError
from lifecycle.registry import Registry
from serving import logger
from serving.guards.quotas import QuotaStore
from serving.models import ServedModel
from serving.runtime import softmax64
from serving.settings import ServingSettings

MAX_TRACKED = 50_000
SIGNALS = ("rate", "cells", "boundary")
HOLD_INSTANCES = 64
"""Answered instances held before they are added to the windows together (see the module docstring)."""
HOLD_SECONDS = 0.05
"""The longest an answered instance is held, by the app's clock, when further answers come."""


@dataclass(frozen=True)
class ExtractionSignals:
    """One (key, model) pair's signals over the window, and which crossed their thresholds."""

    key_id: str
    model: str
    instances: int
    rate: float
    cells: int
    boundary_share: float
    crossed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "instances": self.instances, "rate": round(self.rate, 4),
                "cells": self.cells, "boundary_share": round(self.boundary_share, 4), "crossed": list(self.crossed)}


def coarse_edges(reference: ReferenceStats, bins: int) -> np.ndarray:
    """About ``bins`` quantile bins per feature, picked from the reference's finer edges (padded)."""
    picked = []
    for row in reference.edges:
        fine = len(row) + 1
        if fine <= bins:
            picked.append(row)
            continue
        positions = sorted({min(len(row) - 1, max(0, round(k * fine / bins) - 1)) for k in range(1, bins)})
        picked.append(tuple(row[p] for p in positions))
    return padded_edges(tuple(picked))


def cell_radix(grid: np.ndarray) -> np.ndarray:
    """Weights that turn a row of bin indices into one cell id (``index @ weights``, uint64).

    Mixed radix ``(edges + 1)^j``: distinct cells get distinct ids while the grid
    has fewer than 2^64 cells (4 bins over 30 features: 2^60); past that the
    products wrap modulo 2^64, a polynomial hash whose collisions (about
    ``n² / 2^65`` among ``n`` cells) can only make the coverage signal undercount.
    """
    base = np.uint64(grid.shape[1] + 1)
    weights = np.ones(grid.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(1, grid.shape[0]):
            weights[j] = weights[j - 1] * base
    return weights


def _edge_weights(grid: np.ndarray, radix: np.ndarray) -> np.ndarray:
    """Each padded edge's weight in a cell id: its feature's radix (``grid`` is features × edges)."""
    return np.repeat(radix, grid.shape[1])


@dataclass(frozen=True)
class _Answered:
    """One answered batch, held until the windows are updated."""

    key_id: str
    model: ServedModel
    batch: np.ndarray
    logits: np.ndarray | None
    now: float


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@dataclass
class _PairWindow:
    """Answered instances of one (key, model) pair: (time, cell id, near-boundary) in time order."""

    entries: deque[tuple[float, int, bool]] = field(default_factory=deque)
    cells: dict[int, int] = field(default_factory=dict)
    near: int = 0

    def add(self, now: float, cells: list[int], near: list[bool]) -> None:
        for cell, is_near in zip(cells, near, strict=True):
            self.entries.append((now, cell, is_near))
            self.cells[cell] = self.cells.get(cell, 0) + 1
            self.near += is_near
        while len(self.entries) > MAX_TRACKED:
            self._drop()

    def expire(self, before: float) -> None:
        while self.entries and self.entries[0][0] <= before:
            self._drop()

    def _drop(self) -> None:
        _, cell, is_near = self.entries.popleft()
        left = self.cells[cell] - 1
        if left:
            self.cells[cell] = left
        else:
            del self.cells[cell]
        self.near -= is_near


class ExtractionGuard:
    """Per-key extraction signals of one app, acting through ``quotas`` and the ``registry``'s audit trail.

    Built disabled (``ExtractionGuard()``, what :class:`~serving.state.ServingState`
    defaults to): :meth:`observe` then does nothing.
    """

    def __init__(
        self,
        settings: ServingSettings | None = None,
        quotas: QuotaStore | None = None,
        registry: Registry | None = None,
        metrics_registry: CollectorRegistry | None = None,
        models: dict[str, ServedModel] | None = None,
    ) -> None:
        self.settings = settings or ServingSettings.model_construct()  # defaults, not the environment
        self.quotas, self.registry = quotas, registry
        self.enabled = self.settings.extraction_guard and quotas is not None
        self.grids = {name: coarse_edges(m.reference, self.settings.extraction_grid_bins)
                      for name, m in (models or {}).items() if m.reference is not None}
        self._radix = {name: cell_radix(grid) for name, grid in self.grids.items()}
        self._weights = {name: _edge_weights(grid, radix) for (name, grid), radix in
                         zip(self.grids.items(), self._radix.values(), strict=True)}
        self.windows: dict[tuple[str, str], _PairWindow] = {}
        self.throttled_until: dict[str, float] = {}
        self.lock = threading.Lock()
        self._held: list[_Answered] = []
        self._held_instances = 0
        self.throttles = Counter("fedguard_extraction_throttles", "API keys throttled by the extraction guard",
                                 ("model",), registry=metrics_registry or CollectorRegistry())

    def add(self, model: ServedModel) -> None:
        """Build ``model``'s coarse grid (a model served only since startup; none without reference statistics)."""
        if model.reference is not None:
            grid = coarse_edges(model.reference, self.settings.extraction_grid_bins)
            self._radix[model.name] = radix = cell_radix(grid)
            self._weights[model.name] = _edge_weights(grid, radix)
            self.grids[model.name] = grid

    def observe(
        self, key_id: str, model: ServedModel, batch: np.ndarray, now: float, logits: np.ndarray | None = None,
    ) -> ExtractionSignals | None:
        """Hold an answered ``batch``; add what is held to the windows when due, throttling keys that cross.

        ``logits`` are the model's outputs for ``batch`` when the route has
        them; otherwise the model is run here. Returns the pair's signals when
        this answer added the held batches, else ``None``.
        """
        if not self.enabled:
            return None
        with self.lock:
            self._held.append(_Answered(key_id, model, batch, logits, now))
            self._held_instances += len(batch)
            if self._held_instances < HOLD_INSTANCES and now - self._held[0].now < HOLD_SECONDS:
                return None
            held = self._take_held()
        return self._add(held).get((key_id, model.name))

    def signals(self, key_id: str, model: str, now: float) -> ExtractionSignals | None:
        """The pair's current signals, held answers included (``None`` if the key never queried ``model`` here)."""
        with self.lock:
            held = self._take_held()
        self._add(held)
        with self.lock:
            window = self.windows.get((key_id, model))
            if window is None:
                return None
            window.expire(now - self.settings.extraction_window_seconds)
            return self._signals(key_id, model, window)

    def _take_held(self) -> list[_Answered]:
        """Everything held, now the caller's to add (with ``self.lock`` held)."""
        held, self._held, self._held_instances = self._held, [], 0
        return held

    def _add(self, held: list[_Answered]) -> dict[tuple[str, str], ExtractionSignals]:
        """Add ``held`` answers to their pairs' windows (numpy once per model version); throttle who crosses."""
        groups: dict[int, list[_Answered]] = {}
        for answered in held:
            groups.setdefault(id(answered.model), []).append(answered)
        features = [(items, *self._features(items[0].model, _stack([a.batch for a in items]),
                                             _stack([a.model.logits(a.batch) if a.logits is None else a.logits
                                                     for a in items])))
                    for items in groups.values()]
        found: dict[tuple[str, str], ExtractionSignals] = {}
        acting: list[tuple[ExtractionSignals, float]] = []
        with self.lock:
            touched: dict[tuple[str, str], float] = {}
            for items, cells, near in features:
                start = 0
                for answered in items:  # in arrival order, so each window stays in time order
                    pair, end = (answered.key_id, answered.model.name), start + len(answered.batch)
                    window = self.windows.get(pair)
                    if window is None:  # (not setdefault: that would build a window on every answer)
                        window = self.windows[pair] = _PairWindow()
                    window.add(answered.now, cells[start:end], near[start:end])
                    touched[pair] = max(answered.now, touched.get(pair, answered.now))
                    start = end
            for (key_id, name), now in touched.items():
                window = self.windows[(key_id, name)]
                window.expire(now - self.settings.extraction_window_seconds)
                signals = found[(key_id, name)] = self._signals(key_id, name, window)
                if (len(window.entries) >= self.settings.extraction_min_queries
                        and len(signals.crossed) >= self.settings.extraction_min_signals
                        and self.throttled_until.get(key_id, float("-inf")) <= now):
                    self.throttled_until[key_id] = now + self.settings.extraction_throttle_seconds
                    acting.append((signals, now))
        for signals, now in acting:
            self._throttle(signals, now)
        return found

    def _features(self, model: ServedModel, batch: np.ndarray, logits: np.ndarray) -> tuple[list[int], list[bool]]:
        # numpy on the whole batch: a per-row Python hash costs more (benchmarks/serving.py).
        scores = softmax64(logits)
        if scores.shape[1] == 2:
            margin = np.abs(scores[:, 0] - scores[:, 1])
        else:
            top = np.partition(scores, scores.shape[1] - 2, axis=1)[:, -2:]
            margin = top[:, 1] - top[:, 0]
        near: list[bool] = (margin < self.settings.extraction_boundary_margin).tolist()
        grid = self.grids.get(model.name)
        if grid is None:  # no reference: every instance in one cell, the coverage signal stays quiet
            return [0] * len(near), near
        # float32 values against float64 edges: numpy compares them exactly, as float64. The cell id
        # ``bin_indices(batch, grid) @ radix`` in one product: every edge a value reaches adds its
        # feature's radix (the same sum modulo 2^64, two numpy calls fewer per request).
        above = batch[:, :, None] >= grid[None, :, :]
        return (above.reshape(len(batch), -1) @ self._weights[model.name]).tolist(), near

    def _signals(self, key_id: str, model: str, window: _PairWindow) -> ExtractionSignals:
        s = self.settings
        n = len(window.entries)
        rate = n / s.extraction_window_seconds
        share = window.near / n if n else 0.0
        values = {"rate": rate > s.extraction_max_rate, "cells": len(window.cells) > s.extraction_max_cells,
                  "boundary": share > s.extraction_max_boundary_share}
        return ExtractionSignals(key_id, model, n, rate, len(window.cells), share,
                                 tuple(name for name in SIGNALS if values[name]))

    def _throttle(self, signals: ExtractionSignals, now: float) -> None:
        s = self.settings
        until = now + s.extraction_throttle_seconds
        assert self.quotas is not None
        self.quotas.throttle(signals.key_id, s.extraction_throttle_rate, s.extraction_throttle_burst, until)
        self.throttles.labels(signals.model).inc()
        logger.warning("extraction guard: key %s throttled to %.3g req/s until %s on signals %s of model %s "
                       "(%d instances, %d cells, %.0f%% near the boundary)", signals.key_id,
                       s.extraction_throttle_rate, datetime.fromtimestamp(until, UTC).isoformat(),
                       ",".join(signals.crossed), signals.model, signals.instances, signals.cells,
                       100 * signals.boundary_share)
        details = {**signals.to_dict(), "rate_limit": s.extraction_throttle_rate,
                   "burst": s.extraction_throttle_burst, "until": datetime.fromtimestamp(until, UTC).isoformat()}
        if self.registry is not None:
            try:
                with self.registry.transaction() as session:
                    audit.record(session, "apikey.throttled", actor="serving:extraction-guard",
                                 subject=signals.key_id, details=details)
            except (SQLAlchemyError, FedguardError):  # the throttle holds; the operator must see the gap
                logger.exception("extraction guard: could not audit the throttle of key %s", signals.key_id)
