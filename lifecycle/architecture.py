"""Model architectures fedguard can build from the description in an ML-BOM.

The architecture lives in ``lifecycle`` because every stage needs it: sites
train it, the coordinator aggregates and watermarks it, serving rebuilds it
from ``bom.json`` + ``weights.safetensors`` without any pickled code object.
Feature standardization is a layer with fixed buffers, so a served model takes
raw features and its scaling travels, signed, with the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from lifecycle.errors import ConfigurationError

TRAINING_DEVICES = ("cpu", "cuda", "auto")
"""Where a site trains its copy (``client.device``): the run's ``site-device`` and a site's ``device``."""


class Standardize(nn.Module):
    """``(x - mean) / scale`` with buffers, not parameters: DP-SGD never touches them."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: kind and layer sizes."""

    in_features: int
    num_classes: int
    hidden: tuple[int, ...] = (32,)
    kind: str = "mlp"

    def __post_init__(self) -> None:
        if self.kind != "mlp":
            raise ConfigurationError(f"unknown model kind '{self.kind}'; fedguard builds 'mlp'")
        if self.in_features < 1 or self.num_classes < 2 or any(h < 1 for h in self.hidden):
            raise ConfigurationError(
                f"invalid model sizes (in={self.in_features}, hidden={self.hidden}, "
                f"classes={self.num_classes}); use positive sizes and at least 2 classes"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(
            in_features=int(data["in_features"]),
            num_classes=int(data["num_classes"]),
            hidden=tuple(int(h) for h in data.get("hidden", (32,))),
            kind=str(data.get("kind", "mlp")),
        )


@dataclass(frozen=True)
class DataSchema:
    """The columns a federation agrees on and a model takes: ordered features, the label column, class names.

    One description serves every stage: the coordinator reads it with its
    held-out set (``federation.tabular.load_schema``), the sites train on it,
    the ML-BOM records it, and serving checks requests against it. (A site's
    own file is described by :class:`federation.schema.SiteSchema`, which says
    how its columns are typed and bounded; it is a different thing.)
    """

    features: tuple[str, ...]
    target: str = "label"
    labels: tuple[str, ...] = ()
    """Class names in the model's output order; empty for a model published without them (classes by index)."""

    def __post_init__(self) -> None:
        if not self.features or len(set(self.features)) != len(self.features):
            raise ConfigurationError("schema needs at least one feature and unique feature names")
        if len(self.labels) == 1:
            raise ConfigurationError("schema needs at least two class labels (or none: classes are then numbered)")
        if self.target in self.features:
            raise ConfigurationError(f"label column '{self.target}' is also listed as a feature")

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "target": self.target, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSchema:
        return cls(
            features=tuple(str(f) for f in data["features"]),
            target=str(data.get("target", "label")),
            labels=tuple(str(label) for label in data.get("labels", ())),
        )


def build_model(spec: ModelSpec) -> nn.Sequential:
    """Build the torch module for ``spec`` (fresh, randomly initialised)."""
    layers: list[nn.Module] = [Standardize(spec.in_features)]
    width = spec.in_features
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


DEGENERATE_SCALE = 1e-6
"""A reference standard deviation at or below this (relative to the feature's size) is no scale at all."""


def safe_scale(mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with every degenerate entry (constant, NaN or infinite) replaced by 1.

    The scale is estimated on a small reference set (the coordinator's
    held-out data). A feature that is constant there (a border pixel of
    ``digits``: always 0 in the held-out set, up to 16 at the sites) has a
    standard deviation of 0; clamping it to a tiny floor multiplied the
    feature by 10⁸, so one site value swamped every other input and the
    central baseline fell to chance (0.100), and the served model carried
    the factor. Such a feature is centred and left unscaled instead, as
    scikit-learn's ``StandardScaler`` does for a zero variance.
    """
    floor = DEGENERATE_SCALE * torch.clamp(mean.abs(), min=1.0)
    degenerate = ~torch.isfinite(scale) | (scale <= floor)
    return torch.where(degenerate, torch.ones_like(scale), scale)


def reference_standardization(reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and scale of each feature (columns of ``reference``), with a scale that is never degenerate.

    The scale is the standard deviation, except for a feature that takes at
    most two values in the reference set: there the standard deviation says
    how *rare* the second value is, not the feature's unit (a ``digits``
    pixel that is 1 in one held-out row of 360 has a standard deviation of
    0.053, and a site's 16 in it became 300), so an indicator is scaled by
    its range (0/1 stays 0/1) and a constant feature by 1 (:func:`safe_scale`).
    """
    mean = reference.mean(0)
    low, high = reference.min(0).values, reference.max(0).values
    two_valued = ((reference == low) | (reference == high)).all(0)
    scale = torch.where(two_valued, high - low, reference.std(0))
    return mean, safe_scale(mean, scale)


def set_standardization(model: nn.Sequential, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """Fix the model's input standardization (first layer) to ``mean``/``scale`` (degenerate scales → 1)."""
    first = model[0]
    if not isinstance(first, Standardize):
        raise ConfigurationError("model has no Standardize input layer")
    first.mean.copy_(mean.to(first.mean.dtype))
    first.scale.copy_(safe_scale(mean.to(first.scale.dtype), scale.to(first.scale.dtype)))
