"""What a sweep runs: which trials are pending (resume), how many at once, and a bad grid's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifecycle.errors import ConfigurationError
from simulations.experiments.grid import Trial, load_grid, trial_id
from simulations.experiments.records import make_record, write_record
from simulations.experiments.runner import concurrency, pending, shared_concurrency

ROOT = Path(__file__).resolve().parents[3]


def _trial(**settings: object) -> Trial:
    hyphenated = {k.replace("_", "-"): v for k, v in settings.items()}
    return Trial(trial_id(hyphenated), hyphenated)


def test_concurrency_is_cluster_cpus_over_the_largest_trial() -> None:
    assert concurrency([_trial(sites=2)], 2.0) == 1  # a 2-core machine runs one at a time
    assert concurrency([_trial(sites=3, seed=s) for s in range(10)], 16.0) == 5
    assert concurrency([_trial(sites=3), _trial(sites=8)], 16.0) == 2  # the largest counts
    assert concurrency([_trial(sites=2, cpus_per_site=0.5, seed=s) for s in range(4)], 2.0) == 2
    assert concurrency([_trial(sites=50)], 2.0) == 1  # never 0, even if a trial asks for more than the cluster
    assert concurrency([_trial(sites=2, seed=s) for s in range(3)], 64.0) == 3  # no more than there are trials
    assert concurrency([_trial(sites=2)], 2.0, requested=4) == 4


def test_trials_sharing_a_cluster_run_one_at_a_time() -> None:
    """Each simulation's Flower actor pool claims the whole cluster: two at once would wait on each other."""
    assert shared_concurrency(0) == shared_concurrency(1) == 1
    with pytest.raises(ConfigurationError, match="--concurrent 3 with --ray-address"):
        shared_concurrency(3)


def test_trials_with_a_record_are_not_run_again(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text("seeds = [1, 2, 3]\n[fixed]\nsites = 2\n")
    grid = load_grid(grid_file)
    out = tmp_path / "results"
    assert pending(grid, out) == list(grid.trials)
    first, second, third = grid.trials
    write_record(out, make_record(first.id, first.settings, "ok"))
    write_record(out, make_record(second.id, second.settings, "failed", error="boom"))
    assert pending(grid, out) == [third]
    assert pending(grid, out, retry_failed=True) == [second, third]


def test_a_bad_grid_exits_2_naming_the_key(tmp_path: Path) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text("[grid]\ndp-epsilom = [1.0]\n")
    env = {**os.environ, "FEDGUARD_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", "from fedguard.cli import main; main()", "experiment", "run",
                             str(grid), "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert "unknown setting 'dp-epsilom'" in result.stderr and "dp-epsilon" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_wrapped_error_is_described_with_its_root_cause() -> None:
    from simulations.experiments.trial import describe

    try:
        try:
            raise Exception("The current node timed out during startup.")
        except Exception as inner:
            raise RuntimeError("Simulation Runtime crashed.\nAn error was encountered.") from inner
    except RuntimeError as outer:
        assert describe(outer) == ("RuntimeError: An error was encountered. (caused by Exception: "
                                   "The current node timed out during startup.)")
    assert describe(ValueError("plain")) == "ValueError: plain"
