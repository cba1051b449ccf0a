"""A round in which every site fails ends the run with an error, never a success."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.errors import TrainingError
from lifecycle.home import Home
from lifecycle.registry import Registry
from simulations.federation import SimulationConfig, _engine_environment, _simulate, prepare_data

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_every_site_failing_raises(fedguard_home: Path, tmp_path: Path) -> None:
    cfg = SimulationConfig(sites=2, rounds=1, watermark="none", secure_agg="none")
    prepared = prepare_data(cfg, tmp_path / "data")
    for site in range(cfg.sites):
        path = prepared.data_dir / f"site-{site}.csv"
        path.write_text(path.read_text().replace(",1\n", ",not-a-label\n"))
    _engine_environment(Home(fedguard_home).ensure())
    outcome: dict[str, object] = {}
    events: list[str] = []
    with pytest.raises(TrainingError, match="round 1 aggregated nothing"):
        _simulate(cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"),
                  lambda event, payload: events.append(event), outcome, cfg, False)
    assert "model" not in outcome
    assert Registry.open().latest_versions() == []
