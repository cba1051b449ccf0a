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
import threading
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
    local_epochs_for,
)
from lifecycle.architecture import ModelSpec
from lifecycle.errors import ConfigurationError, TrainingError
from lifecycle.home import Home
from lifecycle.registry import Registry
from lifecycle.settings import get_settings
from lifecycle.signing import ensure_signing_key
from privacy.audit import raise_if_failed
from privacy.he import create_federation_keys
from simulations import logger
from simulations.app_loader import app_by_reference
from simulations.attacks.experiment import model_name as attack_model_name
from simulations.attacks.experiment import plan_attack
from simulations.baseline import central_accuracy
from simulations.canaries import canary_path, plant
from simulations.data.options import DataOptions, resolve_data
from simulations.data.sites import SiteRecords, Split, TrainRecords, write_sites
from simulations.heap import frozen_heap
from simulations.link_state import indexed_link_state
from simulations.ray_cluster import attach, cluster_address, detach
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
    local_epochs: int = DEFAULT_LOCAL_EPOCHS  # 0: chosen from dp_epsilon (federation.defaults.local_epochs_for)
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    hidden: str = DEFAULT_HIDDEN
    model: str = "mlp"
    """mlp, cnn, or ``package.module:ClassName`` (your own ``nn.Module``, docs/models.md)."""
    model_kwargs: str = ""
    image_shape: str = ""
    fix_model: bool = False
    app: str = ""
    """A project folder (``fedguard new``) on the import path of the coordinator and every virtual site."""
    model_name: str = ""
    watermark: str = "trigger-set"
    aggregation: str = "fedavg"
    secure_agg: str = "secagg+"
    secagg_keys_ahead: bool = True
    """SecAgg+: next session's keys and share-keys stage ride on this session's (2 stages a round, not 4)."""
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
    canaries: int = 0  # one-run privacy audit: mislabelled canaries planted at the sites (simulations.canaries)
    attack: str = "none"
    """An attack run by a seeded fraction of the sites, ``name[:param]`` (``simulations.attacks``)."""
    attackers: float = 0.0
    """The fraction of the sites that run ``attack`` (⌈fraction · sites⌉ of them)."""
    ray_address: str = ""

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
        if self.canaries < 0:
            raise ConfigurationError(f"--canaries {self.canaries}: plant 0 (no audit) or more canaries")
        if self.alpha <= 0:
            raise ConfigurationError(f"--alpha {self.alpha}: the Dirichlet α must be positive")
        self._check_resources()
        plan_attack(self.attack, self.attackers, self.sites, self.seed)
        self.coordinator_overrides(Path("."), Path("outcome.json"))  # the coordinator's own checks

    def _check_resources(self) -> None:
        """Refuse a request Ray could never place: it would wait for the resource forever, silently."""
        if self.cpus_per_site <= 0:
            raise ConfigurationError(f"--cpus-per-site {self.cpus_per_site}: each site needs a CPU share above 0")
        if self.gpus_per_site < 0 or (self.gpus_per_site > 1 and not float(self.gpus_per_site).is_integer()):
            raise ConfigurationError(
                f"--gpus-per-site {self.gpus_per_site}: use a share of one GPU (0 < x ≤ 1) or a whole number"
            )
        if self.gpus_per_site > 0 and not cluster_address(self.ray_address):  # a cluster's GPUs: checked on attach
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
            "hidden": self.hidden, "model": self.model, "model-kwargs": self.model_kwargs,
            "image-shape": self.image_shape, "fix-model": self.fix_model,
            "model-name": self.model_name or attack_model_name(self.attack, DataOptions.of(self).name),
            "data-dir": str(data_dir), "result-path": str(result_path), "watermark": self.watermark,
            "aggregation": self.aggregation, "secure-aggregation": self.secure_agg,
            "secagg-keys-ahead": self.secagg_keys_ahead,
            "clip-norm": self.clip_norm, "site-epsilon": self.site_epsilon, "site-delta": self.dp_delta,
            "site-clip": self.site_clip, "site-device": "cuda" if self.gpus_per_site > 0 else "cpu",
        }
        overrides.update({"strategy": self.strategy, "proximal-mu": self.proximal_mu, "server-lr": self.server_lr})
        if self.canaries:
            overrides["sim-canaries"] = str(canary_path(data_dir))
        if self.secure_agg == "ckks":
            secret, public = he_keys or (Path("site-secret.ctx"), Path("coordinator-public.ctx"))
            overrides.update({"he-public-context": str(public), "sim-he-secret-context": str(secret)})
        CoordinatorConfig.from_mapping(overrides)  # validate before Ray starts
        return overrides


def model_spec(cfg: SimulationConfig, in_features: int, num_classes: int) -> ModelSpec:
    """The model the run trains, exactly as its coordinator will describe it (``CoordinatorConfig.model_spec``)."""
    overrides = cfg.coordinator_overrides(Path("."), Path("outcome.json"))
    return CoordinatorConfig.from_mapping(overrides).model_spec(in_features, num_classes)


def use_app(folder: str) -> None:
    """Make a project folder's packages importable here and in every Ray worker this process starts."""
    if not folder:
        return
    from lifecycle.custom_model import import_path

    path = Path(folder).resolve()
    if not path.is_dir():
        raise ConfigurationError(f"--app '{folder}' is not a folder; give your project's folder (fedguard new)")
    import_path(path)
    current = os.environ.get("PYTHONPATH", "")
    if str(path) not in current.split(os.pathsep):  # Ray's workers inherit the driver's environment
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), current) if p)


@dataclass(frozen=True)
class PreparedData:
    """Where the simulation's site files were written, the central baseline's accuracy and the sites' sizes."""

    data_dir: Path
    baseline_accuracy: float
    site_sizes: tuple[int, ...]
    partition: dict[str, Any] = field(default_factory=dict)
    """The partition report's summary (``<run>/partition.json`` has every site)."""


def prepare_data(cfg: SimulationConfig, data_dir: Path, *, train: TrainRecords | None = None) -> PreparedData:
    """Split the data, write site CSVs + held-out test set + schema + partition report, and train the baseline.

    The baseline trains on at most ``BASELINE_MAX_RECORDS`` training records (a seeded sample above that).
    ``train`` replaces the split's training records (a LiRA shadow federation
    trains on its half of the records, :mod:`simulations.shadows`); with
    ``--canaries`` the audit's canaries are planted at the sites.
    """
    planted: list[int] = []  # the sizes the sites hold once the canaries are in

    def canaries(sites: SiteRecords, split: Split) -> SiteRecords:
        sites = plant(sites, split.train_x, split.train_y, len(split.source.label_names), cfg.canaries, cfg.seed,
                      data_dir)
        planted.extend(len(y) for _, y in sites)
        return sites

    split = write_sites(DataOptions.of(cfg), data_dir, train_records=train, plant=canaries if cfg.canaries else None)
    spec = model_spec(cfg, len(split.source.feature_names), len(split.source.label_names))
    train_x, train_y = split.baseline_sample(cfg.seed)
    epochs = cfg.rounds * local_epochs_for(cfg.local_epochs, 0.0)  # the central baseline is not private
    baseline = central_accuracy(
        spec, train_x, train_y, split.test_x, split.test_y, epochs=epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
    )
    return PreparedData(data_dir, baseline, tuple(planted) or split.sizes, split.report.summary())


def _engine_environment(home: Home, ray_address: str = "") -> None:
    """Keep Flower and Ray state local and quiet; nothing leaves the machine unasked."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("FLWR_HOME", str((home.root / "flwr").resolve()))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if cluster_address(ray_address):
        return  # a cluster we attach to is not ours: its temp dir and processes stay as they are
    # Ray puts UNIX sockets under its temp dir, whose path must stay short (< 108 bytes): one per home.
    os.environ["RAY_TMPDIR"] = str(prepare_ray_tmpdir(ray_tmpdir(home.root)))
    stop_orphaned_ray(Path(os.environ["RAY_TMPDIR"]))  # what a killed run of this home left behind


def run(cfg: SimulationConfig, observer: Observer, *, verbose: bool = False,
        run_config: Mapping[str, Any] | None = None, train: TrainRecords | None = None) -> dict[str, Any]:
    """Run one simulated federation end to end and return the outcome.

    ``run_config``: coordinator run-config keys set over the ones ``cfg``
    gives (``fedguard retrain``: fewer sites, the version it supersedes).
    ``train``: the training records instead of the split's (:func:`prepare_data`).
    """
    use_app(cfg.app)
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
    observer, log = _logged(observer, run_dir, cfg)
    try:
        return _train(cfg, observer, run_dir, overrides, home=home, started=started, verbose=verbose, train=train)
    except KeyboardInterrupt:
        log("stopped", {"actor": "interrupted"})  # the console shows it ended (the CLI says the rest)
        raise
    except Exception as exc:  # noqa: BLE001 - recorded for the console, then raised unchanged
        log("failed", {"message": str(exc) or type(exc).__name__})
        raise


def _train(cfg: SimulationConfig, observer: Observer, run_dir: Path, overrides: Mapping[str, Any], *,
           home: Home, started: float, verbose: bool, train: TrainRecords | None) -> dict[str, Any]:
    """Prepare the data, run the engine and write the outcome (:func:`run`'s work once the run folder exists)."""
    observer("stage", {"stage": "data", "sites": cfg.sites, "dataset": DataOptions.of(cfg).name})
    prepared = prepare_data(cfg, run_dir / "data", train=train)
    observer("stage", {"stage": "partition", "report": str(run_dir / "partition.json")})
    observer("stage", {"stage": "engine", "site_sizes": prepared.site_sizes})
    _engine_environment(home, cfg.ray_address)
    outcome: dict[str, Any] = {}
    attack = plan_attack(cfg.attack, cfg.attackers, cfg.sites, cfg.seed)
    _simulate(overrides, observer, outcome, cfg, verbose, mods=attack.mods, update_mods=attack.update_mods)
    if "model" not in outcome:
        raise TrainingError("the federation ended without publishing a model; see the log above")
    outcome.update(attack.report(outcome, prepared.data_dir))
    outcome.update(baseline_accuracy=prepared.baseline_accuracy, seconds=time.monotonic() - started,
                   partition=prepared.partition, run_dir=str(run_dir), config=asdict(cfg))
    (run_dir / "outcome.json").write_text(json.dumps(outcome, indent=2, default=str))
    raise_if_failed(outcome.get("privacy_audit"), f"{outcome['model']}:{outcome['version']}")  # ε̂ > ε: a bug
    return outcome


def _logged(observer: Observer, run_dir: Path, cfg: SimulationConfig) -> tuple[Observer, Observer]:
    """``observer`` also writing every event to the run's ``progress.jsonl``, and that log (for the run's end).

    The same log a deployed run's ServerApp writes (:mod:`coordinator.runs.progress`),
    so the operator console (``/console/runs``) follows a simulation live as it
    follows a deployed run.
    """
    from coordinator.runs.progress import PROGRESS, ProgressLog

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "simulation.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    log = ProgressLog(run_dir / PROGRESS)

    def both(event: str, payload: Mapping[str, Any]) -> None:
        log(event, {k: v for k, v in payload.items() if k != "report"} if event == "stage" else payload)
        observer(event, payload)

    return both, log


def _simulate(
    overrides: Mapping[str, Any], observer: Observer, outcome: dict[str, Any], cfg: SimulationConfig,
    verbose: bool, *, mods: Sequence[Mod] = (), update_mods: Sequence[Mod] = (),
) -> None:
    """Run the engine; ``mods`` and ``update_mods`` go into every virtual site's ClientApp (attacks, tests)."""
    from flwr.simulation import run_simulation

    from client.app import make_client_app

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.ERROR)
    cpus = max(1, min(os.cpu_count() or 1, 2 * cfg.sites))
    init_args: dict[str, Any] = {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": verbose,
                                 "logging_level": logging.INFO if verbose else logging.ERROR}
    if address := cluster_address(cfg.ray_address):  # Flower's backend uses the connection as it finds it
        cluster = attach(address, home=get_settings().home, cpus_per_site=cfg.cpus_per_site,
                         gpus_per_site=cfg.gpus_per_site, verbose=verbose)
        observer("stage", {"stage": "cluster", "cluster": cluster.describe()})
        outcome["ray_cluster"], init_args = cluster.to_dict(), {}
    engine_down = threading.Event()  # the ServerApp thread ends when the engine does (coordinator.grid)
    try:
        # the ServerApp thread's evaluations: Ray's actors hold the cores; a node's poll looks up its own messages;
        # Flower's Ray backend sends the ClientApp, not Flower's loader closure
        with single_torch_thread(), indexed_link_state(), app_by_reference(), frozen_heap():
            run_simulation(
                server_app=make_server_app(overrides, observer, outcome, engine_down.is_set),
                client_app=make_client_app(require_protection=cfg.secure_agg != "none", mods=mods,
                                           update_mods=update_mods),
                num_supernodes=cfg.sites,
                backend_config={
                    "client_resources": {"num_cpus": cfg.cpus_per_site, "num_gpus": cfg.gpus_per_site},
                    "init_args": init_args,
                },
                verbose_logging=verbose,
            )
    finally:
        engine_down.set()  # a ServerApp still waiting for sites stops now instead of at its deadlines
        flwr_logger.setLevel(level)
        if address:
            detach()
    logger.info("simulation finished with %d sites", cfg.sites)
