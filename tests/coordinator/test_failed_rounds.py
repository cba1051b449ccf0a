"""Sites that cannot take part end the run with an error naming them, never a success."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.errors import SitesUnavailableError
from lifecycle.home import Home
from lifecycle.registry import Registry
from simulations.federation import SimulationConfig, _engine_environment, _simulate, prepare_data

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def test_every_site_failing_raises_before_round_1_naming_each_site(fedguard_home: Path, tmp_path: Path) -> None:
    cfg = SimulationConfig(sites=2, rounds=1, watermark="none", secure_agg="none")
    prepared = prepare_data(cfg, tmp_path / "data")
    for site in range(cfg.sites):
        path = prepared.data_dir / f"site-{site}.csv"
        path.write_text(path.read_text().replace(",1\n", ",not-a-label\n"))
    _engine_environment(Home(fedguard_home).ensure())
    outcome: dict[str, object] = {}
    events: list[str] = []
    with pytest.raises(SitesUnavailableError, match="needs 2 site.* but 0 could take part") as caught:
        _simulate(cfg.coordinator_overrides(prepared.data_dir, tmp_path / "out.json"),
                  lambda event, payload: events.append(event), outcome, cfg, False)
    for site in range(cfg.sites):  # by name, with the columns and kinds of problem: never a value
        assert f"site-{site}: the site's data does not match its schema: label (" in str(caught.value)
    assert "not-a-label" not in str(caught.value) and "round" not in events
    assert "model" not in outcome
    assert Registry.open().latest_versions() == []
