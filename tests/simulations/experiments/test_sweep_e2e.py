"""``fedguard experiment run`` for real: a 2×2 grid of tiny trials on Ray Tune, resumed, then reported.

Besides the 2×2 (``dp-epsilon`` 0 and 3 × seeds 1 and 2, 2 sites, 1 round,
breast-cancer), the grid holds one trial that fails at run time (50 sites
cannot each get 10 of the 455 training records) and one its validation
refuses (a robust rule under CKKS): the sweep records both and goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simulations.experiments.records import read_records

ROOT = Path(__file__).resolve().parents[3]
EXTRA = """
[[trials]]   # fails at run time: 455 training records cannot give 50 sites 10 each
sites = 50
seed = 1

[[trials]]   # refused by validation: a robust rule needs each site's update, which CKKS hides
aggregation = "median"
secure-agg = "ckks"
seed = 1
"""


def _fedguard(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDGUARD_HOME": str(home), "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("FEDGUARD_DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-c", "from fedguard.cli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_grid_runs_as_tune_trials_resumes_and_reports(tmp_path: Path, shared_ray: str) -> None:
    """On the test session's Ray head, as on a researcher's cluster: Tune and every trial's simulation attach."""
    grid = tmp_path / "grid.toml"
    grid.write_text((ROOT / "simulations" / "grids" / "smoke.toml").read_text() + EXTRA)
    out = tmp_path / "results"
    cluster = ("--ray-address", shared_ray) if shared_ray else ()
    started = time.monotonic()
    first = _fedguard(tmp_path / "home", "experiment", "run", str(grid), "--out", str(out), *cluster)
    seconds = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    records = read_records(out)
    assert Counter(r["status"] for r in records) == {"ok": 4, "failed": 1, "not-applicable": 1}, first.stderr
    ok = [r for r in records if r["status"] == "ok"]
    assert {(r["settings"]["dp-epsilon"], r["settings"]["seed"]) for r in ok} == {(0.0, 1), (0.0, 2), (3.0, 1),
                                                                                  (3.0, 2)}
    for record in ok:
        assert 0.0 < record["metrics"]["final_accuracy"] <= 1.0
        assert [e["round"] for e in record["history"]] == [1]
        spent = record["metrics"]["record_epsilon_spent"]
        assert spent is None if record["settings"]["dp-epsilon"] == 0 else 0 < spent <= 3.0 + 1e-6
    failed = next(r for r in records if r["status"] == "failed")
    assert failed["settings"]["sites"] == 50 and "50 sites" in failed["error"]
    refused = next(r for r in records if r["status"] == "not-applicable")
    assert "secure" in refused["error"] and refused["settings"]["aggregation"] == "median"
    assert pq.read_table(out / "results.parquet").num_rows == 6
    print(f"sweep of 6 trials (4 trained): {seconds:.1f} s", file=sys.stderr)

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()}
    again = _fedguard(tmp_path / "home", "experiment", "run", str(grid), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "nothing to run" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trials").iterdir()} == stamps

    report = _fedguard(tmp_path / "home", "experiment", "report", str(out), "--html", str(tmp_path / "r.html"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 2  # accuracy per round, privacy–utility; no attack or audit data here
    assert "Not drawn: no trial ran an attack" in page
    assert f"fedguard experiment run {grid} --out {out.resolve()}" in page
    assert {p.name for p in (tmp_path / "figures").iterdir()} >= {"privacy-utility.svg", "privacy-utility.png"}
    assert set(json.loads((out / "sweep.json").read_text())["trials"]) == {r["id"] for r in records}
