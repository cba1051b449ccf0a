"""Model architectures fedguard can build from the description in an ML-BOM.

The architecture lives in ``lifecycle`` because every stage needs it: sites
train it, the coordinator aggregates and watermarks it, serving rebuilds it
from ``bom.json`` + ``weights.safetensors`` without any pickled code object.
Feature standardization is a layer with fixed buffers, so a served model takes
raw features and its scaling travels, signed, with the weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
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
class FeatureSchema:
    """The inputs a model accepts: ordered feature names and class labels."""

    features: tuple[str, ...]
    labels: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        return cls(
            features=tuple(str(f) for f in data["features"]),
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


def set_standardization(model: nn.Sequential, mean: torch.Tensor, scale: torch.Tensor) -> None:
    """Fix the model's input standardization (first layer) to ``mean``/``scale``."""
    first = model[0]
    if not isinstance(first, Standardize):
        raise ConfigurationError("model has no Standardize input layer")
    first.mean.copy_(mean.to(first.mean.dtype))
    first.scale.copy_(torch.clamp(scale.to(first.scale.dtype), min=1e-8))
