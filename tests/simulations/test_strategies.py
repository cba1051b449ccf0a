"""``fedguard simulate --strategy``: FedAdam under SecAgg+ and FedProx under DP-SGD train, charge, and are recorded.

Each is one small federation (3 sites, 2 rounds, breast-cancer) through the
real command: 50–115 s each on a shared 2-core machine, hence ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lifecycle.bom import read_bom, read_lineage
from tests.e2e.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def _simulate(home: Path, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    result = run_cli(home, "simulate", "--sites", "3", "--rounds", "2", "--watermark", "none", "--json", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return outcome, read_lineage(read_bom(Path(outcome["artifact"])))["training"]


def _charged(outcome: dict[str, Any]) -> None:
    for site, spent in outcome["epsilon"].items():
        assert 0 < spent <= 3.0 * 1.001  # the default record-level target
        record = outcome["ledger"][site]["record"]
        assert record["runs"] == 1 and record["epsilon"] == pytest.approx(spent, rel=1e-6)


def test_fedadam_under_secagg(tmp_path: Path) -> None:
    outcome, training = _simulate(tmp_path / "home", "--strategy", "fedadam")
    assert outcome["secure_aggregation"] == "secagg+" and outcome["accuracy"] > 0.8  # measured 0.93
    assert training["strategy"]["name"] == "fedadam"
    assert training["strategy"]["server_optimizer"]["kind"] == "FedAdam"
    assert training["strategy"]["server_optimizer"]["server_lr"] == 0.1  # Flower's default η
    _charged(outcome)


def test_fedprox_under_dp_sgd(tmp_path: Path) -> None:
    outcome, training = _simulate(tmp_path / "home", "--strategy", "fedprox", "--proximal-mu", "0.1")
    assert outcome["accuracy"] > 0.8  # measured 0.947
    assert training["strategy"] == {"name": "fedprox", "proximal_mu": 0.1, "server_optimizer": None}
    _charged(outcome)
