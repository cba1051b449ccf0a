"""The coordinator's run configuration: Flower run config, defaults, overrides.

Keys are hyphenated as in Flower's ``[tool.flwr.app.config]`` so the same
names work in ``pyproject.toml``, ``flwr run --run-config`` and fedguard's own
CLI. Validation is eager: a bad value stops the run before any site is asked
to train.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from coordinator.strategy import AGGREGATIONS
from lifecycle.errors import ConfigurationError
from lifecycle.registry import validate_model_name
from watermark import available_schemes

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 5,
    "num-sites": 5,
    "min-sites": 0,  # 0: all num-sites must be connected and sampled
    "local-epochs": 2,
    "batch-size": 32,
    "lr": 0.1,
    "dp-epsilon": 3.0,
    "dp-delta": 1e-5,
    "max-grad-norm": 1.0,
    "seed": 42,
    "hidden": "32",
    "model-name": "breast-cancer",
    "data-dir": "",
    "watermark": "trigger-set",
    "aggregation": "fedavg",
    "secure-aggregation": "none",
    "round-timeout": 600.0,
    "result-path": "",
}


@dataclass(frozen=True)
class CoordinatorConfig:
    """Validated settings of one federated run."""

    num_server_rounds: int
    num_sites: int
    min_sites: int
    local_epochs: int
    batch_size: int
    lr: float
    dp_epsilon: float
    dp_delta: float
    max_grad_norm: float
    seed: int
    hidden: str
    model_name: str
    data_dir: str
    watermark: str
    aggregation: str
    secure_aggregation: str
    round_timeout: float
    result_path: str

    @classmethod
    def from_mapping(cls, *layers: Mapping[str, Any]) -> CoordinatorConfig:
        """Merge defaults with each layer in turn (later wins) and validate."""
        merged = dict(DEFAULTS)
        for layer in layers:
            unknown = set(layer) - set(DEFAULTS)
            if unknown:
                raise ConfigurationError(
                    f"unknown run-config keys {sorted(unknown)}; known keys: {', '.join(sorted(DEFAULTS))}"
                )
            merged.update(layer)
        values = {}
        for f in fields(cls):
            raw = merged[f.name.replace("_", "-")]
            try:
                values[f.name] = type(DEFAULTS[f.name.replace("_", "-")])(raw)
            except (TypeError, ValueError):
                raise ConfigurationError(f"run-config '{f.name.replace('_', '-')}' = {raw!r} is not valid") from None
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            (self.num_server_rounds >= 1, "num-server-rounds must be at least 1"),
            (self.num_sites >= 1, "num-sites must be at least 1"),
            (0 <= self.min_sites <= self.num_sites, "min-sites must be between 0 and num-sites"),
            (self.local_epochs >= 1, "local-epochs must be at least 1"),
            (self.batch_size >= 1, "batch-size must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (self.dp_epsilon >= 0, "dp-epsilon must be positive (0 disables record-level DP)"),
            (0 < self.dp_delta < 1, "dp-delta must be in (0, 1)"),
            (self.max_grad_norm > 0, "max-grad-norm must be positive"),
            (self.secure_aggregation == "none", "secure-aggregation: only 'none' is available in this version"),
            (self.aggregation in AGGREGATIONS, f"aggregation '{self.aggregation}': choose one of {', '.join(AGGREGATIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        self.hidden_sizes  # noqa: B018 - validates the string
        validate_model_name(self.model_name)
        if self.watermark != "none" and self.watermark not in available_schemes():
            raise ConfigurationError(
                f"unknown watermark scheme '{self.watermark}'; choose one of "
                f"{', '.join([*available_schemes(), 'none'])}"
            )

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        try:
            sizes = tuple(int(h) for h in self.hidden.split(",") if h.strip())
        except ValueError:
            raise ConfigurationError(f"hidden = '{self.hidden}': use comma-separated layer sizes, e.g. '32,16'") from None
        if not sizes or min(sizes) < 1:
            raise ConfigurationError(f"hidden = '{self.hidden}': give at least one positive layer size")
        return sizes

    @property
    def required_sites(self) -> int:
        return self.min_sites or self.num_sites

    @property
    def data_path(self) -> Path:
        if not self.data_dir:
            raise ConfigurationError("run-config 'data-dir' is empty: point it at the coordinator's schema and test set")
        return Path(self.data_dir)

    def as_dict(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
