"""Configured per-feature value ranges: the operator's bounds on what a model is asked.

The signed feature schema fixes *how many* values an instance has and that
each is a finite number (:meth:`serving.models.ServedModel.to_batch`). An
operator may narrow that further, per model and per feature, with
``FEDGUARD_SERVE_FEATURE_RANGES``::

    {"demo": {"f0": [0, 50], "f3": [null, 10]}}

``[min, max]`` are inclusive; ``null`` leaves that side open. A value outside
its range is refused with 422, and the message names the instance, the
feature and the range, never the value (error messages reach the operator's
log, which must not hold inputs).

Bounds are checked on the float32 batch the model receives, with the bounds
themselves rounded to float32, so "inside the range" means inside it as the
model sees it.

Notes
-----
Ranges are a cheap guard against two things: garbage that a schema alone lets
through (a negative radius, a unit mix-up of 1000×), and probes far outside
the training distribution, which model-extraction attacks use to map decision
boundaries (Tramèr et al., "Stealing Machine Learning Models via Prediction
APIs", USENIX Security 2016). They are no substitute for the per-key budgets
of :mod:`serving.guards.quotas`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lifecycle.errors import ConfigurationError, InputValidationError
from serving.models import ServedModel

Bound = float | None
RangeConfig = Mapping[str, Mapping[str, tuple[Bound, Bound]]]


def _show(bound: Bound, open_side: str) -> str:
    if bound is None:
        return open_side
    return f"{bound:g}"


@dataclass(frozen=True)
class ModelRanges:
    """The configured bounds of one model, as float32 arrays over its features.

    ``low`` holds ``-inf`` and ``high`` ``+inf`` where a feature has no bound.
    """

    model: str
    features: tuple[str, ...]
    low: np.ndarray
    high: np.ndarray
    bounds: dict[int, tuple[Bound, Bound]]

    def check(self, batch: np.ndarray) -> None:
        """Refuse ``batch`` if a value lies outside its feature's range.

        Raises
        ------
        InputValidationError
            Naming the first offending instance, its feature and the range.
        """
        bad = (batch < self.low) | (batch > self.high)
        if not bool(bad.any()):
            return
        i, j = (int(index) for index in np.argwhere(bad)[0])
        low, high = self.bounds[j]
        raise InputValidationError(
            f"instance {i} value {j} (feature '{self.features[j]}') is outside its configured range "
            f"[{_show(low, '-inf')}, {_show(high, 'inf')}]; send values inside it"
        )


@dataclass(frozen=True)
class FeatureRanges:
    """Every served model's configured ranges; a model without any is not checked."""

    by_model: dict[str, ModelRanges] = field(default_factory=dict)

    def check(self, model: str, batch: np.ndarray) -> None:
        """Refuse ``batch`` for ``model`` if a value lies outside its configured range.

        Raises
        ------
        InputValidationError
            Naming the instance, the feature and the range.
        """
        ranges = self.by_model.get(model)
        if ranges is not None:
            ranges.check(batch)

    def add(self, config: RangeConfig, model: ServedModel) -> None:
        """Compile ``model``'s configured ranges, if any (a model served only since startup).

        Raises
        ------
        ConfigurationError
            The configuration names a feature the model does not have.
        """
        features = config.get(model.name)
        if features:
            self.by_model[model.name] = _model_ranges(model, features)


def _model_ranges(model: ServedModel, config: Mapping[str, tuple[Bound, Bound]]) -> ModelRanges:
    features = tuple(model.schema.features)
    low = np.full((len(features),), -math.inf, dtype=np.float32)
    high = np.full((len(features),), math.inf, dtype=np.float32)
    bounds: dict[int, tuple[Bound, Bound]] = {}
    for feature, (lo, hi) in config.items():
        if feature not in features:
            raise ConfigurationError(
                f"feature_ranges.{model.name} names feature {feature!r}, which model '{model.name}' does not "
                f"have (features: {model.describe_features()}); fix FEDGUARD_SERVE_FEATURE_RANGES"
            )
        j = features.index(feature)
        if lo is not None:
            low[j] = lo
        if hi is not None:
            high[j] = hi
        bounds[j] = (lo, hi)
    return ModelRanges(model.name, features, low, high, bounds)


def build_ranges(config: RangeConfig, models: Mapping[str, ServedModel]) -> FeatureRanges:
    """Compile ``config`` (model → feature → ``(min, max)``) against the served models.

    Raises
    ------
    ConfigurationError
        A model that is not served, or a feature the model does not have:
        a typo must stop the server, not silently disable a guard.
    """
    by_model: dict[str, ModelRanges] = {}
    for name, features in config.items():
        model = models.get(name)
        if model is None:
            raise ConfigurationError(
                f"feature_ranges names model {name!r}, which is not served (served: "
                f"{', '.join(sorted(models)) or 'none'}); fix FEDGUARD_SERVE_FEATURE_RANGES"
            )
        if features:
            by_model[name] = _model_ranges(model, features)
    return FeatureRanges(by_model)
