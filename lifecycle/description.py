"""What a model is, as plain values: its architecture's description and the data schema it takes.

:class:`ModelSpec` and :class:`DataSchema` travel in ML-BOMs, protocol
messages and run configurations; reading or writing them needs no torch.
:mod:`lifecycle.architecture` builds the torch module they describe (and
re-exports both names), so a command that only reads descriptions (``fedguard
models list``, the registry) starts without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lifecycle.errors import ConfigurationError

__all__ = ["MODEL_KINDS", "TRAINING_DEVICES", "DataSchema", "ModelSpec", "canonical_json",
           "parse_hidden", "parse_image_shape", "square_image"]

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


MODEL_KINDS = ("mlp", "cnn", "custom")
"""What :func:`lifecycle.architecture.build_model` builds: fedguard's MLP, its small CNN, or a user's module."""


def square_image(in_features: int) -> tuple[int, int, int]:
    """The single-channel square image ``(1, s, s)`` of ``in_features = s²`` pixels (``digits``: 64 → 1×8×8).

    Raises
    ------
    ConfigurationError
        ``in_features`` is not a perfect square: give the image shape.
    """
    side = round(in_features ** 0.5)
    if side * side != in_features:
        raise ConfigurationError(
            f"{in_features} features are not a square single-channel image; give image-shape = 'C,H,W' "
            "whose product is the number of features"
        )
    return (1, side, side)


def parse_image_shape(text: str, in_features: int) -> tuple[int, int, int]:
    """``"C,H,W"`` (or ``""``: :func:`square_image`) as a shape whose product is ``in_features``."""
    if not text.strip():
        return square_image(in_features)
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigurationError(f"image-shape = '{text}': write channels,height,width, e.g. '1,8,8'") from None
    if len(shape) != 3:
        raise ConfigurationError(f"image-shape = '{text}': write channels,height,width, e.g. '1,8,8'")
    return (shape[0], shape[1], shape[2])


def canonical_json(value: object) -> str:
    """``value`` as compact JSON with sorted keys (one spelling per value, so specs compare and hash equal)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model: its kind and sizes, or the user's module that defines it.

    ``mlp``
        ``Standardize → [Linear → ReLU]* → Linear`` with ``hidden`` widths.
    ``cnn``
        ``Standardize → Unflatten(image_shape) → [Conv3×3 → GroupNorm → ReLU →
        MaxPool2]* → Flatten → Linear``, one convolution block per entry of
        ``hidden`` (its output channels): the flat feature row *is* the
        image, so the table-based pipeline (schema, serving validation, batch
        scoring, drift) is unchanged.
    ``custom``
        ``Standardize → module(in_features=…, num_classes=…, **kwargs)``,
        where ``module`` is ``package.module:ClassName``, imported (never
        unpickled) and pinned by ``code_sha256``, the SHA-256 of its source
        file; ``fix`` applies Opacus' ``ModuleValidator.fix`` at every build.
    """

    in_features: int
    num_classes: int
    hidden: tuple[int, ...] = (32,)
    kind: str = "mlp"
    image_shape: tuple[int, ...] = ()
    module: str = ""
    kwargs: str = ""
    """The custom module's keyword arguments as canonical JSON (an object); empty for none."""
    code_sha256: str = ""
    fix: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ConfigurationError(f"unknown model kind '{self.kind}'; fedguard builds {', '.join(MODEL_KINDS)}")
        if self.in_features < 1 or self.num_classes < 2 or any(h < 1 for h in self.hidden):
            raise ConfigurationError(
                f"invalid model sizes (in={self.in_features}, hidden={self.hidden}, "
                f"classes={self.num_classes}); use positive sizes and at least 2 classes"
            )
        if self.kind == "cnn":
            self._check_cnn()
        elif self.image_shape:
            raise ConfigurationError(f"an image shape describes a cnn, not a model of kind '{self.kind}'")
        if self.kind == "custom":
            self._check_custom()
        elif self.module or self.kwargs or self.code_sha256 or self.fix:
            raise ConfigurationError(f"a module, kwargs, code hash or fix describe a custom model, not '{self.kind}'")

    def _check_cnn(self) -> None:
        shape = self.image_shape
        if len(shape) != 3 or min(shape) < 1 or shape[0] * shape[1] * shape[2] != self.in_features:
            raise ConfigurationError(
                f"cnn image shape {tuple(shape)} does not hold {self.in_features} features; give "
                "channels,height,width whose product is the number of features"
            )
        if not self.hidden:
            raise ConfigurationError("a cnn needs at least one convolution block: hidden = its channels, e.g. '32'")
        if min(shape[1], shape[2]) < 2 ** len(self.hidden):
            raise ConfigurationError(
                f"a {shape[1]}×{shape[2]} image cannot be halved {len(self.hidden)} times; use fewer convolution blocks"
            )

    def _check_custom(self) -> None:
        module, sep, name = self.module.partition(":")
        if not sep or not module or not name.isidentifier() or not all(p.isidentifier() for p in module.split(".")):
            raise ConfigurationError(
                f"model '{self.module}': name your module as package.module:ClassName (e.g. my_app.model:Net)"
            )
        kwargs = self.kwargs_dict
        if not isinstance(kwargs, dict):
            raise ConfigurationError(f"model-kwargs '{self.kwargs}': give a JSON object, e.g. '{{\"hidden\": 32}}'")
        object.__setattr__(self, "kwargs", canonical_json(kwargs) if kwargs else "")
        if self.code_sha256 and (len(self.code_sha256) != 64 or not set(self.code_sha256) <= set("0123456789abcdef")):
            raise ConfigurationError(f"code_sha256 '{self.code_sha256}' is not a SHA-256 hex digest")

    @classmethod
    def cnn(cls, in_features: int, num_classes: int, *, image_shape: tuple[int, ...] | None = None,
            channels: tuple[int, ...] = (32,)) -> ModelSpec:
        """A CNN spec; ``image_shape`` defaults to the square single-channel image of ``in_features`` pixels."""
        shape = image_shape if image_shape is not None else square_image(in_features)
        return cls(in_features, num_classes, tuple(channels), "cnn", tuple(shape))

    @property
    def kwargs_dict(self) -> Any:
        """The custom module's keyword arguments (``{}`` for none)."""
        if not self.kwargs:
            return {}
        try:
            return json.loads(self.kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"model-kwargs '{self.kwargs}' is not JSON: {exc}") from None

    def describe(self) -> str:
        """One line for model cards and summaries (``cnn 1×8×8 conv 16,32 → 32 → 10``)."""
        if self.kind == "cnn":
            shape = "×".join(str(v) for v in self.image_shape)
            return f"cnn {shape} conv {','.join(str(c) for c in self.hidden)} → {self.num_classes}"
        if self.kind == "custom":
            return f"custom {self.module} (sha256 {self.code_sha256[:12] or 'unpinned'}) {self.in_features} → " \
                   f"{self.num_classes}"
        return "mlp " + "→".join(str(n) for n in (self.in_features, *self.hidden, self.num_classes))

    def to_dict(self) -> dict[str, Any]:
        """The ML-BOM's ``architecture`` section; an MLP's keys are exactly those published before kinds existed."""
        data: dict[str, Any] = {"in_features": self.in_features, "num_classes": self.num_classes,
                                "hidden": list(self.hidden), "kind": self.kind}
        if self.kind == "cnn":
            data["image_shape"] = list(self.image_shape)
        if self.kind == "custom":
            data.update(module=self.module, kwargs=self.kwargs_dict, code_sha256=self.code_sha256, fix=self.fix)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        kwargs = data.get("kwargs", "")
        return cls(
            in_features=int(data["in_features"]),
            num_classes=int(data["num_classes"]),
            hidden=tuple(int(h) for h in data.get("hidden", (32,))),
            kind=str(data.get("kind", "mlp")),
            image_shape=tuple(int(v) for v in data.get("image_shape", ())),
            module=str(data.get("module", "")),
            kwargs=kwargs if isinstance(kwargs, str) else (canonical_json(kwargs) if kwargs else ""),
            code_sha256=str(data.get("code_sha256", "")),
            fix=bool(data.get("fix", False)),
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
