"""Run a grid's trials as Ray Tune trials: resumable, resource-aware, one failure never ending the sweep.

Each Tune trial is a function trainable that runs one fedguard simulation
in a child process (:mod:`simulations.experiments.execute`) and reports its
record once; the driver writes ``<out>/trials/<id>.json`` and rewrites
``<out>/results.parquet`` as each trial ends (:mod:`.progress`).

Resources. The trial's driver needs next to nothing (it waits on a
process), so it reserves :data:`TRIAL_DRIVER_CPUS`; the simulation's site
actors are what need CPUs. Reserving them for the trial would deadlock on a
cluster the simulation attaches to (the trial holds the CPUs its own actors
wait for), so the CPUs are accounted for by *concurrency* instead: at most
``cluster CPUs ÷ (sites × cpus-per-site)`` trials at once (the largest
trial counts; at least 1), which is 1 on a 2-core machine; ``--concurrent N``
overrides it.

On a cluster the sweep attaches to (``--ray-address``) the trials'
simulations attach to that cluster too, and there Flower sizes each
simulation's pool of site actors to the *whole* cluster (one actor per
``cpus-per-site`` on every node): two simulations at once would each leave
actors waiting for CPUs the other holds, and a site given to a waiting
actor never answers. So trials on a shared cluster run one at a time
(``--concurrent`` above 1 is refused), and the trial's worker reserves a
little memory instead of CPU (:data:`SHARED_TRIAL_DRIVER`), leaving every
CPU to the simulation's actors. Without ``--ray-address`` each trial starts
a local Ray of its own, and the CPU accounting above applies.

Resume. A trial with a record is done, whatever its status, and is not run
again (``retry_failed`` reruns failed ones), so the same command after an
interruption runs only what is missing. Tune's own experiment state (which
it pickles) lives in a temporary folder and is removed: the records are the
only state, and the results folder holds no pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from lifecycle.errors import ConfigurationError
from simulations import logger
from simulations.experiments.grid import Grid, Trial, setting_types
from simulations.experiments.records import read_records, record_path, write_table

TRIAL_DRIVER_CPUS = 0.05
"""What a trial's own Tune worker reserves: it only waits on the simulation's process."""
SHARED_TRIAL_DRIVER: dict[str, int | float] = {"memory": 64 * 2**20}
"""What it reserves on a cluster its simulation shares: memory only, every CPU stays with the site actors."""


@dataclass(frozen=True)
class SweepOptions:
    """How to run a grid: where results go, which cluster, how many trials at once."""

    out: Path
    ray_address: str = ""
    concurrent: int = 0
    """Trials at once; 0 computes it from the cluster's CPUs (module docstring)."""
    retry_failed: bool = False
    trial_timeout: float = 0.0
    """Seconds a trial may run before it is killed and recorded as failed (0: no limit)."""


@dataclass(frozen=True)
class SweepSummary:
    """How a sweep ended: trials per status, and how many ran in this invocation."""

    total: int
    ran: int
    """Trials recorded by this invocation."""
    statuses: Mapping[str, int]
    concurrency: int

    @property
    def missing(self) -> int:
        """Trials still without a record (the sweep was interrupted)."""
        return self.total - sum(self.statuses.values())


def pending(grid: Grid, out: Path, *, retry_failed: bool = False) -> list[Trial]:
    """The grid's trials that have no record yet (or a failed one, with ``retry_failed``)."""
    todo = []
    for trial in grid.trials:
        path = record_path(out, trial.id)
        if path.exists() and not (retry_failed and json.loads(path.read_text(encoding="utf-8"))["status"] == "failed"):
            continue
        todo.append(trial)
    return todo


def trial_cpus(trial: Trial) -> float:
    """The CPUs a trial's simulation asks of Ray: one share per site (``sites × cpus-per-site``)."""
    from simulations.federation import SimulationConfig

    sites = trial.settings.get("sites", SimulationConfig.sites)
    share = trial.settings.get("cpus-per-site", SimulationConfig.cpus_per_site)
    return float(sites) * float(share)


def concurrency(trials: Sequence[Trial], cluster_cpus: float, requested: int = 0) -> int:
    """How many trials run at once: ``requested``, or the cluster's CPUs over the largest trial's (≥ 1)."""
    if requested > 0:
        return requested
    need = max((min(trial_cpus(t), cluster_cpus) for t in trials), default=1.0)
    return max(1, min(len(trials), math.floor(cluster_cpus / max(need, 1e-9))))


def shared_concurrency(requested: int) -> int:
    """Trials at once on a cluster the simulations share: one (module docstring); more is refused.

    Raises
    ------
    ConfigurationError
        ``requested`` is above 1.
    """
    if requested > 1:
        raise ConfigurationError(
            f"--concurrent {requested} with --ray-address: each simulation sizes its site actors to the whole "
            "cluster, so simulations sharing it would wait on each other; leave --concurrent out (one trial at a "
            "time, its sites spread over the cluster)")
    return 1


def rerun_command(grid_path: Path, out: Path) -> str:
    """The command that runs (or resumes) this sweep."""
    return f"fedguard experiment run {shlex.quote(str(grid_path))} --out {shlex.quote(str(out))}"


def run_sweep(grid: Grid, options: SweepOptions, console: Console) -> SweepSummary:
    """Run every pending trial of ``grid`` under Ray Tune and return how the sweep stands."""
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _describe(grid, out)
    todo = pending(grid, out, retry_failed=options.retry_failed)
    if options.retry_failed:
        for trial in todo:
            record_path(out, trial.id).unlink(missing_ok=True)
    done = Counter(r["status"] for r in read_records(out) if r["id"] in {t.id for t in grid.trials})
    if not todo:
        write_table(out, read_records(out))
        console.print(f"all {len(grid.trials)} trials already have results in {out}; nothing to run")
        return SweepSummary(len(grid.trials), 0, dict(done), 0)
    with _ray(options.ray_address, out) as cluster_cpus:
        n = shared_concurrency(options.concurrent) if options.ray_address else concurrency(
            todo, cluster_cpus, options.concurrent)
        console.print(f"{len(todo)} of {len(grid.trials)} trials to run, {n} at a time "
                      f"({cluster_cpus:g} CPUs in the Ray cluster)")
        _tune(grid, todo, out, options, n, done, console)
    final = Counter(r["status"] for r in read_records(out) if r["id"] in {t.id for t in grid.trials})
    return SweepSummary(len(grid.trials), sum(final.values()) - sum(done.values()), dict(final), n)


def _describe(grid: Grid, out: Path) -> None:
    """Keep the grid file and the command beside the results, so that the report can say how to rerun."""
    copy = out / "grid.toml"
    if grid.path.resolve() != copy.resolve():
        shutil.copyfile(grid.path, copy)
    sweep = {"name": grid.name, "grid": str(grid.path), "command": rerun_command(grid.path, out),
             "trials": [t.id for t in grid.trials], "varied": list(grid.varied), "updated": time.time()}
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n", encoding="utf-8")


@contextmanager
def _ray(address: str, out: Path) -> Iterator[float]:
    """Attach to the cluster at ``address``, or start a local Ray for Tune; yield the cluster's CPUs."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables stay quiet: the progress bar speaks
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import ray

    from simulations.ray_processes import prepare_ray_tmpdir, ray_tmpdir, stop_orphaned_ray

    started, tmpdir = not ray.is_initialized(), os.environ.get("RAY_TMPDIR")
    if started and address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    elif started:  # Ray's sockets need a short path: a temp dir per results folder, leftovers of a kill stopped
        os.environ["RAY_TMPDIR"] = str(prepare_ray_tmpdir(ray_tmpdir(out)))
        stop_orphaned_ray(Path(os.environ["RAY_TMPDIR"]))
        _start_local_ray()
    try:
        yield float(ray.cluster_resources().get("CPU", 1.0))  # type: ignore[no-untyped-call]
    finally:
        if started:
            ray.shutdown()
        if tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = tmpdir


def _start_local_ray(attempts: int = 3) -> None:
    """Start a local Ray for Tune, again if its node times out starting (Ray waits a fixed 30 s).

    On a loaded machine the raylet can take longer than Ray's hard-coded
    wait to register; Ray then raises a bare ``Exception`` and has stopped
    what it started, so starting again is safe.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR)
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this one case
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            logger.warning("Ray's node timed out starting (attempt %d of %d); starting it again", attempt, attempts)


def _tune(grid: Grid, todo: Sequence[Trial], out: Path, options: SweepOptions, n: int, done: Counter[str],
          console: Console) -> None:
    from ray import tune

    from simulations.experiments.execute import driver_environment
    from simulations.experiments.progress import SweepProgress, TuneCallback

    extra = {"ray-address": options.ray_address} if options.ray_address and "ray-address" in setting_types() else {}
    specs = [{"id": t.id, "settings": dict(t.settings), "extra": extra, "work": str(out / "work" / t.id),
              "env": driver_environment(), "ray_address": options.ray_address if extra else "",
              "timeout": options.trial_timeout} for t in todo]
    progress = SweepProgress(out, len(grid.trials), done, console, {t.id: t.settings for t in todo})
    with tempfile.TemporaryDirectory(prefix="fedguard-tune-") as storage, progress.progress:
        tuner = tune.Tuner(
            tune.with_resources(tune_trial, tune.PlacementGroupFactory([SHARED_TRIAL_DRIVER]) if options.ray_address
                                else {"cpu": TRIAL_DRIVER_CPUS}),
            param_space={"trial": tune.grid_search(specs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=n, trial_name_creator=_name,
                                        trial_dirname_creator=_name),
            run_config=tune.RunConfig(storage_path=storage, name=grid.name, callbacks=[TuneCallback(progress)],
                                      verbose=0, failure_config=tune.FailureConfig(max_failures=0)),
        )
        tuner.fit()


def _name(trial: Any) -> str:
    return f"trial-{trial.config['trial']['id']}"


def tune_trial(config: Mapping[str, Any]) -> None:
    """The function trainable: run one trial's simulation and report its record (JSON) as the one result."""
    from ray import tune

    from simulations.experiments.execute import execute

    tune.report({"record": json.dumps(execute(config["trial"]), default=str)})
