"""A researcher's own file through a whole simulation: one virtual site per hospital, the split reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import run_cli
from tests.simulations.pooled import write_pooled

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def test_simulate_on_a_csv_split_by_hospital(tmp_path: Path) -> None:
    data, schema = write_pooled(tmp_path / "in")
    result = run_cli(tmp_path / "home", "simulate", "--data", str(data), "--schema", str(schema),
                     "--partition", "by-column:hospital_id", "--rounds", "1", "--local-epochs", "1",
                     "--watermark", "none", "--json", timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["model"] == "pooled" and outcome["config"]["sites"] == 3
    assert outcome["config"]["partition"] == "by-column:hospital_id" and outcome["accuracy"] > 0.5
    assert len(outcome["epsilon"]) == 3 and outcome["partition"]["sites"] == 3
    run_dir = Path(outcome["run_dir"])
    report = json.loads((run_dir / "partition.json").read_text())
    assert [s["group"] for s in report["sites"]] == ["hospital_id=H1", "hospital_id=H2", "hospital_id=H3"]
    assert sum(s["size"] for s in report["sites"]) == outcome["partition"]["records"]
    assert (run_dir / "partition.svg").stat().st_size > 1000 and (run_dir / "partition.png").is_file()
    assert "partition by-column:hospital_id of pooled" in result.stderr and "hospital_id=H3" in result.stderr
