"""What a model is, as plain values: its architecture's description and the data schema it takes.

:class:`ModelSpec` and :class:`DataSchema` travel in ML-BOMs, protocol
messages and run configurations; reading or writing them needs no torch.
:mod:`lifecycle.architecture` builds the torch module they describe (and
re-exports both names), so a command that only reads descriptions (``fedguard
models list``, the registry) starts without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lifecycle.errors import ConfigurationError

__all__ = ["TRAINING_DEVICES", "DataSchema", "ModelSpec", "parse_hidden"]

TRAINING_DEVICES = ("cpu", "cuda", "auto")
"""Where a site trains its copy (``client.device``): the run's ``site-device`` and a site's ``device``."""


def parse_hidden(text: str) -> tuple[int, ...]:
    """The hidden layer sizes of ``hidden = "32,16"``; empty (``""`` or ``"none"``) is a linear model.

    A linear model (multinomial logistic regression) is the better choice
    under strong record-level DP on small sites: the noise of DP-SGD spreads
    over every parameter, and 62 weights (breast cancer) learn under ε=1
    what 1 058 cannot (Tramèr & Boneh 2021, "Differentially Private Learning
    Needs Better Features (or Much More Data)"; measured in docs/research.md,
    "Utility under strong privacy").
    """
    if text.strip().lower() in ("", "none", "linear"):
        return ()
    try:
        sizes = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise ConfigurationError(
            f"hidden = '{text}': use comma-separated layer sizes, e.g. '32,16', or 'none' for a linear model"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ConfigurationError(f"hidden = '{text}': layer sizes must be positive ('none' for a linear model)")
    return sizes


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
