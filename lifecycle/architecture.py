"""Model architectures fedguard can build from the description in an ML-BOM.

The architecture lives in ``lifecycle`` because every stage needs it: sites
train it, the coordinator aggregates and watermarks it, serving rebuilds it
from ``bom.json`` + ``weights.safetensors`` without any pickled code object.
Feature standardization is a layer with fixed buffers, so a served model takes
raw features and its scaling travels, signed, with the weights. The
descriptions (:class:`ModelSpec`, :class:`DataSchema`) live in
:mod:`lifecycle.description`, which does not import torch; they are
re-exported here.
"""

from __future__ import annotations

import torch
from torch import nn

from lifecycle.description import TRAINING_DEVICES, DataSchema, ModelSpec
from lifecycle.errors import ConfigurationError

__all__ = ["DEGENERATE_SCALE", "TRAINING_DEVICES", "DataSchema", "ModelSpec", "Standardize", "build_model",
           "reference_standardization", "safe_scale", "set_standardization"]


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


def build_model(spec: ModelSpec) -> nn.Sequential:
    """Build the torch module for ``spec`` (fresh, randomly initialised).

    Every kind starts with :class:`Standardize` over the flat feature row, so
    input scaling, the trigger-set watermark and the ONNX export (a
    ``[batch, features]`` input) work the same for all of them.

    Raises
    ------
    ConfigurationError
        A custom module cannot be imported or built, or its source no longer
        has the hash the spec pins (:mod:`lifecycle.custom_model`).
    """
    if spec.kind == "cnn":
        return _cnn(spec)
    if spec.kind == "custom":
        from lifecycle.custom_model import build_custom  # imports the user's code only for a custom spec

        return nn.Sequential(Standardize(spec.in_features), build_custom(spec))
    layers: list[nn.Module] = [Standardize(spec.in_features)]
    width = spec.in_features
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))
    return nn.Sequential(*layers)


def _cnn(spec: ModelSpec) -> nn.Sequential:
    """``Standardize → Unflatten → [Conv3×3 → GroupNorm → ReLU → MaxPool2]* → Flatten → Linear``.

    One convolution block per entry of ``spec.hidden`` (its channels). Only
    layers that Opacus' per-sample gradients support and that need no batch
    statistics (no batch norm: it mixes the examples of a batch, which voids
    per-example clipping), and that ONNX exports at opset 17 with a dynamic
    batch. Padding 1 keeps the 3×3 convolution's size; each block halves
    height and width.

    Group normalization (Wu & He 2018), the per-example replacement for
    batch norm that DP image models use (De et al. 2022, "Unlocking
    High-Accuracy Differentially Private Image Classification through
    Scale"), keeps the run's default learning rate (0.1, momentum 0.9)
    stable: without it the central baseline on digits diverged to chance
    (0.09), with it reached 0.975. No dense hidden layer and one block by
    default: DP-SGD's noise grows with the parameters it spreads over
    (Tramèr & Boneh 2021), and on one site's 300 digits at ε=3 a
    16,32-channel CNN with a 32-unit dense layer (9 354 parameters) reached
    0.24 where one 16-channel block straight into the output layer (2 762)
    reached 0.64 (docs/models.md).
    """
    channels, height, width = spec.image_shape
    layers: list[nn.Module] = [Standardize(spec.in_features), nn.Unflatten(1, (channels, height, width))]
    for out in spec.hidden:
        layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.GroupNorm(_groups(out), out), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels, height, width = out, height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(channels * height * width, spec.num_classes)]
    return nn.Sequential(*layers)


def _groups(channels: int) -> int:
    """Groups of the CNN's group norm: 4 where they divide the channels, else 2, else 1."""
    return next(g for g in (4, 2, 1) if channels % g == 0)


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
