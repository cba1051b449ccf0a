"""A virtual federation: write each site's data, run Flower's simulation engine, collect.

The coordinator and sites run the exact ``ServerApp`` and ``ClientApp`` of a
deployment; only the transport differs (Flower's in-memory grid and Ray
actors instead of gRPC). What node authentication is in a deployment, the
engine's own node ids are here: virtual site ``i`` is the engine's node of
partition ``i`` and its identity is ``site-<i>`` (``coordinator.identity``),
whatever name its agent reports. Each virtual site reads its own CSV, as a hospital
would read its export, so data validation and manifests are exercised too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flwr.clientapp.typing import Mod

from coordinator.app import Observer, make_server_app
from coordinator.config import CoordinatorConfig
from federation.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIP_NORM,
    DEFAULT_DP_DELTA,
    DEFAULT_DP_EPSILON,
    DEFAULT_HIDDEN,
    DEFAULT_LOCAL_EPOCHS,
    DEFAULT_LR,
    DEFAULT_MAX_GRAD_NORM,
    DEFAULT_SEED,
)
from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError, TrainingError
from lifecycle.home import Home
from lifecycle.registry import Registry
from lifecycle.signing import ensure_signing_key
from privacy.he import create_federation_keys
from simulations import logger
from simulations.baseline import central_accuracy
from simulations.data.options import DataOptions, resolve_data
from simulations.data.sites import write_sites
from simulations.ray_processes import prepare_ray_tmpdir, ray_tmpdir, stop_orphaned_ray
from simulations.threads import single_torch_thread


@dataclass(frozen=True)
class SimulationConfig:
    """What a researcher chooses for one simulated run (the CLI's flags)."""

    sites: int = 5
    rounds: int = 5
    seed: int = DEFAULT_SEED
    dp_epsilon: float = DEFAULT_DP_EPSILON
    dp_delta: float = DEFAULT_DP_DELTA
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM
    alpha: float = 0.5
    dataset: str = "breast-cancer"
    test_fraction: float = 0.2
    local_epochs: int = DEFAULT_LOCAL_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    hidden: str = DEFAULT_HIDDEN
    model_name: str = ""
    watermark: str = "trigger-set"
    aggregation: str = "fedavg"
    secure_agg: str = "secagg+"
    clip_norm: float = DEFAULT_CLIP_NORM
    site_epsilon: float = 0.0
    site_clip: float = 1.0
    cpus_per_site: float = 1.0
    gpus_per_site: float = 0.0
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    server_lr: float = 0.0  # 0 = the strategy's default
    data: str = ""
    schema: str = ""
    partition: str = ""
    records: int = 0
    features: int = 0

    def validate(self) -> None:
        DataOptions.of(self).check()  # --data/--schema/--dataset/--partition/--records/--features together
        if self.sites < 1:
            raise ConfigurationError(f"--sites {self.sites}: a federation needs at least 1 site")
        if self.rounds < 1:
            raise ConfigurationError(f"--rounds {self.rounds}: run at least 1 round")
        if not (math.isfinite(self.dp_epsilon) and self.dp_epsilon >= 0):  # inf would train without noise
            raise ConfigurationError(f"--dp-epsilon {self.dp_epsilon}: use a finite positive ε, "
                                     "or 0 to train without record-level DP")
        if not (math.isfinite(self.site_epsilon) and self.site_epsilon >= 0):
            raise ConfigurationError(f"--site-epsilon {self.site_epsilon}: use a finite positive ε, "
                                     "or 0 for no site-level DP")
        if not 0 < self.test_fraction < 1:
            raise ConfigurationError("test fraction must be between 0 and 1")
        if self.alpha <= 0:
            raise ConfigurationError(f"--alpha {self.alpha}: the Dirichlet α must be positive")
        self._check_resources()
        self.coordinator_overrides(Path("."), Path("outcome.json"))  # the coordinator's own checks

    def _check_resources(self) -> None:
        """Refuse a request Ray could never place: it would wait for the resource forever, silently."""
        if self.cpus_per_site <= 0:
            raise ConfigurationError(f"--cpus-per-site {self.cpus_per_site}: each site needs a CPU share above 0")
        if self.gpus_per_site < 0 or (self.gpus_per_site > 1 and not float(self.gpus_per_site).is_integer()):
            raise ConfigurationError(
                f"--gpus-per-site {self.gpus_per_site}: use a share of one GPU (0 < x ≤ 1) or a whole number"
            )
        if self.gpus_per_site > 0:
            import torch

            gpus = torch.cuda.device_count()
            if gpus < self.gpus_per_site:
                raise ConfigurationError(
                    f"--gpus-per-site {self.gpus_per_site}: PyTorch sees {gpus} CUDA GPU(s) on this machine "
                    f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); leave the flag out "
                    "to train every site on the CPU"
                )

    def coordinator_overrides(
        self, data_dir: Path, result_path: Path, he_keys: tuple[Path, Path] | None = None
    ) -> dict[str, Any]:
        overrides = {
            "num-server-rounds": self.rounds, "num-sites": self.sites, "local-epochs": self.local_epochs,
            "batch-size": self.batch_size, "lr": self.lr, "dp-epsilon": self.dp_epsilon,
            "dp-delta": self.dp_delta, "max-grad-norm": self.max_grad_norm, "seed": self.seed,
            "hidden": self.hidden, "model-name": self.model_name or DataOptions.of(self).name,
            "data-dir": str(data_dir), "result-path": str(result_path), "watermark": self.watermark,
            "aggregation": self.aggregation, "secure-aggregation": self.secure_agg,
            "clip-norm": self.clip_norm, "site-epsilon": self.site_epsilon, "site-delta": self.dp_delta,
            "site-clip": self.site_clip, "site-device": "cuda" if self.gpus_per_site > 0 else "cpu",
        }
        overrides.update({"strategy": self.strategy, "proximal-mu": self.proximal_mu, "server-lr": self.server_lr})
        if self.secure_agg == "ckks":
            secret, public = he_keys or (Path("site-secret.ctx"), Path("coordinator-public.ctx"))
            overrides.update({"he-public-context": str(public), "sim-he-secret-context": str(secret)})
        CoordinatorConfig.from_mapping(overrides)  # validate before Ray starts
        return overrides


@dataclass(frozen=True)
class PreparedData:
    """Where the simulation's site files were written, the central baseline's accuracy and the sites' sizes."""

    data_dir: Path
    baseline_accuracy: float
    site_sizes: tuple[int, ...]
    partition: dict[str, Any] = field(default_factory=dict)
    """The partition report's summary (``<run>/partition.json`` has every site)."""


def prepare_data(cfg: SimulationConfig, data_dir: Path) -> PreparedData:
    """Split the data, write site CSVs + held-out test set + schema + partition report, and train the baseline.

    The baseline trains on at most ``BASELINE_MAX_RECORDS`` training records (a seeded sample above that).
    """
    split = write_sites(DataOptions.of(cfg), data_dir)
    spec = ModelSpec(len(split.source.feature_names), len(split.source.label_names),
                     tuple(int(h) for h in cfg.hidden.split(",")))
    train_x, train_y = split.baseline_sample(cfg.seed)
    baseline = central_accuracy(
        spec, train_x, train_y, split.test_x, split.test_y, epochs=cfg.rounds * cfg.local_epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
    )
    return PreparedData(data_dir, baseline, split.sizes, split.report.summary())


def _engine_environment(home: Home) -> None:
    """Keep Flower and Ray state local and quiet; nothing leaves the machine unasked."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_HOME", str((home.root / "flwr").resolve()))
    # Ray puts UNIX sockets under its temp dir, whose path must stay short (< 108 bytes): one per home.
    os.environ["RAY_TMPDIR"] = str(prepare_ray_tmpdir(ray_tmpdir(home.root)))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    stop_orphaned_ray(Path(os.environ["RAY_TMPDIR"]))  # what a killed run of this home left behind


def run(cfg: SimulationConfig, observer: Observer, *, verbose: bool = False,
        run_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run one simulated federation end to end and return the outcome.

    ``run_config``: coordinator run-config keys set over the ones ``cfg``
    gives (``fedguard retrain``: fewer sites, the version it supersedes).
    """
    cfg = resolve_data(cfg)  # reads a --data file; by-column: one site per value
    cfg.validate()
    started = time.monotonic()
    registry = Registry.open()  # fail fast on a bad home, registry or key, before any training
    ensure_signing_key(registry.home.keys)
    home = registry.home
    run_dir = home.runs / f"sim-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    he_keys = None
    if cfg.secure_agg == "ckks":  # sites share the secret context; the coordinator gets the public one only
        he_keys = create_federation_keys(run_dir / "sites", run_dir / "coordinator")
    overrides = {**cfg.coordinator_overrides(run_dir / "data", run_dir / "outcome.json", he_keys), **(run_config or {})}
    CoordinatorConfig.from_mapping(overrides)
    observer("stage", {"stage": "data", "sites": cfg.sites, "dataset": DataOptions.of(cfg).name})
    prepared = prepare_data(cfg, run_dir / "data")
    observer("stage", {"stage": "partition", "report": str(run_dir / "partition.json")})
    observer("stage", {"stage": "engine", "site_sizes": prepared.site_sizes})
    _engine_environment(home)
    outcome: dict[str, Any] = {}
    _simulate(overrides, observer, outcome, cfg, verbose)
    if "model" not in outcome:
        raise TrainingError("the federation ended without publishing a model; see the log above")
    outcome.update(baseline_accuracy=prepared.baseline_accuracy, seconds=time.monotonic() - started,
                   partition=prepared.partition, run_dir=str(run_dir), config=asdict(cfg))
    (run_dir / "outcome.json").write_text(json.dumps(outcome, indent=2, default=str))
    return outcome


def _simulate(
    overrides: Mapping[str, Any], observer: Observer, outcome: dict[str, Any], cfg: SimulationConfig,
    verbose: bool, *, mods: Sequence[Mod] = (),
) -> None:
    """Run the engine; ``mods`` go into every virtual site's ClientApp (tests: a misbehaving site)."""
    from flwr.simulation import run_simulation

    from client.app import make_client_app

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    cpus = max(1, min(os.cpu_count() or 1, 2 * cfg.sites))
    try:
        with single_torch_thread():  # the ServerApp thread's evaluations: Ray's actors hold the cores
            run_simulation(
                server_app=make_server_app(overrides, observer, outcome),
                client_app=make_client_app(require_protection=cfg.secure_agg != "none", mods=mods),
                num_supernodes=cfg.sites,
                backend_config={
                    "client_resources": {"num_cpus": cfg.cpus_per_site, "num_gpus": cfg.gpus_per_site},
                    "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": verbose,
                                  "logging_level": logging.INFO if verbose else logging.ERROR},
                },
                verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(level)
    logger.info("simulation finished with %d sites", cfg.sites)
