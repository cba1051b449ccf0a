"""The coordinator's run configuration: Flower run config, defaults, overrides.

Keys are hyphenated as in Flower's ``[tool.flwr.app.config]`` so the same
names work in ``pyproject.toml``, ``flwr run --run-config`` and fedguard's own
CLI. Validation is eager: a bad value stops the run before any site is asked
to train.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from coordinator.strategies.aggregation import AGGREGATIONS
from coordinator.strategies.server_optimizer import validate_strategy
from coordinator.withdrawals import ExcludedWithdrawal
from coordinator.withdrawals import parse as parse_withdrawals
from federation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIP_NORM,
    DEFAULT_DEVICE,
    DEFAULT_DP_DELTA,
    DEFAULT_DP_EPSILON,
    DEFAULT_HIDDEN,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_SEED,
    local_epochs_for,
)
from lifecycle.description import TRAINING_DEVICES, ModelSpec, parse_hidden, parse_image_shape
from lifecycle.errors import ConfigurationError
from lifecycle.registry import validate_model_name
from watermark import available_schemes

SECURE_AGGREGATIONS = ("secagg+", "ckks", "none")

DEFAULTS: dict[str, Any] = {
    "num-server-rounds": 5,
    "num-sites": 5,
    "min-sites": 0,  # 0: all num-sites must be connected and sampled
    "local-epochs": DEFAULT_LOCAL_EPOCHS,  # 0: chosen from dp-epsilon (federation.defaults.local_epochs_for)
    "batch-size": DEFAULT_BATCH_SIZE,
    "lr": DEFAULT_LR,
    "dp-epsilon": DEFAULT_DP_EPSILON,
    "dp-delta": DEFAULT_DP_DELTA,
    "max-grad-norm": DEFAULT_MAX_GRAD_NORM,
    "seed": DEFAULT_SEED,
    "hidden": DEFAULT_HIDDEN,
    # mlp | cnn | package.module:ClassName (your own nn.Module, lifecycle.custom_model); docs/models.md
    "model": "mlp",
    "model-kwargs": "",  # a custom model's keyword arguments, a JSON object
    "image-shape": "",  # cnn: channels,height,width of the feature row; empty: a square single-channel image
    "fix-model": False,  # a custom model: let Opacus' ModuleValidator.fix replace what DP-SGD cannot train
    "model-name": "breast-cancer",
    "data-dir": "",
    "watermark": "trigger-set",
    "aggregation": "fedavg",
    # fedavg | fedprox | fedadam | fedyogi | fedavgm, orthogonal to aggregation (strategies.server_optimizer)
    "strategy": "fedavg",
    "proximal-mu": 0.0,  # FedProx μ (strategy fedprox only, > 0)
    "server-lr": 0.0,  # the server optimiser's η (fedadam, fedyogi, fedavgm); 0: the strategy's default
    "secure-aggregation": "secagg+",
    # SecAgg+: sites draw their next session's keys at the share-keys stage and the next round's share-keys
    # stage rides on this round's unmask (2 stages a round instead of 4); a site restarted between rounds
    # then drops out of one round (privacy.secagg.strategy). On in simulations.
    "secagg-keys-ahead": False,
    "clip-norm": DEFAULT_CLIP_NORM,
    "max-weight": 10000.0,
    "site-epsilon": 0.0,
    "site-delta": 1e-5,
    "site-clip": 1.0,
    "site-device": DEFAULT_DEVICE,  # where sites train: cpu, cuda or auto (client.device); a site's node config wins
    # ε of the drift reference: each site's histogram counts plus its discrete Gaussian share, securely
    # summed (federation.reference explains why 0.5 is enough for PSI/KS thresholds); 0 = no reference
    "reference-epsilon": 0.5,
    "he-public-context": "",  # the coordinator's CKKS public context (no secret key)
    "sim-he-secret-context": "",  # simulation only: where virtual sites find the shared secret context
    "sim-canaries": "",  # simulation only: the one-run audit's canary set (privacy.audit.canaries), audited at publish
    "round-timeout": 600.0,
    "site-deadline": 120.0,  # seconds to wait before round 1 for enough sites to be identified (then exit 9)
    "max-rejected-rounds": 2,  # rounds the aggregate guard may skip before the run stops (strategies.aggregate_guard)
    "max-accuracy-drop": 0.1,  # largest held-out accuracy drop one round may cause; 1 disables the check
    "result-path": "",
    "run-id": "",  # deployment: a fedguard run id; progress and checkpoints under FEDGUARD_HOME/runs/<run-id>
    # fedguard retrain: the tainted version of model-name this run's model replaces (0: none), and the consent
    # withdrawals it leaves out, ID:SCOPE:SITE,...; both checked against the registry at run start (withdrawals)
    "supersedes": 0,
    "excludes-withdrawals": "",
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
    model: str
    model_kwargs: str
    image_shape: str
    fix_model: bool
    model_name: str
    data_dir: str
    watermark: str
    aggregation: str
    strategy: str
    proximal_mu: float
    server_lr: float
    secure_aggregation: str
    secagg_keys_ahead: bool
    clip_norm: float
    max_weight: float
    site_epsilon: float
    site_delta: float
    site_clip: float
    site_device: str
    reference_epsilon: float
    he_public_context: str
    sim_he_secret_context: str
    sim_canaries: str
    round_timeout: float
    site_deadline: float
    max_rejected_rounds: int
    max_accuracy_drop: float
    result_path: str
    run_id: str
    supersedes: int
    excludes_withdrawals: str

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
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = merged[f.name.replace("_", "-")]
            try:
                default = DEFAULTS[f.name.replace("_", "-")]
                values[f.name] = _flag(raw) if isinstance(default, bool) else type(default)(raw)
            except (TypeError, ValueError):
                raise ConfigurationError(f"run-config '{f.name.replace('_', '-')}' = {raw!r} is not valid") from None
        values["local_epochs"] = local_epochs_for(values["local_epochs"], values["dp_epsilon"])
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
            (math.isfinite(self.dp_epsilon) and self.dp_epsilon >= 0,
             "dp-epsilon must be a finite ε ≥ 0 (ε = inf is no guarantee; 0 disables record-level DP)"),
            (0 < self.dp_delta < 1, "dp-delta must be in (0, 1)"),
            (self.max_grad_norm > 0, "max-grad-norm must be positive"),
            (self.aggregation in AGGREGATIONS,
             f"aggregation '{self.aggregation}': choose one of {', '.join(AGGREGATIONS)}"),
            (self.secure_aggregation in SECURE_AGGREGATIONS,
             f"secure-aggregation '{self.secure_aggregation}': choose one of {', '.join(SECURE_AGGREGATIONS)}"),
            (self.clip_norm > 0, "clip-norm must be positive"),
            (self.max_weight >= 1, "max-weight must be at least 1"),
            (math.isfinite(self.site_epsilon) and self.site_epsilon >= 0,
             "site-epsilon must be a finite ε ≥ 0 (ε = inf is no guarantee; 0 disables site-level DP)"),
            (0 < self.site_delta < 1, "site-delta must be in (0, 1)"),
            (self.site_clip > 0, "site-clip must be positive"),
            (self.reference_epsilon >= 0 and math.isfinite(self.reference_epsilon),
             "reference-epsilon must be a finite number ≥ 0 (0 leaves the drift reference out)"),
            (self.site_device in TRAINING_DEVICES,
             f"site-device '{self.site_device}': choose one of {', '.join(TRAINING_DEVICES)}"),
            (self.secure_aggregation != "ckks" or bool(self.he_public_context),
             "secure-aggregation ckks needs he-public-context: the coordinator's public CKKS context"),
            (self.site_epsilon == 0 or self.aggregation == "fedavg", "site-level DP needs fedavg aggregation"),
            (self.secure_aggregation == "none" or self.aggregation == "fedavg",
             f"aggregation '{self.aggregation}' needs each site's update, which secure aggregation hides; "
             "use fedavg, or secure-aggregation none for robust rules"),
            (self.secure_aggregation != "secagg+" or self.required_sites >= 3,
             "secure-aggregation secagg+ needs at least 3 sites (use ckks or none for fewer)"),
            (self.secure_aggregation != "ckks" or self.required_sites >= 2,
             "secure-aggregation ckks needs at least 2 sites"),
            (math.isfinite(self.site_deadline) and self.site_deadline >= 0,
             "site-deadline must be a number of seconds ≥ 0 (how long to wait for sites before round 1)"),
            (self.max_rejected_rounds >= 1, "max-rejected-rounds must be at least 1"),
            (0 <= self.max_accuracy_drop <= 1,
             "max-accuracy-drop must be between 0 and 1 (a fraction of accuracy; 1 disables the check)"),
            (self.supersedes >= 0, "supersedes must be a version number (0: the run supersedes none)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigurationError(message)
        validate_strategy(self.strategy, self.proximal_mu, self.server_lr)
        if self.model_kind not in ("mlp", "cnn", "custom"):
            raise ConfigurationError(f"model '{self.model}': use mlp, cnn or package.module:ClassName")
        if self.model_kind == "mlp" and not self.hidden_sizes and self.watermark == "trigger-set":
            # A linear model cannot memorise a random trigger set beside the task (measured: trigger
            # accuracy 0.53, chance), so the embedding would fail after the whole run had trained.
            raise ConfigurationError(
                "hidden = 'none' (a linear model) cannot carry the trigger-set watermark: "
                "give a hidden layer, or set watermark = 'none'")
        self.withdrawals  # noqa: B018 - validates the string
        validate_model_name(self.model_name)
        if self.watermark != "none" and self.watermark not in available_schemes():
            raise ConfigurationError(
                f"unknown watermark scheme '{self.watermark}'; choose one of "
                f"{', '.join([*available_schemes(), 'none'])}"
            )

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """The model's hidden layers; empty: a linear model (:func:`lifecycle.description.parse_hidden`)."""
        return parse_hidden(self.hidden)

    @property
    def model_kind(self) -> str:
        """``mlp``, ``cnn``, or ``custom`` for a ``package.module:ClassName``."""
        return "custom" if ":" in self.model else self.model

    def model_spec(self, in_features: int, num_classes: int) -> ModelSpec:
        """The model this run trains on ``in_features`` features; a custom one is imported, hashed and checked.

        A custom model is checked by Opacus' ``ModuleValidator`` when the run
        trains with DP-SGD (``dp-epsilon`` > 0): every problem in one error
        (:func:`lifecycle.custom_model.describe_custom`).
        """
        if self.model_kind == "cnn":
            return ModelSpec.cnn(in_features, num_classes, channels=self.hidden_sizes,
                                 image_shape=parse_image_shape(self.image_shape, in_features))
        if self.model_kind == "custom":
            from lifecycle.custom_model import describe_custom  # imports torch and the user's code

            spec, _ = describe_custom(self.model, in_features, num_classes, kwargs=self.model_kwargs,
                                      fix=self.fix_model, dp_sgd=self.dp_epsilon > 0)
            return spec
        return ModelSpec(in_features, num_classes, self.hidden_sizes)

    @property
    def withdrawals(self) -> tuple[ExcludedWithdrawal, ...]:
        """The consent withdrawals this run leaves out (``fedguard retrain``)."""
        return parse_withdrawals(self.excludes_withdrawals)

    @property
    def withdrawn_sites(self) -> frozenset[str]:
        """The sites withdrawn as a whole: refused before round 1 (``coordinator.roster``)."""
        return frozenset(w.site for w in self.withdrawals if w.whole_site)

    @property
    def required_sites(self) -> int:
        return self.min_sites or self.num_sites

    @property
    def data_path(self) -> Path:
        if not self.data_dir:
            raise ConfigurationError(
                "run-config 'data-dir' is empty: point it at the coordinator's schema and test set")
        return Path(self.data_dir)

    def as_dict(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}


def _flag(raw: Any) -> bool:
    """A boolean run-config value: ``true``/``false`` (TOML), or their spellings as text."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ValueError(raw)
