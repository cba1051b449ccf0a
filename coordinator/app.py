"""The coordinator's Flower ``ServerApp`` (Message API).

``app`` is what ``flwr run`` loads (``[tool.flwr.app.components]``); fedguard's
own simulation builds one with :func:`make_server_app` to pass CLI overrides
and an observer for live progress. Either way the same :func:`run_federation`
executes: rounds of FedAvg with central evaluation, then watermark, signature
and registration, then self-checks. It raises on any failure, so a run never
reports success for a model it could not verify.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from coordinator import logger
from coordinator.config import CoordinatorConfig
from coordinator.evaluation import evaluate
from coordinator.grid import responsive
from coordinator.identity import expected_sites, site_identities
from coordinator.ledger import RunLedger
from coordinator.privacy_audit import privacy_audit_metrics
from coordinator.provisioning.federation import FederationLayout
from coordinator.publication import embed_watermark, gate_metrics, publish_run, published_outcome, site_level_epsilon
from coordinator.reference import ReferenceCollector
from coordinator.roster import gather, policy_check
from coordinator.runs import run_dir
from coordinator.runs.control import record_serverapp, stop_requested
from coordinator.runs.progress import PROGRESS, ProgressLog
from coordinator.runs.resume import RunState
from coordinator.strategies.aggregate_guard import audit_guard
from coordinator.strategies.builder import StrategyStack, build_strategy
from coordinator.strategies.site_dp import site_dp_plan
from coordinator.strategies.tracked import RoundReport, SiteLedger, TrackedStrategy
from coordinator.strategies.validation import audit_rejections
from coordinator.withdrawals import check_against_registry, registry_withdrawn_sites
from federation.contract import CONTRACT_FILE, DataContract
from federation.protocol import TrainConfig, WitnessCheckpoint
from federation.tabular import TabularData, load_csv, load_schema
from lifecycle.architecture import DataSchema, ModelSpec, build_model, reference_standardization, set_standardization
from lifecycle.errors import ConfigurationError, FedguardError
from lifecycle.registry import Registry
from lifecycle.settings import get_settings
from privacy.ledger import coordinator_ledger
from privacy.site_dp import SiteDPPlan

Observer = Callable[[str, Mapping[str, Any]], None]


def _log_observer(event: str, payload: Mapping[str, Any]) -> None:
    logger.info("%s: %s", event, dict(payload))


def _train_config(
    cfg: CoordinatorConfig, schema: DataSchema, contract: DataContract | None = None, *, spec: ModelSpec | None = None
) -> ConfigRecord:
    """The sites' instructions (:class:`federation.protocol.TrainConfig`; each round sets its number).

    With a data contract, every message carries it: a site whose bundle predates
    a contract change still checks its file against this run's.
    """
    return TrainConfig(
        server_round=0, total_rounds=cfg.num_server_rounds, local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, dp_epsilon=cfg.dp_epsilon, dp_delta=cfg.dp_delta,
        max_grad_norm=cfg.max_grad_norm, features=tuple(schema.features), target=schema.target,
        spec=spec or cfg.model_spec(len(schema.features), len(schema.labels)), seed=cfg.seed,
        data_dir=cfg.data_dir, labels=tuple(str(v) for v in schema.labels), device=cfg.site_device,
        he_secret_context=cfg.sim_he_secret_context, contract=contract.to_json() if contract is not None else "",
        proximal_mu=cfg.proximal_mu,
    ).to_record()


def witness_checkpoint(registry: Registry, config: ConfigRecord, *, sign: bool = False) -> None:
    """Put the newest signed audit checkpoint into the sites' instructions: the sites keep it as witnesses.

    The checkpoint rides in the ``config`` record every site already receives
    (:class:`federation.protocol.WitnessCheckpoint`), so it costs no round
    trip; :func:`train` refreshes it after each round. ``sign`` (the start of
    a run) first signs the chain's head if an event came after the last
    checkpoint, so every run hands its sites the registry as it found it.
    Witnessing is never worth a failed run: a damaged checkpoint file is
    logged, and the sites get nothing new this time.
    """
    from lifecycle.audit.witness import newest

    try:
        if sign:
            registry.checkpoint(every=1)
        found = newest(registry.home.keys, registry.checkpoint_log)
    except (FedguardError, OSError) as exc:
        logger.warning("no audit checkpoint sent to the sites this time (%s); 'fedguard audit verify' says why", exc)
        return
    if found is not None:
        signed, key = found
        for name, value in WitnessCheckpoint(signed.line(), key).fields().items():
            config[name] = value


def _initial_model(cfg: CoordinatorConfig, spec: ModelSpec, test: TabularData) -> torch.nn.Module:
    """Fresh weights; input scaling fixed from the coordinator's own reference set."""
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    features = torch.from_numpy(test.features)
    set_standardization(model, *reference_standardization(features))
    return model


def _accuracy_on(spec: ModelSpec, test: TabularData) -> Callable[[ArrayRecord], float]:
    """The held-out accuracy of a candidate global model (the aggregate guard's check)."""

    def accuracy(arrays: ArrayRecord) -> float:
        candidate = build_model(spec)
        candidate.load_state_dict(arrays.to_torch_state_dict())
        return evaluate(candidate, test).accuracy

    return accuracy


@dataclass
class RoundProgress:
    """Central evaluation after each round, reported to the observer with ε so far."""

    spec: ModelSpec
    test: TabularData
    cfg: CoordinatorConfig
    strategy: TrackedStrategy
    observer: Observer
    site_series: list[float]
    reports: dict[int, RoundReport] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    expected: Callable[[], set[str]] = set
    after_round: Callable[[int, ArrayRecord, dict[str, Any]], None] | None = None
    total_dp: Callable[[str, SiteLedger], dict[str, Any]] = lambda name, site: site.dp

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        candidate = build_model(self.spec)
        candidate.load_state_dict(arrays.to_torch_state_dict())
        result = evaluate(candidate, self.test)
        if server_round > 0:
            report = self.reports.get(server_round)
            dps = [self.total_dp(name, site) for name, site in self.strategy.sites.items()]
            eps = [dp["epsilon"] for dp in dps if "epsilon" in dp]
            entry = {
                "round": server_round, "rounds": self.cfg.num_server_rounds, "accuracy": result.accuracy,
                "loss": result.loss, "epsilon_max": max(eps) if eps else None,
                "site_epsilon": self.site_series[server_round - 1] if self.site_series else None,
                "sites": len(report.succeeded) if report else 0, "failed": len(report.failed) if report else 0,
                "rejected": len(report.rejected) if report else 0,
                "dropped": sorted(self.expected() - set(report.succeeded)) if report else [],
                "reasons": dict(sorted(report.reasons.items())) if report else {},
            }
            self.history.append(entry)
            if self.after_round is not None:
                self.after_round(server_round, arrays, entry)
            self.observer("round", entry)
        return MetricRecord({"accuracy": result.accuracy, "loss": result.loss})


@dataclass
class RunContext:
    """What the phases of one run share: the data, the model, the registry, the ledger and the layers."""

    cfg: CoordinatorConfig
    observer: Observer
    schema: DataSchema
    test: TabularData
    spec: ModelSpec
    model: torch.nn.Module
    registry: Registry
    run_state: RunState | None
    plan: SiteDPPlan | None
    run_ledger: RunLedger
    stack: StrategyStack
    progress: RoundProgress
    reports: dict[int, RoundReport]
    started: float
    contract: DataContract | None = None

    @property
    def tracked(self) -> TrackedStrategy:
        return self.stack.tracked

    @property
    def done(self) -> int:
        return self.run_state.completed if self.run_state is not None else 0


def run_federation(
    grid: Grid, cfg: CoordinatorConfig, observer: Observer = _log_observer, *, flower_run: int | None = None,
) -> dict[str, Any]:
    """Run all rounds, publish the model, and return the outcome (see module docstring).

    With a ``run-id`` in the run config (deployment), progress events go to
    ``FEDGUARD_HOME/runs/<run-id>/progress.jsonl`` too, a checkpoint is
    written after every round, and a run that finds a checkpoint resumes
    after its round (``coordinator.runs.resume``). The phases, in order:
    :func:`prepare`, :func:`identify`, :func:`train`, :func:`publish`,
    :func:`finish`.
    """
    run = prepare(cfg, observer, flower_run=flower_run)
    train_config = _train_config(cfg, run.schema, run.contract, spec=run.spec)
    witness_checkpoint(run.registry, train_config, sign=True)
    reference = identify(run, grid, train_config)
    train(run, grid, train_config)
    outcome = publish(run, reference)
    return finish(run, outcome)


def prepare(cfg: CoordinatorConfig, observer: Observer, *, flower_run: int | None = None) -> RunContext:
    """Load the held-out set and schema, build the model, open the registry, the run state and the ledger."""
    started = time.monotonic()
    folder = reference_folder(cfg)
    schema = load_schema(folder / "schema.json")
    contract = _contract(folder, schema)
    test = load_csv(folder / "test.csv", list(schema.features), schema.target, len(schema.labels))
    spec = cfg.model_spec(len(schema.features), len(schema.labels))
    model = _initial_model(cfg, spec, test)
    registry = Registry.open()
    check_against_registry(registry, model=cfg.model_name, supersedes=cfg.supersedes, withdrawals=cfg.withdrawals)
    run_state = RunState.open(registry.home.runs, cfg.run_id) if cfg.run_id else None
    if run_state is not None:
        observer = _both(observer, run_state.progress)
        if flower_run is not None:
            run_state.segments.append(flower_run)
    plan = site_dp_plan(cfg)
    run_ledger = RunLedger(coordinator_ledger(registry), cfg.run_id or uuid.uuid4().hex, plan)
    reports: dict[int, RoundReport] = {}
    stack = build_strategy(
        cfg, on_round=lambda r: reports.__setitem__(r.server_round, r),
        num_params=sum(p.numel() for p in model.parameters()), run_ledger=run_ledger,
        frozen_keys=[name for name, _ in model.named_buffers()],
        completed_rounds=run_state.completed if run_state is not None else 0,
        on_reject=audit_rejections(registry, run_ledger.run_id),
        accuracy=_accuracy_on(spec, test), on_guard=audit_guard(registry, run_ledger.run_id),
    )
    progress = RoundProgress(spec, test, cfg, stack.tracked, observer,
                             plan.epsilon_series() if plan is not None else [], reports,
                             expected=lambda: set(run_ledger.nodes.values()))
    if run_state is not None:
        run_state.restore(model, stack.tracked, progress.history)
        progress.after_round = lambda r, arrays, entry: _checkpoint(
            run_state, stack.tracked, progress, r, arrays, entry)
        progress.total_dp = run_state.total_dp
    return RunContext(cfg, observer, schema, test, spec, model, registry, run_state, plan, run_ledger, stack,
                      progress, reports, started, contract)


def reference_folder(cfg: CoordinatorConfig) -> Path:
    """The coordinator's held-out reference set: ``data-dir``, else (a deployed run) what ``coordinator data`` wrote.

    Raises
    ------
    ConfigurationError
        ``data-dir`` is empty and there is no reference set in ``FEDGUARD_HOME/federation/reference``.
    """
    if cfg.data_dir or not cfg.run_id:
        return cfg.data_path  # simulation and explicit jobs; an empty data-dir raises there
    folder = Path(FederationLayout.under(get_settings().home).reference)
    if not (folder / "schema.json").is_file() or not (folder / "test.csv").is_file():
        raise ConfigurationError(
            f"run-config 'data-dir' is empty and there is no reference set in {folder}: run 'fedguard coordinator "
            "data --data HELDOUT.csv --schema CONTRACT.toml' on the coordinator machine, or set data-dir")
    return folder


def _contract(folder: Path, schema: DataSchema) -> DataContract | None:
    """The folder's ``contract.json`` (written with the reference set), checked against its ``schema.json``."""
    path = folder / CONTRACT_FILE
    if not path.is_file():
        return None
    contract = DataContract.read(path)
    if contract.data_schema() != schema:
        raise ConfigurationError(f"{path} and {folder / 'schema.json'} disagree on the features or labels; write "
                                 "both again with 'fedguard coordinator data'")
    return contract


def identify(run: RunContext, grid: Grid, train_config: ConfigRecord) -> ReferenceCollector:
    """Ask every site who it is before the first round, then securely sum their noised reference counts.

    Waits up to ``site-deadline`` for the sites the run needs
    (:func:`coordinator.roster.gather`); raises
    :class:`lifecycle.errors.SitesUnavailableError` naming each missing site and why.
    """
    identities = site_identities(grid, run.registry, run.run_ledger.run_id)
    run.run_ledger.identities = identities
    cfg = run.cfg
    roster = gather(grid, train_config, run.run_ledger, needed=cfg.required_sites, deadline=cfg.site_deadline,
                    query_timeout=cfg.round_timeout, enrolled=expected_sites(identities, run.registry),
                    check=policy_check(cfg, registry_withdrawn_sites(run.registry)), observer=run.observer)
    run.observer("stage", {"stage": "identified", **roster.summary(), "resumed_after": run.done})
    reference = ReferenceCollector.from_held_out(run.test, run.cfg)
    reference.collect(grid, run.run_ledger, train_config,
                      saved=run.run_state.directory / "reference.json" if run.run_state is not None else None)
    return reference


def train(run: RunContext, grid: Grid, train_config: ConfigRecord) -> None:
    """The remaining rounds; the model ends up holding the last aggregated weights."""
    done, cfg = run.done, run.cfg
    arrays = ArrayRecord(run.model.state_dict())
    if done < cfg.num_server_rounds:
        run.observer("stage", {"stage": "training", "rounds": cfg.num_server_rounds - done})
        result = run.stack.outer.start(
            grid=grid, initial_arrays=arrays, num_rounds=cfg.num_server_rounds - done,
            timeout=cfg.round_timeout, train_config=train_config,
            evaluate_fn=lambda r, a: _evaluated(run, train_config, r + done if r else 0, a),
        )
        arrays = result.arrays
    run.model.load_state_dict(arrays.to_torch_state_dict())
    if run.run_state is not None:
        for name, site in run.tracked.sites.items():
            site.dp = run.run_state.total_dp(name, site)


def _evaluated(run: RunContext, train_config: ConfigRecord, server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """A round's central evaluation, then the newest checkpoint for the next round's messages."""
    metrics = run.progress(server_round, arrays)
    if server_round > 0:
        witness_checkpoint(run.registry, train_config)
    return metrics


def publish(run: RunContext, reference: ReferenceCollector) -> dict[str, Any]:
    """Watermark, sign and register the model (at most once per run); the outcome so far."""
    cfg, registry, run_state = run.cfg, run.registry, run.run_state
    dropouts = run_state.dropouts if run_state is not None else [
        {"round": e["round"], "sites": e["dropped"]} for e in run.progress.history if e.get("dropped")]
    published = registry.version_of_run(run.run_ledger.run_id) if run_state is not None else None
    ledger_state = run.run_ledger.state()
    if published is not None:  # resumed after a crash between the registry commit and outcome.json
        logger.warning("run %s already published %s; writing its outcome without publishing again",
                       run.run_ledger.run_id, published.ref)
        run.observer("stage", {"stage": "publish", "already_published": published.ref})
        outcome = published_outcome(registry, published)
        accuracy, watermark = float(published.metrics["accuracy"]), published.watermark
    else:
        run.observer("stage", {"stage": "watermark", "scheme": cfg.watermark})
        model, mark = embed_watermark(run.model, run.spec, cfg, registry.home, run.test)
        final = evaluate(model, run.test)
        run.observer("stage", {"stage": "publish"})
        section = reference.section(model, run.schema, run.test)
        audited = privacy_audit_metrics(cfg, model, run.tracked.sites)  # canaries of a simulation, if any
        outcome = publish_run(
            registry=registry, model=model, spec=run.spec, schema=run.schema, cfg=cfg, sites=run.tracked.sites,
            rounds=run.tracked.rounds_aggregated, run_id=run.run_ledger.run_id, mark=mark, site_plan=run.plan,
            metrics={"accuracy": final.accuracy, "loss": final.loss, "test_examples": final.num_examples,
                     **gate_metrics(registry, cfg, model, run.test, run.schema, section), **audited},
            ledger=ledger_state, reference=section,
            extra_training={"dropouts": dropouts} if dropouts else None, held_out=run.test.features,
        )
        accuracy, watermark = final.accuracy, mark.to_dict()
        outcome.update(audited)  # as signed; the simulation fails loudly on ε̂ > ε
    outcome.update(_privacy_outcome(cfg, run.tracked, run.plan, ledger_state))
    outcome.update(site_devices={name: site.device for name, site in sorted(run.tracked.sites.items())})
    outcome.update(accuracy=accuracy, history=run.progress.history, watermark=watermark, run_id=run.run_ledger.run_id,
                   dropouts=dropouts, rejected_updates=[asdict(r) for r in run.stack.validated.rejections],
                   rejected_rounds=[asdict(e) for e in run.stack.guard.events])
    return outcome


def finish(run: RunContext, outcome: dict[str, Any]) -> dict[str, Any]:
    """Record the time and the Flower runs, write the outcome files (a deployed run is then finished)."""
    outcome.update(federation_seconds=time.monotonic() - run.started)
    if run.run_state is not None:
        outcome.update(flower_runs=run.run_state.segments, resumed_after=run.done)
    paths = [run.cfg.result_path] if run.cfg.result_path else []
    if run.run_state is not None:
        paths.append(str(run.run_state.directory / "outcome.json"))  # marks the run finished (no resume)
    for path in paths:
        Path(path).write_text(json.dumps(outcome, indent=2, default=str))
    run.observer("done", {"model": outcome["model"], "version": outcome["version"], "accuracy": outcome["accuracy"]})
    return outcome


def _both(first: Observer, second: Observer) -> Observer:
    def observe(event: str, payload: Mapping[str, Any]) -> None:
        first(event, payload)
        second(event, payload)

    return observe


def _checkpoint(run_state: RunState, tracked: TrackedStrategy, progress: RoundProgress, server_round: int,
                arrays: ArrayRecord, entry: dict[str, Any]) -> None:
    """After a round's evaluation: note its dropouts, then checkpoint (the round is now complete)."""
    if entry.get("dropped"):
        run_state.dropouts.append({"round": server_round, "sites": entry["dropped"]})
    run_state.save(server_round, arrays, tracked, progress.history)


def _privacy_outcome(
    cfg: CoordinatorConfig, strategy: TrackedStrategy, plan: SiteDPPlan | None, ledger: dict[str, Any]
) -> dict[str, Any]:
    """Both ε kinds per site, the ledger's state and the protection used, for the outcome."""
    sites = sorted(strategy.sites.values(), key=lambda s: s.name)
    return {
        "epsilon": {s.name: s.dp.get("epsilon") for s in sites},
        "dp_clipping": {s.name: s.dp.get("clipping") for s in sites},  # DP-SGD path: fused or opacus-ew
        "delta": cfg.dp_delta if cfg.dp_epsilon > 0 else None,
        "site_epsilon": {s.name: site_level_epsilon(plan, s.rounds) for s in sites},
        "site_delta": cfg.site_delta if plan is not None else None,
        "ledger": ledger,
        "secure_aggregation": cfg.secure_aggregation,
        "secure_rng": all(s.secure_rng for s in sites),
    }


def make_server_app(
    overrides: Mapping[str, Any] | None = None,
    observer: Observer = _log_observer,
    outcome: dict[str, Any] | None = None,
    engine_stopped: Callable[[], bool] | None = None,
) -> ServerApp:
    """A ServerApp whose run config is Flower's merged with ``overrides``.

    ``outcome``, when given, receives the run's outcome (the simulation reads
    it after the engine returns, since the ServerApp runs in its own thread).
    ``engine_stopped`` (a simulation) ends the run once its engine is gone
    (:class:`coordinator.grid.ResponsiveGrid`).
    """
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = CoordinatorConfig.from_mapping(dict(context.run_config), dict(overrides or {}))
        if cfg.run_id:  # 'fedguard run status|stop' tell a running ServerApp from a killed one by this pid
            record_serverapp(Registry.open().home.runs, cfg.run_id, int(context.run_id))
        try:
            result = run_federation(responsive(grid, engine_stopped), cfg, observer, flower_run=int(context.run_id))
        except Exception as exc:
            if cfg.run_id:
                _failed(cfg.run_id, exc, int(context.run_id))
            raise
        if outcome is not None:
            outcome.update(result)

    return server_app


def failure(exc: Exception, flower_run: int | None) -> dict[str, Any]:
    """The ``failed`` event: the error in words and the exit code the operator's command ends with.

    A fedguard error's message is written for the operator; any other
    exception is a bug, named by its type (its text stays in the log).
    """
    if isinstance(exc, FedguardError):
        message, code = str(exc), exc.exit_code
    else:
        message, code = f"the coordinator failed ({type(exc).__name__}); see the coordinator's log", 1
    return {"error": f"{type(exc).__name__}: {exc}", "message": message, "exit_code": code,
            "flower_run": flower_run}


def _failed(run_id: str, exc: Exception, flower_run: int) -> None:
    """Tell a follower (``fedguard run launch``) that the run failed, and why, naming the Flower run that did.

    Not when an operator stopped that Flower run (``fedguard run stop``): its
    grid calls fail because of the stop, and ``run stop`` records ``stopped``.
    """
    try:
        runs = Registry.open().home.runs
        if stop_requested(runs, run_id, flower_run):
            logger.info("run %s: Flower run %d was stopped by an operator (%s)", run_id, flower_run, exc)
            return
        ProgressLog(run_dir(runs, run_id) / PROGRESS)("failed", failure(exc, flower_run))
    except Exception:  # noqa: BLE001 - the original error matters more
        logger.exception("could not record the failure of run %s", run_id)


app = make_server_app()
