"""Any model in, through fedguard simulate: the built-in CNN on digits images, and a scaffolded project's module."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedguard.new import scaffold
from lifecycle.bom import read_bom, read_lineage
from lifecycle.errors import StateError
from tests.e2e.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def _outcome(stdout: str) -> dict[str, Any]:
    value = json.loads(stdout.strip().splitlines()[-1])
    assert isinstance(value, dict)
    return value


def test_the_cnn_trains_on_digits_images_with_dp_sgd_and_carries_the_image_watermark(cli_home: Path) -> None:
    result = run_cli(cli_home, "simulate", "--dataset", "digits", "--model", "cnn", "--sites", "3", "--rounds", "1",
                     "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = _outcome(result.stdout)
    assert set(outcome["dp_clipping"].values()) == {"opacus-ew"}
    assert all(0 < eps <= 3.0 * 1.001 for eps in outcome["epsilon"].values())
    assert outcome["watermark"]["verified"] is True
    lineage = read_lineage(read_bom(Path(str(outcome["artifact"]))))
    assert lineage["architecture"]["kind"] == "cnn" and lineage["architecture"]["image_shape"] == [1, 8, 8]
    parity = lineage["serving_format"]["parity"]
    assert parity["set"] == "held-out" and parity["max_abs_diff"] <= parity["tolerance"]


def test_fedguard_new_scaffolds_a_project_that_simulates_out_of_the_box(cli_home: Path, tmp_path: Path) -> None:
    made = run_cli(cli_home, "new", "my-app", "--dir", str(tmp_path / "my-app"))
    assert made.returncode == 0, made.stderr
    app = tmp_path / "my-app"
    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["components"] == {"serverapp": "coordinator.app:app",
                                                              "clientapp": "client.app:app"}
    assert pyproject["tool"]["flwr"]["app"]["config"]["model"] == "my_app.model:Net"
    assert tomllib.loads((app / "job.toml").read_text())["model"] == "my_app.model:Net"
    assert (app / "data" / "records.csv").is_file() and (app / "data" / "schema.toml").is_file()
    with pytest.raises(StateError, match="already exists"):
        scaffold(app, "my-app", data=False)

    result = run_cli(cli_home, "simulate", "--app", str(app), "--data", str(app / "data" / "records.csv"),
                     "--schema", str(app / "data" / "schema.toml"), "--sites", "3", "--rounds", "1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = _outcome(result.stdout)
    assert outcome["watermark"]["verified"] is True and outcome["signature"]["verified"] is True
    assert outcome["secure_aggregation"] == "secagg+"
    assert set(outcome["dp_clipping"].values()) == {"opacus-ew"}
    architecture = read_lineage(read_bom(Path(str(outcome["artifact"]))))["architecture"]
    assert architecture["module"] == "my_app.model:Net" and architecture["kwargs"] == {"hidden": 32}
    assert architecture["code_sha256"] == hashlib.sha256((app / "my_app" / "model.py").read_bytes()).hexdigest()
